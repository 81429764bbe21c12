"""`bench/transfer.py --grid`: davs:// streamed and third-party, root:// third-party,
against curl and xrdcp on the same two servers, in one run.

Two XRootD servers on 127.0.0.1 speak root:// and davs:// (TLS with a CA made by
scripts/testca, HTTP third-party copy by libXrdHttpTPC). A night of E exposures x
F files is written into server A's export and into a local directory. Each method
moves all files once per worker count N (threads, or N processes at a time for
curl/xrdcp) into a fresh directory of server B, whose files are then checked by
SHA-256 against the source before the run counts:

  file->davs ours            TransferTask: one read streamed to B through the worker,
                             SHA-256 + ADLER32 of the bytes sent, B's ADLER32 compared
  file->davs curl            `curl -T` per file (no checksum)
  davs->davs ours tpc        TransferTask third-party: B pulls from A (WebDAV COPY),
                             ADLER32 at both ends, then B's copy read back for SHA-256
  davs->davs ours tpc-adler  the same, third_party_verify=checksum: no read-back
  davs->davs ours streamed   TransferTask with third_party=never: through the worker
  davs->davs curl COPY       `curl -X COPY` with `Source:` to B per file (B pulls; nothing checked)
  root->root ours tpc        TransferTask third-party over root:// (xrdcp --server pulls)
  root->root xrdcp --tpc     `xrdcp --tpc only --cksum adler32` per file

The tasks run in one process (no CouchDB): what the protocols cost, not the pool
(the main benchmark measures that). MB/s is 10^6 bytes per second of wall time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NIGHT = "20261201"


def say(msg: str) -> None:
    print(f"[grid {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Grid:
    def __init__(self, exposures: int, files: int, size: int, base: Path) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="gridxfer-bench-grid-", dir=base))
        self.tmp.chmod(0o755)
        self.exposures, self.files, self.size = exposures, files, size
        self.env = {**os.environ, "GRIDXFER_RUN": str(self.tmp / "run")}
        self.ports: dict[str, int] = {}
        self.names: list[str] = []  # relative paths of the night's files
        self.sha: dict[str, str] = {}
        self.seq = 0

    # -------------------------------------------------------------- servers and data
    def start(self) -> None:
        pki = self.tmp / "pki"
        certs = subprocess.run(
            [str(REPO / "scripts" / "testca"), str(pki)], check=True, capture_output=True, text=True
        ).stdout.strip()
        self.certs = certs
        os.environ["X509_CERT_DIR"] = certs
        env = {**self.env, "GRIDXFER_XROOTD_TLS": str(pki)}
        for name in ("a", "b"):
            for _ in range(3):
                port = _free_port()
                r = subprocess.run(
                    [str(REPO / "scripts" / "xrootd"), "start", f"grid-{name}", str(port),
                     str(self.tmp / name)],
                    env=env, capture_output=True, text=True,
                )  # fmt: skip
                if r.returncode == 0:
                    self.ports[name] = port
                    break
            else:
                raise RuntimeError(f"could not start XRootD {name}: {r.stderr.strip()}")

    def stop(self) -> None:
        for name in self.ports:
            subprocess.run(
                [str(REPO / "scripts" / "xrootd"), "stop", f"grid-{name}"],
                env=self.env, capture_output=True,
            )  # fmt: skip

    def write_night(self) -> None:
        block = os.urandom(1 << 20)
        for e in range(self.exposures):
            for f in range(self.files):
                rel = f"{NIGHT}/{e:08d}/data-{e:08d}-{f:02d}.fits"
                h = hashlib.sha256()
                for target in (self.tmp / "local" / rel, self.tmp / "a" / "src" / rel):
                    target.parent.mkdir(parents=True, exist_ok=True)
                with open(self.tmp / "local" / rel, "wb") as out:
                    left, salt = self.size, f"{e}-{f}".encode()
                    while left:
                        chunk = (salt + block)[: min(left, 1 << 20)]
                        out.write(chunk)
                        h.update(chunk)
                        left -= len(chunk)
                shutil.copyfile(self.tmp / "local" / rel, self.tmp / "a" / "src" / rel)
                self.names.append(rel)
                self.sha[rel] = h.hexdigest()
        subprocess.run(["chown", "-R", "xrootd:", str(self.tmp / "a" / "src")], check=False)

    # -------------------------------------------------------------- URLs
    def davs(self, side: str, path: str) -> str:
        return f"davs://127.0.0.1:{self.ports[side]}/{path}"

    def https(self, side: str, path: str) -> str:
        return f"https://127.0.0.1:{self.ports[side]}/{path}"

    def root(self, side: str, path: str) -> str:
        host = "localhost" if side == "b" else "127.0.0.1"
        return f"root://{host}:{self.ports[side]}//{path}"

    def fresh(self) -> str:
        self.seq += 1
        return f"run{self.seq:03d}"

    def check(self, dest: str) -> list[str]:
        bad = []
        for rel in self.names:
            p = self.tmp / "b" / dest / rel
            if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != self.sha[rel]:
                bad.append(rel)
        return bad


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ methods


def _ours(g: Grid, n: int, src: Callable[[str], str], dest: str, **task: Any) -> list[str]:
    from GRID_XFER.storage import Storage
    from GRID_XFER.storage.protocols import Settings
    from GRID_XFER.task import TaskContext
    from GRID_XFER.transfer import TransferTask

    settings = Settings(options={("HTTP PLUGIN", "RETRIEVE_BEARER_TOKEN"): False})
    errors: list[str] = []
    lock = threading.Lock()
    dest_url = _dest_factory(g, dest)

    def one(exposure: str) -> None:
        names = [r for r in g.names if r.split("/")[1] == exposure]
        token = {
            "source": src(f"{NIGHT}/{exposure}"),
            "destination": dest_url(f"{NIGHT}/{exposure}"),
            "files": [
                {"name": r.rsplit("/", 1)[1], "size": g.size, "checksums": {"sha256": g.sha[r]}}
                for r in names
            ],
        }
        t = TransferTask(Storage(settings=settings), **task)
        ctx = TaskContext(log=_quiet(), cancelled=threading.Event())
        try:
            t.run(token, ctx)
        except Exception as exc:  # a failure is reported, not raised
            with lock:
                errors.append(f"{exposure}: {exc}")

    exposures = sorted({r.split("/")[1] for r in g.names})
    with ThreadPoolExecutor(n) as ex:
        list(ex.map(one, exposures))
    return errors


def _dest_factory(g: Grid, spec: str) -> Callable[[str], str]:
    scheme, _, base = spec.partition(":")
    if scheme == "davs":
        return lambda p: g.davs("b", f"{base}/{p}")
    return lambda p: g.root("b", f"{base}/{p}")


def _quiet() -> Any:
    import logging

    log = logging.getLogger("bench.grid.task")
    log.propagate = False
    log.addHandler(logging.NullHandler())
    return log


def _commands(g: Grid, n: int, cmds: list[list[str]]) -> list[str]:
    errors: list[str] = []

    def one(cmd: list[str]) -> None:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            errors.append(f"{cmd[0]} exit {r.returncode}: {r.stderr.strip()[:200]}")

    with ThreadPoolExecutor(n) as ex:
        list(ex.map(one, cmds))
    return errors


def _mkdirs(g: Grid, dest: str) -> None:
    """curl cannot create parents over WebDAV: make the directories first (untimed)."""
    for rel in {r.rsplit("/", 1)[0] for r in g.names}:
        d = g.tmp / "b" / dest / rel
        d.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", "-R", "xrootd:", str(g.tmp / "b" / dest)], check=False)


def run_method(g: Grid, method: str, n: int) -> dict[str, Any]:
    dest = g.fresh()
    curl = ["curl", "-sS", "-f", "--capath", g.certs]
    if method in ("file->davs curl", "davs->davs curl COPY"):
        _mkdirs(g, dest)
    t0 = time.monotonic()
    if method == "file->davs ours":
        errors = _ours(g, n, lambda p: f"file://{g.tmp / 'local' / p}", f"davs:{dest}")
    elif method == "file->davs curl":
        errors = _commands(
            g, n,
            [[*curl, "-T", str(g.tmp / "local" / r), g.https("b", f"{dest}/{r}")] for r in g.names],
        )  # fmt: skip
    elif method == "davs->davs ours tpc":
        errors = _ours(g, n, lambda p: g.davs("a", f"src/{p}"), f"davs:{dest}")
    elif method == "davs->davs ours tpc-adler":
        errors = _ours(
            g, n, lambda p: g.davs("a", f"src/{p}"), f"davs:{dest}", third_party_verify="checksum"
        )
    elif method == "davs->davs ours streamed":
        errors = _ours(g, n, lambda p: g.davs("a", f"src/{p}"), f"davs:{dest}", third_party="never")
    elif method == "davs->davs curl COPY":
        errors = _commands(
            g, n,
            [[*curl, "-X", "COPY", "-H", f"Source: {g.https('a', f'src/{r}')}",
              "-H", "Credential: none", g.https("b", f"{dest}/{r}")] for r in g.names],
        )  # fmt: skip
    elif method == "root->root ours tpc":
        errors = _ours(g, n, lambda p: g.root("a", f"src/{p}"), f"root:{dest}")
    elif method == "root->root xrdcp --tpc":
        errors = _commands(
            g, n,
            [["xrdcp", "-s", "-f", "-p", "--tpc", "only", "--cksum", "adler32",
              g.root("a", f"src/{r}"), g.root("b", f"{dest}/{r}")] for r in g.names],
        )  # fmt: skip
    else:
        raise ValueError(method)
    seconds = time.monotonic() - t0
    problems = g.check(dest)
    total = len(g.names) * g.size
    return {"seconds": seconds, "mbps": total / 1e6 / seconds, "errors": errors, "bad": problems}


METHODS = [
    "file->davs ours",
    "file->davs curl",
    "davs->davs ours tpc",
    "davs->davs ours tpc-adler",
    "davs->davs ours streamed",
    "davs->davs curl COPY",
    "root->root ours tpc",
    "root->root xrdcp --tpc",
]


def main(exposures: int, files: int, size: int, workers: list[int], base: Path) -> int:
    g = Grid(exposures, files, size, base)
    ok = True
    try:
        g.start()
        say(f"writing {exposures} x {files} x {size / 1e6:.1f} MB on A and locally ...")
        g.write_night()
        say("warm-up (untimed)")
        run_method(g, "davs->davs ours tpc", 1)
        rows = []
        for n in workers:
            for m in METHODS:
                r = run_method(g, m, n)
                state = (
                    "ok"
                    if not (r["errors"] or r["bad"])
                    else f"FAILED {r['errors'][:2]} {r['bad'][:2]}"
                )
                say(f"N={n} {m:<28} {r['seconds']:7.2f} s {r['mbps']:7.1f} MB/s {state}")
                ok = ok and state == "ok"
                rows.append((n, m, r))
        total = len(g.names) * size
        print(
            f"\n## grid endpoints: {len(g.names)} files, {total / 1e6:.0f} MB, "
            "XRootD on 127.0.0.1 (TLS)"
        )
        print(f"{'N':>2}  {'method':<28} {'seconds':>8} {'MB/s':>8}  check")
        for n, m, r in rows:
            check = "sha256 ok" if not (r["errors"] or r["bad"]) else "FAILED"
            print(f"{n:>2}  {m:<28} {r['seconds']:8.2f} {r['mbps']:8.1f}  {check}")
    finally:
        g.stop()
        shutil.rmtree(g.tmp, ignore_errors=True)
    return 0 if ok else 1
