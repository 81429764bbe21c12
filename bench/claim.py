#!/usr/bin/env python3
"""Benchmark: claim throughput of GRID_XFER's pool against PiCaS 1.1.2, and token creation.

    .venv/bin/python bench/claim.py            # full run (several minutes)
    .venv/bin/python bench/claim.py --quick    # smoke run (about a minute)

It starts its own pouchdb-server (GRID_XFER.server.EmbeddedServer, LevelDB in a
temporary directory, a free port) and stops it by PID at the end. For every
worker count it fills a fresh database and lets that many worker *processes*
drain it, once with GRID_XFER (Pool.claim -> Lease.done) and once with picas's
own claim loop, run by the python of a separate picas virtualenv. It prints
figures; it asserts nothing about timing. See bench/README.md.

A benchmark, not a test: it exits non-zero only when it cannot run, or when a
GRID_XFER token was claimed twice or did not end done (those are bugs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PICAS_WORKER = Path(__file__).resolve().parent / "_picas_worker.py"
NIGHT = "bench"
WORKER_TIMEOUT = 3600.0

sys.path.insert(0, str(Path(__file__).resolve().parent))
import picas_venv  # noqa: E402  (bench/picas_venv.py, shared with the tests)

PICAS_VERSION = picas_venv.PICAS_VERSION

try:
    from GRID_XFER import token as tk
    from GRID_XFER import views
    from GRID_XFER.config import CouchDBConfig, ServerConfig
    from GRID_XFER.couch import Couch
    from GRID_XFER.errors import Conflict, DatabaseError
    from GRID_XFER.pool import Pool
    from GRID_XFER.server import EmbeddedServer
except ImportError as exc:  # pragma: no cover - environment problem
    sys.exit(
        f"claim.py: cannot import GRID_XFER ({exc}); run it with the project's "
        "virtualenv: .venv/bin/python bench/claim.py (scripts/setup creates it)"
    )


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Our worker process: `claim.py --ours-worker URL DB RESULT`
# ---------------------------------------------------------------------------
def _ours_worker(target_path: str, db: str, result_path: str) -> None:
    requests: Counter[str] = Counter()
    original = Couch.request

    def counting(self: Couch, method: str, path: str, **kwargs: Any) -> Any:
        kind = "view" if "/_view/" in path else "bulk" if "_bulk_docs" in path else method
        requests[kind] += 1
        try:
            return original(self, method, path, **kwargs)
        except Conflict:
            requests[kind + "_409"] += 1
            raise

    Couch.request = counting  # type: ignore[method-assign]
    couch = Couch(Target.load(target_path).config(db))
    couch.db_exists()  # log in / open the session before the clock starts
    couch.cluster()
    pool = Pool(couch)
    requests.clear()
    print("ready", flush=True)
    sys.stdin.readline()
    t_start = time.monotonic()
    claimed: list[str] = []
    while True:
        lease = pool.claim(NIGHT)
        if lease is None:
            break
        claimed.append(lease.id)
        lease.done()
    t_end = time.monotonic()
    with open(result_path, "w") as f:
        json.dump(
            {
                "claimed": claimed,
                "requests": dict(requests),
                "worker": pool.worker["id"],
                "protocol": dict(pool.stats),
                "t_start": t_start,
                "t_end": t_end,
            },
            f,
        )


# ---------------------------------------------------------------------------
# Servers: pouchdb-server, Apache CouchDB 3 (one node), a 3-node CouchDB 3 cluster
# ---------------------------------------------------------------------------
class Target:
    """Where a benchmark runs: coordinator URLs and, on CouchDB 3, an admin login.

    Handed to worker processes as a file (the password in a 0600 file beside it),
    never on a command line."""

    def __init__(
        self, name: str, urls: list[str], user: str | None = None, password_file: str | None = None
    ) -> None:
        self.name, self.urls, self.user, self.password_file = name, urls, user, password_file

    def config(self, db: str) -> CouchDBConfig:
        auth = {"user": self.user, "password_file": self.password_file} if self.user else {}
        return CouchDBConfig(url=self.urls, db=db, timeout=60, **auth)

    def save(self, path: Path) -> str:
        path.write_text(json.dumps(self.__dict__))
        return str(path)

    @classmethod
    def load(cls, path: str) -> Target:
        return cls(**json.loads(Path(path).read_text()))

    def password(self) -> str:
        return Path(self.password_file).read_text().strip() if self.password_file else ""


class Servers:
    """Starts the servers asked for, each stopped by its recorded PID at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.stops: list[Any] = []

    def start(self, kind: str) -> Target:
        if kind == "pouchdb":
            server = EmbeddedServer(
                ServerConfig(
                    host="127.0.0.1",
                    port=free_port(),
                    data_dir=self.tmp / "pouchdb",
                    start_timeout=60,
                )
            )
            state, _ = server.start()
            self.stops.append(server.stop)
            say(f"pouchdb-server pid {state.pid} on {server.url}")
            return Target(kind, [server.url])
        password = secrets.token_urlsafe(18)
        secret = self.tmp / f"{kind}.password"
        secret.write_text(password)
        secret.chmod(0o600)
        env = {
            **os.environ,
            "GRIDXFER_RUN": str(self.tmp / "run"),
            "COUCHDB_USER": "admin",
            "COUCHDB_PASSWORD": password,
        }
        name = f"bench{kind}{os.getpid()}"
        for _ in range(5):
            base = free_port_range(4)
            out = subprocess.run(
                [
                    str(REPO / "scripts" / "couchdb"),
                    "start" if kind == "couchdb" else "cluster",
                    name,
                    str(base),
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=300,
            )
            if out.returncode == 0:
                break
            if out.returncode == 3:
                sys.exit(f"claim.py: --server {kind}: {out.stderr.strip()}")
        else:
            sys.exit(f"claim.py: could not start {kind}: {out.stderr.strip()}")
        self.stops.append(
            lambda: subprocess.run(
                [str(REPO / "scripts" / "couchdb"), "stop", name],
                capture_output=True,
                env=env,
                timeout=300,
            )
        )
        urls = [f"http://127.0.0.1:{base + i}" for i in range(1 if kind == "couchdb" else 3)]
        say(f"{kind}: Apache CouchDB 3 on {', '.join(urls)}")
        return Target(kind, urls, "admin", str(secret))

    def stop_all(self) -> None:
        for stop in reversed(self.stops):
            stop()


# ---------------------------------------------------------------------------
# Plumbing
# ---------------------------------------------------------------------------
def free_port_range(count: int) -> int:
    """The first of ``count`` consecutive free ports."""
    import random

    for _ in range(100):
        base = random.randrange(20000, 40000)
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_picas_python(explicit: str | None) -> tuple[str, str]:
    """The python of a separate virtualenv with picas; created if none is found."""
    try:
        python, version = picas_venv.find_picas_python(
            explicit,
            defaults=["/tmp/boot/picasvenv/bin/python"],
            own=REPO / ".gridxfer" / "bench" / "picas-venv",
        )
    except picas_venv.PicasUnavailable as exc:
        sys.exit(f"claim.py: {exc}")
    if version != PICAS_VERSION:
        say(f"warning: {python} has picas {version}, not {PICAS_VERSION}")
    return python, version


def run_workers(
    cmds: list[list[str]], workdir: Path, tag: str, env: dict[str, str] | None = None
) -> tuple[float, list[dict]]:
    """Start the worker processes, wait until all are ready, release them together.

    Returns (wall seconds from the start signal to the last worker's end, results).
    Each command gets its result file path appended.
    """
    procs: list[subprocess.Popen[str]] = []
    paths: list[Path] = []
    errs: list[Path] = []
    try:
        for i, cmd in enumerate(cmds):
            result = workdir / f"{tag}-{i}.json"
            err = workdir / f"{tag}-{i}.stderr"
            paths.append(result)
            errs.append(err)
            with open(err, "w") as ef:
                procs.append(
                    subprocess.Popen(
                        cmd + [str(result)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=ef,
                        text=True,
                        cwd=REPO,
                        env=env,
                    )
                )
        for p, err in zip(procs, errs, strict=False):
            line = p.stdout.readline() if p.stdout else ""
            if line.strip() != "ready":
                raise RuntimeError(
                    f"{tag}: a worker did not start: {err.read_text(errors='replace')[-2000:]}"
                )
        t0 = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        deadline = t0 + WORKER_TIMEOUT
        for p, err in zip(procs, errs, strict=False):
            rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
            if rc != 0:
                raise RuntimeError(
                    f"{tag}: worker pid {p.pid} exited {rc}: "
                    f"{err.read_text(errors='replace')[-2000:]}"
                )
        results = [json.loads(path.read_text()) for path in paths]
    finally:
        for p in procs:  # only the processes we started, by their handle
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = max(r["t_end"] for r in results) - t0
    return wall, results


def double_claims(results: list[dict]) -> tuple[list[str], int]:
    """(ids claimed by more than one worker, total claims including repeats)."""
    holders: dict[str, set[int]] = {}
    total = 0
    for w, r in enumerate(results):
        for i in r["claimed"]:
            holders.setdefault(i, set()).add(w)
            total += 1
    return sorted(i for i, ws in holders.items() if len(ws) > 1), total


def sum_requests(results: list[dict]) -> Counter[str]:
    total: Counter[str] = Counter()
    for r in results:
        total.update(r["requests"])
    return total


def all_docs(couch: Couch) -> list[dict[str, Any]]:
    """Every token, each read from a quorum of copies (with its conflicts)."""
    ids = [r["id"] for r in couch.all_docs() if not r["id"].startswith("_design/")]
    return [d for d in couch.docs(ids, conflicts=True).values() if d]


def drop_db(couch: Couch) -> None:
    try:
        couch.request("DELETE", "")
    except Exception as exc:  # best effort: the whole data dir goes at the end
        say(f"could not delete database {couch.db}: {exc}")


# ---------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------
def bench_ours(
    target: Target, n: int, k: int, workdir: Path, *, validate: bool = True
) -> dict[str, Any]:
    db = f"ours_w{n}" + ("" if validate else "_unchecked")
    couch = Couch(target.config(db))
    couch.create_db()
    views.install(couch)
    if not validate:  # the same pool without the design document's write check
        for _ in range(20):
            ddoc = couch.get(f"_design/{views.DDOC}")
            ddoc.pop("validate_doc_update", None)
            try:
                couch.put(ddoc)
                break
            except DatabaseError:  # 412: a copy has not got the page's attachments yet
                time.sleep(0.3)
    report = Pool(couch).create(NIGHT, (tk.ExposureSpec(exposure=f"e{i:06d}") for i in range(k)))
    if len(report.created) != k:
        raise RuntimeError(f"ours: created {len(report.created)} of {k} tokens")
    couch.view(views.DDOC, "todo", limit=1)  # build the index outside the timing
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--ours-worker",
        target.save(workdir / f"target-{target.name}.json"),
        db,
    ]
    wall, results = run_workers([cmd] * n, workdir, f"ours-{target.name}-w{n}-{validate}")
    doubles, total = double_claims(results)
    time.sleep(1 if couch.replicated else 0)  # let the copies agree before counting
    docs = all_docs(couch)
    not_done = [d["_id"] for d in docs if d.get("state") != "done"]
    reclaimed = [
        d["_id"]
        for d in docs
        if sum(1 for h in d.get("history", []) if h.get("event") == "claimed") != 1
    ]
    conflicted = [d["_id"] for d in docs if d.get("_conflicts")]
    protocol: Counter[str] = Counter()
    for r in results:
        protocol.update(r.get("protocol", {}))
    drop_db(couch)
    return {
        "wall": wall,
        "rate": k / wall,
        "doubles": doubles,
        "claims": total,
        "docs": len(docs),
        "not_done": not_done,
        "reclaimed_in_db": reclaimed,
        "conflicted": conflicted,
        "protocol": dict(protocol),
        "requests": sum_requests(results),
        "per_worker": [len(r["claimed"]) for r in results],
    }


def bench_picas(target: Target, n: int, k: int, workdir: Path, picas_python: str) -> dict[str, Any]:
    db = f"picas_w{n}"
    env = {**os.environ, "PICAS_USER": target.user or "", "PICAS_PASSWORD": target.password()}
    out = subprocess.run(
        [picas_python, str(PICAS_WORKER), "setup", target.urls[0], db, str(k)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    if out.returncode != 0:
        raise RuntimeError(f"picas setup failed: {out.stderr[-2000:]}")
    saved = json.loads(out.stdout.strip().splitlines()[-1])["saved"]
    if saved != k:
        raise RuntimeError(f"picas: saved {saved} of {k} tasks")
    # PiCaS takes one URL: its workers are spread over the coordinators.
    cmds = [
        [picas_python, str(PICAS_WORKER), "work", target.urls[i % len(target.urls)], db]
        for i in range(n)
    ]
    wall, results = run_workers(cmds, workdir, f"picas-{target.name}-w{n}", env=env)
    doubles, total = double_claims(results)
    couch = Couch(target.config(db))
    time.sleep(1 if couch.replicated else 0)
    docs = all_docs(couch)
    not_done = [d["_id"] for d in docs if not d.get("done")]
    # create + lock + done = revision 3; more writes mean a token was locked again.
    rewritten = [d["_id"] for d in docs if int(d["_rev"].split("-")[0]) > 3]
    conflicted = [d["_id"] for d in docs if d.get("_conflicts")]
    drop_db(couch)
    return {
        "wall": wall,
        "rate": k / wall,
        "doubles": doubles,
        "claims": total,
        "docs": len(docs),
        "not_done": not_done,
        "rewritten_in_db": rewritten,
        "conflicted": conflicted,
        "gave_up": sum(r["gave_up"] for r in results),
        "done_conflicts": sum(r["done_conflicts"] for r in results),
        "requests": sum_requests(results),
        "per_worker": [len(r["claimed"]) for r in results],
    }


def bench_create(target: Target, count: int) -> dict[str, Any]:
    specs = [tk.ExposureSpec(exposure=f"e{i:06d}") for i in range(count)]
    bulk = Couch(target.config("create_bulk"))
    bulk.create_db()
    t = time.monotonic()
    report = Pool(bulk).create(NIGHT, specs)
    bulk_s = time.monotonic() - t
    if len(report.created) != count:
        raise RuntimeError(f"bulk create: {len(report.created)} of {count} created")
    one = Couch(target.config("create_put"))
    one.create_db()
    t = time.monotonic()
    now = time.time()
    for spec in specs:
        one.put(tk.new_token(NIGHT, spec, now=now))
    put_s = time.monotonic() - t
    counts = {c.db: len(c.all_docs()) for c in (bulk, one)}
    drop_db(bulk)
    drop_db(one)
    return {"count": count, "bulk_s": bulk_s, "put_s": put_s, "stored": counts}


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def per_token(req: Counter[str], tokens: int) -> str:
    total = sum(v for k, v in req.items() if not k.endswith("_409"))
    c409 = sum(v for k, v in req.items() if k.endswith("_409"))
    return f"{total / tokens:6.2f} req ({c409 / tokens:5.2f} x 409)"


def breakdown(req: Counter[str]) -> str:
    order = ["view", "GET", "PUT", "PUT_409", "bulk", "POST", "DELETE"]
    keys = [k for k in order if req.get(k)] + sorted(k for k in req if k not in order)
    return " ".join(f"{k}={req[k]}" for k in keys)


Row = tuple[int, dict, "dict | None", dict]  # workers, ours, ours without the write check, picas


def print_report(facts: str, k: int, runs: dict[str, list[Row]], create: dict | None) -> None:
    print()
    print(facts)
    print()
    print(
        f"Claim throughput: {k} no-op tokens per run, N worker processes, claim -> done "
        "until empty; 'runs twice' = tokens two workers both went ahead with"
    )
    head = (
        f"{'server':>8} | {'N':>2} | {'ours tok/s':>10} | {'ours runs twice':>15} | "
        f"{'no check tok/s':>14} | {'picas tok/s':>11} | {'picas runs twice':>16}"
    )
    print(head)
    print("-" * len(head))
    for server, rows in runs.items():
        for n, o, u, p in rows:
            unchecked = f"{u['rate']:>14.1f}" if u else f"{'-':>14}"
            print(
                f"{server:>8} | {n:>2} | {o['rate']:>10.1f} | {len(o['doubles']):>15} | "
                f"{unchecked} | {p['rate']:>11.1f} | {len(p['doubles']):>16}"
            )
    print()
    print(
        "Per claimed token (HTTP requests incl. the done-save; 409 = lost a race); "
        "'no check' = ours without validate_doc_update:"
    )
    for server, rows in runs.items():
        for n, o, u, p in rows:
            extra = f"   no check {per_token(u['requests'], k)}" if u else ""
            print(
                f"  {server} N={n}: ours {per_token(o['requests'], k)}{extra}   "
                f"picas {per_token(p['requests'], k)}"
            )
    print()
    print("Details:")
    for server, rows in runs.items():
        for n, o, u, p in rows:
            for tag, r in (("ours", o), ("ours, no check", u)):
                if r is None:
                    continue
                print(
                    f"  {server} N={n} {tag}: wall {r['wall']:.2f}s, {r['claims']} claims, "
                    f"per worker {r['per_worker']}, tokens not done {len(r['not_done'])}/"
                    f"{r['docs']}, conflicted left {len(r['conflicted'])}; "
                    f"{breakdown(r['requests'])}"
                    + (f"; claims {dict(sorted(r['protocol'].items()))}" if r["protocol"] else "")
                )
                if r["doubles"]:
                    print(f"  {server} N={n} OURS RAN TWICE: {r['doubles'][:20]}")
            print(
                f"  {server} N={n} picas: wall {p['wall']:.2f}s, {p['claims']} claims, per "
                f"worker {p['per_worker']}, tasks not done {len(p['not_done'])}/{p['docs']}, "
                f"rev > 3 (locked again) {len(p['rewritten_in_db'])}, conflicted left "
                f"{len(p['conflicted'])}, 'Unable to claim task' {p['gave_up']}, done-save 409 "
                f"{p['done_conflicts']}; {breakdown(p['requests'])}"
            )
            if p["doubles"]:
                print(f"  {server} N={n} picas double-claimed ids (first 10): {p['doubles'][:10]}")
    if create:
        c = create["count"]
        print()
        print(f"Token creation: {c} tokens on a fresh database ({create['server']})")
        print(
            f"  bulk (Pool.create, _bulk_docs in batches) {create['bulk_s']:8.2f} s "
            f"{c / create['bulk_s']:9.1f} docs/s"
        )
        print(
            f"  one PUT per document (Couch.put)          {create['put_s']:8.2f} s "
            f"{c / create['put_s']:9.1f} docs/s"
        )
        print(f"  speed-up {create['put_s'] / create['bulk_s']:.1f}x  (stored: {create['stored']})")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Claim throughput (GRID_XFER vs PiCaS 1.1.2) "
        "and token creation, on pouchdb-server and Apache CouchDB 3."
    )
    ap.add_argument(
        "--server",
        default="pouchdb",
        help="comma-separated: pouchdb (embedded), couchdb (CouchDB 3, one node), "
        "cluster (CouchDB 3, three nodes); side by side in one run (default pouchdb)",
    )
    ap.add_argument("--tokens", type=int, help="tokens per claim run (default 5000)")
    ap.add_argument("--workers", help="comma-separated worker counts (default 1,2,4,8)")
    ap.add_argument(
        "--create-tokens",
        type=int,
        help="tokens for the creation benchmark (default 10000; 0 skips it)",
    )
    ap.add_argument(
        "--picas-python",
        help="python of a separate virtualenv holding picas "
        "(default: $PICAS_PYTHON, /tmp/boot/picasvenv/bin/python, or one created "
        "under .gridxfer/bench/picas-venv)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 300 tokens, workers 1,2, 1000 created tokens",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = ap.parse_args(argv)
    quick = {"tokens": 300, "workers": "1,2", "create_tokens": 1000}
    full = {"tokens": 5000, "workers": "1,2,4,8", "create_tokens": 10000}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.worker_counts = [int(x) for x in args.workers.split(",") if x.strip()]
    except ValueError:
        ap.error("--workers must be comma-separated integers, e.g. 1,2,4,8")
    if not args.worker_counts or min(args.worker_counts) < 1 or args.tokens < 1:
        ap.error("need at least one worker count >= 1 and --tokens >= 1")
    args.servers = [x.strip() for x in args.server.split(",") if x.strip()]
    if not args.servers or set(args.servers) - {"pouchdb", "couchdb", "cluster"}:
        ap.error("--server takes pouchdb, couchdb and/or cluster")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--ours-worker"]:
        _ours_worker(*argv[1:4])
        return 0
    args = parse_args(argv)
    picas_python, picas_version = find_picas_python(args.picas_python)
    tmp = Path(tempfile.mkdtemp(prefix="gridxfer-bench-"))
    servers = Servers(tmp)
    runs: dict[str, list[Row]] = {}
    create = None
    critical = False
    try:
        facts = (
            f"machine: nproc {os.cpu_count()}, python {platform.python_version()} "
            f"({platform.system()} {platform.release()}), picas {picas_version} "
            f"({picas_python})"
        )
        workdir = tmp / "results"
        workdir.mkdir()
        for kind in args.servers:
            target = servers.start(kind)
            info = Couch(target.config("unused")).server_info()
            facts += f"\n{kind}: {', '.join(target.urls)} ({info.get('version', '?')})"
            rows: list[Row] = runs.setdefault(kind, [])
            for n in args.worker_counts:
                say(f"{kind} N={n}: ours ({args.tokens} tokens) ...")
                o = bench_ours(target, n, args.tokens, workdir)
                u = (
                    bench_ours(target, n, args.tokens, workdir, validate=False)
                    if kind != "pouchdb"
                    else None
                )
                say(
                    f"{kind} N={n}: ours {o['rate']:.1f} tok/s, ran twice {len(o['doubles'])}; "
                    "picas ..."
                )
                p = bench_picas(target, n, args.tokens, workdir, picas_python)
                say(f"{kind} N={n}: picas {p['rate']:.1f} tok/s, ran twice {len(p['doubles'])}")
                rows.append((n, o, u, p))
                if any(r and (r["doubles"] or r["not_done"]) for r in (o, u)):
                    critical = True
            if args.create_tokens > 0 and create is None:
                say(f"token creation on {kind}: {args.create_tokens} bulk vs one PUT each ...")
                create = {**bench_create(target, args.create_tokens), "server": kind}
        say(facts)
        print_report(facts, args.tokens, runs, create)
    finally:
        servers.stop_all()
        say("servers stopped")
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if critical:
        print("\nCRITICAL: a GRID_XFER token ran twice or did not end done (see Details).")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
