"""state-all against GRID_LRT's approach: 1,000 files on the tape testbed.

    .venv/bin/python bench/state_all.py                  # 1000 files, 3 rounds
    .venv/bin/python bench/state_all.py --files 200 --rounds 1

It starts its own tape endpoint (scripts/tape: XRootD + FRM + emulated MSS) on a
free port in a temporary directory, puts N files there (a third on tape only,
a third on disk and tape, a third on disk only), and times, in the same run and
alternately:

* GRID_LRT's way: one gfal2 context, one ``getxattr(url, 'user.status')`` per
  file, one after the other;
* ours: ``Staging.report``, exactly as ``gridxfer state-all`` runs it: parallel
  batches in threads (one gfal2 context each), and, when the first files show
  slow answers, several processes (each with its own XRootD connection: a
  server answers one connection's requests one after the other). Process
  start-up is inside the timing.

Both must report the same states. By default it does this twice: against the
local endpoint as it is (no network latency: both are bound by gfal2's CPU cost
per call, ~0.3 ms, on however many cores there are), and with 2 ms added to
every stat by the testbed's stat plugin (GRIDXFER_TAPE_STAT_LATENCY_US), like a
storage across a network, where the one-at-a-time loop waits for each answer.
It stops the endpoint by its recorded PID at the end. It is a benchmark, not a test:
it asserts nothing about timing.
Progress goes to stderr, the report (JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import gfal2  # noqa: E402

from GRID_XFER.config import StagingConfig  # noqa: E402
from GRID_XFER.staging import Staging, state_all  # noqa: E402
from GRID_XFER.storage import Storage  # noqa: E402

SCRIPT = REPO / "scripts" / "tape"


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def populate(disk: Path, mss: Path, files: int) -> list[str]:
    rel = []
    for root in (disk, mss):
        (root / "bench").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        name = f"bench/f{i:05d}.dat"
        data = os.urandom(256)
        where = (mss,) if i % 3 == 0 else (disk, mss) if i % 3 == 1 else (disk,)
        for root in where:
            (root / name).write_bytes(data)
        rel.append(name)
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "xrootd:xrootd", str(disk), str(mss)], check=True)
    return rel


def grid_lrt_loop(urls: list[str]) -> list[str]:
    """GRID_LRT's state_all: one file at a time through one context."""
    ctx = gfal2.creat_context()
    out = []
    for url in urls:
        try:
            out.append(str(ctx.getxattr(url, "user.status")).strip())
        except gfal2.GError:
            out.append("LOST")
    return out


def measure(files: int, rounds: int, threads: int, latency_ms: float) -> dict[str, object] | None:
    """One endpoint (with ``latency_ms`` added to each stat), both methods, ``rounds`` times."""
    base = Path(tempfile.mkdtemp(prefix="gx-bench-tape-"))
    base.chmod(0o755)
    name = f"bench{os.getpid()}"
    env = {
        **os.environ,
        "GRIDXFER_RUN": str(base / "run"),
        "GRIDXFER_XROOTD_LIFETIME": "30m",
        "GRIDXFER_TAPE_STAT_LATENCY_US": str(int(latency_ms * 1000)),
    }
    started = False
    try:
        port = free_port()
        run = subprocess.run(
            [str(SCRIPT), "start", name, str(port), str(base / "disk"), str(base / "mss")],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        if run.returncode != 0:
            say(f"could not start the tape endpoint: {run.stderr.strip()}")
            return None
        started = True
        rel = populate(base / "disk", base / "mss", files)
        urls = [f"root://127.0.0.1:{port}//{r}" for r in rel]
        say(f"{len(urls)} files on root://127.0.0.1:{port}//, {latency_ms:g} ms added per stat")
        storage = Storage()
        staging = Staging(storage, StagingConfig(threads=threads))
        state_all(storage, urls[:50], threads=threads)  # warm up connections
        grid_lrt_loop(urls[:20])
        ours, theirs = [], []
        for r in range(rounds):
            t0 = time.perf_counter()
            a = grid_lrt_loop(urls)
            theirs.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            b = [f.state for f in staging.report(urls).files]
            ours.append(time.perf_counter() - t0)
            if a != b:
                diff = next(i for i in range(len(a)) if a[i] != b[i])
                say(f"states differ at {urls[diff]}: {a[diff]} vs {b[diff]}")
                return None
            say(f"round {r + 1}: one at a time {theirs[-1]:.2f} s, state-all {ours[-1]:.2f} s")
        return {
            "latency_ms": latency_ms,
            "states": {s: b.count(s) for s in sorted(set(b))},
            "one_at_a_time_s": round(statistics.median(theirs), 3),
            "state_all_s": round(statistics.median(ours), 3),
            "speedup": round(statistics.median(theirs) / statistics.median(ours), 1),
        }
    finally:
        if started:
            subprocess.run([str(SCRIPT), "stop", name], env=env, capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument(
        "--latency-ms",
        default="0,2",
        help="Comma-separated per-stat latencies to emulate (0: the local endpoint "
        "as it is; 2: a nearby remote storage).",
    )
    args = ap.parse_args()
    results = []
    for latency in [float(x) for x in args.latency_ms.split(",")]:
        result = measure(args.files, args.rounds, args.threads, latency)
        if result is None:
            return 1
        results.append(result)
    print(
        json.dumps(
            {
                "files": args.files,
                "rounds": args.rounds,
                "threads": args.threads,
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg()[0],
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
