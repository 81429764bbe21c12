"""How long `gridxfer status` takes on a season of tokens (default 100,000).

    .venv/bin/python bench/status.py                       # 100,000 tokens in 100 nights
    .venv/bin/python bench/status.py --data /tmp/sb --keep # keep the LevelDB data: a rerun skips
                                                           # creation and view building

It starts its own pouchdb-server (LevelDB, free port) through EmbeddedServer and
stops it by PID at the end. Tokens are made with GRID_XFER.token (new_token and
the claim/finish/fail transitions, as workers would leave them) and saved with
_bulk_docs: older nights finished with a few errors of several codes, the last
nights in progress (todo, held by a few workers, done over the last 20 minutes).
It then builds the views the status reads (timed: the first query of a new view
indexes every token) and times the CLI as a user runs it, in a fresh process:
`gridxfer status`, `status --json` and `status NIGHT --json`. It is a benchmark,
not a test: it asserts nothing about timing. Progress goes to stderr, the
report (JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from GRID_XFER import token as tk  # noqa: E402
from GRID_XFER import views  # noqa: E402
from GRID_XFER.config import CouchDBConfig, ServerConfig  # noqa: E402
from GRID_XFER.couch import Couch, chunked  # noqa: E402
from GRID_XFER.server import EmbeddedServer  # noqa: E402

DB = "statusbench"
CODES = [
    (20, "source missing: {f}"),
    (21, "transfer failed: connection reset ({f})"),
    (30, "checksum mismatch: {f} adler32 expected 0a1b2c3d, got 99887766"),
    (32, "listed in manifest, not at source: {f}"),
]


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def make_docs(tokens: int, nights: int, now: float, rng: random.Random):  # noqa: ANN201
    per = max(1, tokens // nights)
    workers = [
        {
            "host": f"wn{i:02d}",
            "pid": 1000 + i,
            "job_id": f"{5000 + i}",
            "id": f"wn{i:02d}:{1000 + i}:bench",
        }
        for i in range(8)
    ]
    made = 0
    for n in range(nights):
        night = f"2026{(n // 28) + 1:02d}{(n % 28) + 1:02d}"
        recent = n >= nights - 3  # the last three nights are in progress
        count = per if n < nights - 1 else tokens - made
        for e in range(count):
            spec = tk.ExposureSpec(
                exposure=f"{e:08d}",
                files=[tk.FileEntry(name=f"raw-{e:08d}.fits.fz", size=rng.randint(5, 40) << 20)],
            )
            doc = tk.new_token(night, spec, now=now - 86400)
            roll = rng.random()
            w = rng.choice(workers)
            if not recent or roll < 0.5:
                t = now - rng.uniform(0, 1200) if recent else now - 86400 + rng.uniform(0, 3600)
                tk.claim(doc, w, t - 30, 300)
                if rng.random() < 0.03:
                    code, msg = rng.choice(CODES)
                    tk.fail(doc, code, msg.format(f=spec.files[0].name), t)
                else:
                    tk.finish(doc, t)
            elif roll < 0.52:
                tk.claim(doc, w, now - 60, 300)
            yield doc
            made += 1


def create(couch: Couch, tokens: int, nights: int) -> float:
    rng = random.Random(7)
    t0 = time.monotonic()
    now = time.time()
    done = 0
    for chunk in chunked(make_docs(tokens, nights, now, rng), 5000):
        results = couch.bulk_docs(chunk)
        bad = [r for r in results if r.get("error")]
        if bad:
            raise SystemExit(f"bulk_docs refused {len(bad)} docs: {bad[0]}")
        done += len(chunk)
        say(f"created {done}/{tokens}")
    return time.monotonic() - t0


def timed(cmd: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        times.append(time.monotonic() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr}")
    return {
        "min_s": round(min(times), 3),
        "median_s": round(statistics.median(times), 3),
        "max_s": round(max(times), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--nights", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--data", type=Path, help="LevelDB data directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    args = ap.parse_args()

    tmp = None
    if args.data is None:
        tmp = Path(tempfile.mkdtemp(prefix="gridxfer-status-bench-"))
        args.data = tmp / "data"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = EmbeddedServer(ServerConfig(port=port, data_dir=args.data))
    srv.start()
    report: dict[str, object] = {"tokens": args.tokens, "nights": args.nights}
    try:
        couch = Couch(CouchDBConfig(url=srv.url, db=DB, timeout=900, retries=2))
        couch.create_db()
        have = couch.request("GET", "").json().get("doc_count", 0)
        if have < args.tokens:
            report["create_s"] = round(create(couch, args.tokens, args.nights), 1)
        report["install"] = views.install(couch)
        builds = {}
        for name in ("by_state", "errors", "finished", "holders"):
            t0 = time.monotonic()
            couch.view(views.DDOC, name, limit=1, reduce=False)
            builds[name] = round(time.monotonic() - t0, 1)
            say(f"view {name} ready in {builds[name]} s")
        report["first_query_s"] = builds

        cfg = Path(args.data).parent / "bench.yaml"
        cfg.write_text(f"couchdb: {{url: '{srv.url}', db: {DB}, timeout: 300}}\n")
        env = {"GRIDXFER_CONFIG": str(cfg), "PATH": "/usr/bin:/bin", "COLUMNS": "160"}
        gx = [sys.executable, "-m", "GRID_XFER.cli", "-q"]
        night = json.loads(
            subprocess.run(
                gx + ["status", "--json"], capture_output=True, text=True, env=env, check=True
            ).stdout
        )["nights"][-1]
        report["night_checked"] = {
            "night": night["night"],
            "states": night["states"],
            "errors": night["errors"],
        }
        report["cli"] = {
            "status": timed(gx + ["status"], env, args.runs),
            "status --json": timed(gx + ["status", "--json"], env, args.runs),
            "status NIGHT --json": timed(gx + ["status", night["night"], "--json"], env, args.runs),
            "--version (python start-up)": timed(gx + ["--version"], env, args.runs),
        }
        from GRID_XFER import status

        times = []
        for _ in range(args.runs):
            t0 = time.monotonic()
            status.gather(couch)
            times.append(time.monotonic() - t0)
        report["gather_in_process_s"] = round(statistics.median(times), 3)
    finally:
        srv.stop()
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
