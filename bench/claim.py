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
PICAS_VERSION = "1.1.2"
NIGHT = "bench"
WORKER_TIMEOUT = 3600.0

try:
    from GRID_XFER import token as tk
    from GRID_XFER import views
    from GRID_XFER.config import CouchDBConfig, ServerConfig
    from GRID_XFER.couch import Couch
    from GRID_XFER.errors import Conflict
    from GRID_XFER.pool import Pool
    from GRID_XFER.server import EmbeddedServer
except ImportError as exc:  # pragma: no cover - environment problem
    sys.exit(f"claim.py: cannot import GRID_XFER ({exc}); run it with the project's "
             "virtualenv: .venv/bin/python bench/claim.py (scripts/setup creates it)")


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Our worker process: `claim.py --ours-worker URL DB RESULT`
# ---------------------------------------------------------------------------
def _ours_worker(url: str, db: str, result_path: str) -> None:
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
    couch = Couch(CouchDBConfig(url=url, db=db))
    couch.db_exists()  # log in / open the session before the clock starts
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
        json.dump({"claimed": claimed, "requests": dict(requests), "worker": pool.worker["id"],
                   "t_start": t_start, "t_end": t_end}, f)


# ---------------------------------------------------------------------------
# Plumbing
# ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _python_facts(python: str) -> dict[str, str] | None:
    code = ("import sys, importlib.metadata as m, picas, couchdb; "
            "print(sys.prefix); print(m.version('picas'))")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    if out.returncode != 0:
        return None
    prefix, version = out.stdout.split()[:2]
    return {"prefix": prefix, "version": version}


def find_picas_python(explicit: str | None) -> tuple[str, str]:
    """The python of a separate virtualenv with picas; created if none is found."""
    candidates: list[tuple[str, str]] = []
    if explicit:
        candidates.append((explicit, "--picas-python"))
    else:
        env = os.environ.get("PICAS_PYTHON")
        if env:
            p = Path(env)
            candidates.append((str(p / "bin" / "python") if p.is_dir() else env, "$PICAS_PYTHON"))
        candidates.append(("/tmp/boot/picasvenv/bin/python", "default location"))
    own = REPO / ".gridxfer" / "bench" / "picas-venv"
    candidates.append((str(own / "bin" / "python"), "bench's own virtualenv"))
    ours = os.path.realpath(sys.prefix)
    for python, origin in candidates:
        facts = _python_facts(python)
        if facts is None:
            if origin == "--picas-python":
                sys.exit(f"claim.py: {python} cannot import picas")
            continue
        if os.path.realpath(facts["prefix"]) == ours:
            sys.exit(f"claim.py: {python} is our own virtualenv; picas must stay in a "
                     "separate one")
        if facts["version"] != PICAS_VERSION:
            say(f"warning: {python} has picas {facts['version']}, not {PICAS_VERSION}")
        return python, facts["version"]
    base = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3")
    if not base:
        sys.exit("claim.py: no python3 to create the picas virtualenv with")
    say(f"creating a picas virtualenv at {own} (python3 -m venv + pip install "
        f"picas=={PICAS_VERSION})")
    own.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([base, "-m", "venv", str(own)], check=True)
    subprocess.run([str(own / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    f"picas=={PICAS_VERSION}"], check=True)
    facts = _python_facts(str(own / "bin" / "python"))
    if facts is None:
        sys.exit(f"claim.py: picas did not install into {own}")
    return str(own / "bin" / "python"), facts["version"]


def run_workers(cmds: list[list[str]], workdir: Path, tag: str) -> tuple[float, list[dict]]:
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
                procs.append(subprocess.Popen(cmd + [str(result)], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=ef, text=True,
                                              cwd=REPO))
        for p, err in zip(procs, errs):
            line = p.stdout.readline() if p.stdout else ""
            if line.strip() != "ready":
                raise RuntimeError(f"{tag}: a worker did not start: "
                                   f"{err.read_text(errors='replace')[-2000:]}")
        t0 = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        deadline = t0 + WORKER_TIMEOUT
        for p, err in zip(procs, errs):
            rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
            if rc != 0:
                raise RuntimeError(f"{tag}: worker pid {p.pid} exited {rc}: "
                                   f"{err.read_text(errors='replace')[-2000:]}")
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
    return [r["doc"] for r in couch.all_docs(include_docs=True)
            if r.get("doc") and not r["id"].startswith("_design/")]


def drop_db(couch: Couch) -> None:
    try:
        couch.request("DELETE", "")
    except Exception as exc:  # best effort: the whole data dir goes at the end
        say(f"could not delete database {couch.db}: {exc}")


# ---------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------
def bench_ours(url: str, n: int, k: int, workdir: Path) -> dict[str, Any]:
    db = f"ours_w{n}"
    couch = Couch(CouchDBConfig(url=url, db=db))
    couch.create_db()
    views.install(couch)
    report = Pool(couch).create(NIGHT, (tk.ExposureSpec(exposure=f"e{i:06d}") for i in range(k)))
    if len(report.created) != k:
        raise RuntimeError(f"ours: created {len(report.created)} of {k} tokens")
    couch.view(views.DDOC, "todo", limit=1)  # build the index outside the timing
    cmd = [sys.executable, str(Path(__file__).resolve()), "--ours-worker", url, db]
    wall, results = run_workers([cmd] * n, workdir, f"ours-w{n}")
    doubles, total = double_claims(results)
    docs = all_docs(couch)
    not_done = [d["_id"] for d in docs if d.get("state") != "done"]
    reclaimed = [d["_id"] for d in docs
                 if sum(1 for h in d.get("history", []) if h.get("event") == "claimed") != 1]
    drop_db(couch)
    return {"wall": wall, "rate": k / wall, "doubles": doubles, "claims": total,
            "docs": len(docs), "not_done": not_done, "reclaimed_in_db": reclaimed,
            "requests": sum_requests(results), "per_worker": [len(r["claimed"]) for r in results]}


def bench_picas(url: str, n: int, k: int, workdir: Path, picas_python: str) -> dict[str, Any]:
    db = f"picas_w{n}"
    out = subprocess.run([picas_python, str(PICAS_WORKER), "setup", url, db, str(k)],
                         capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"picas setup failed: {out.stderr[-2000:]}")
    saved = json.loads(out.stdout.strip().splitlines()[-1])["saved"]
    if saved != k:
        raise RuntimeError(f"picas: saved {saved} of {k} tasks")
    cmd = [picas_python, str(PICAS_WORKER), "work", url, db]
    wall, results = run_workers([cmd] * n, workdir, f"picas-w{n}")
    doubles, total = double_claims(results)
    couch = Couch(CouchDBConfig(url=url, db=db))
    docs = all_docs(couch)
    not_done = [d["_id"] for d in docs if not d.get("done")]
    # create + lock + done = revision 3; more writes mean a token was locked again.
    rewritten = [d["_id"] for d in docs if int(d["_rev"].split("-")[0]) > 3]
    drop_db(couch)
    return {"wall": wall, "rate": k / wall, "doubles": doubles, "claims": total,
            "docs": len(docs), "not_done": not_done, "rewritten_in_db": rewritten,
            "gave_up": sum(r["gave_up"] for r in results),
            "done_conflicts": sum(r["done_conflicts"] for r in results),
            "requests": sum_requests(results), "per_worker": [len(r["claimed"]) for r in results]}


def bench_create(url: str, count: int) -> dict[str, Any]:
    specs = [tk.ExposureSpec(exposure=f"e{i:06d}") for i in range(count)]
    bulk = Couch(CouchDBConfig(url=url, db="create_bulk"))
    bulk.create_db()
    t = time.monotonic()
    report = Pool(bulk).create(NIGHT, specs)
    bulk_s = time.monotonic() - t
    if len(report.created) != count:
        raise RuntimeError(f"bulk create: {len(report.created)} of {count} created")
    one = Couch(CouchDBConfig(url=url, db="create_put"))
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


def print_report(facts: str, k: int, rows: list[tuple[int, dict, dict]],
                 create: dict | None) -> None:
    print()
    print(facts)
    print()
    print(f"Claim throughput: {k} no-op tokens per run, N worker processes, "
          "claim -> done until empty")
    head = (f"{'workers':>7} | {'ours tok/s':>10} | {'ours double claims':>18} | "
            f"{'picas tok/s':>11} | {'picas double claims':>19}")
    print(head)
    print("-" * len(head))
    for n, o, p in rows:
        print(f"{n:>7} | {o['rate']:>10.1f} | {len(o['doubles']):>18} | "
              f"{p['rate']:>11.1f} | {len(p['doubles']):>19}")
    print()
    print("Per claimed token (HTTP requests incl. the done-save; 409 = lost a race):")
    for n, o, p in rows:
        print(f"  N={n}: ours {per_token(o['requests'], k)}   picas {per_token(p['requests'], k)}")
    print()
    print("Details:")
    for n, o, p in rows:
        print(f"  N={n} ours : wall {o['wall']:.2f}s, {o['claims']} claims, per worker "
              f"{o['per_worker']}, tokens not done {len(o['not_done'])}/{o['docs']}, "
              f"tokens claimed != once (history) {len(o['reclaimed_in_db'])}; "
              f"{breakdown(o['requests'])}")
        print(f"  N={n} picas: wall {p['wall']:.2f}s, {p['claims']} claims, per worker "
              f"{p['per_worker']}, tasks not done {len(p['not_done'])}/{p['docs']}, "
              f"rev > 3 (locked again) {len(p['rewritten_in_db'])}, "
              f"'Unable to claim task' {p['gave_up']}, done-save 409 {p['done_conflicts']}; "
              f"{breakdown(p['requests'])}")
        if o["doubles"]:
            print(f"  N={n} OURS DOUBLE CLAIMS: {o['doubles'][:20]}")
        if p["doubles"]:
            print(f"  N={n} picas double-claimed ids (first 10): {p['doubles'][:10]}")
    if create:
        c = create["count"]
        print()
        print(f"Token creation: {c} tokens on a fresh database")
        print(f"  bulk (Pool.create, _bulk_docs in batches) {create['bulk_s']:8.2f} s "
              f"{c / create['bulk_s']:9.1f} docs/s")
        print(f"  one PUT per document (Couch.put)          {create['put_s']:8.2f} s "
              f"{c / create['put_s']:9.1f} docs/s")
        print(f"  speed-up {create['put_s'] / create['bulk_s']:.1f}x  (stored: {create['stored']})")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Claim throughput (GRID_XFER vs PiCaS 1.1.2) "
                                 "and token creation, on an embedded pouchdb-server.")
    ap.add_argument("--tokens", type=int, help="tokens per claim run (default 5000)")
    ap.add_argument("--workers", help="comma-separated worker counts (default 1,2,4,8)")
    ap.add_argument("--create-tokens", type=int,
                    help="tokens for the creation benchmark (default 10000; 0 skips it)")
    ap.add_argument("--picas-python", help="python of a separate virtualenv holding picas "
                    "(default: $PICAS_PYTHON, /tmp/boot/picasvenv/bin/python, or one created "
                    "under .gridxfer/bench/picas-venv)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 300 tokens, workers 1,2, 1000 created tokens")
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
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--ours-worker"]:
        _ours_worker(*argv[1:4])
        return 0
    args = parse_args(argv)
    picas_python, picas_version = find_picas_python(args.picas_python)
    tmp = Path(tempfile.mkdtemp(prefix="gridxfer-bench-"))
    port = free_port()
    server = EmbeddedServer(ServerConfig(host="127.0.0.1", port=port,
                                         data_dir=tmp / "couchdb", start_timeout=60))
    rows: list[tuple[int, dict, dict]] = []
    create = None
    critical = False
    try:
        state, _ = server.start()
        say(f"pouchdb-server pid {state.pid} on {server.url}, data in {tmp / 'couchdb'}")
        info = Couch(CouchDBConfig(url=server.url, db="unused")).server_info()
        facts = (f"machine: nproc {os.cpu_count()}, python {platform.python_version()} "
                 f"({platform.system()} {platform.release()}), pouchdb-server "
                 f"{info.get('version', '?')} (LevelDB on disk), picas {picas_version} "
                 f"({picas_python})")
        say(facts)
        workdir = tmp / "results"
        workdir.mkdir()
        for n in args.worker_counts:
            say(f"N={n}: ours ({args.tokens} tokens) ...")
            o = bench_ours(server.url, n, args.tokens, workdir)
            say(f"N={n}: ours {o['rate']:.1f} tok/s, double claims {len(o['doubles'])}; "
                "picas ...")
            p = bench_picas(server.url, n, args.tokens, workdir, picas_python)
            say(f"N={n}: picas {p['rate']:.1f} tok/s, double claims {len(p['doubles'])}")
            rows.append((n, o, p))
            if o["doubles"] or o["not_done"] or o["reclaimed_in_db"]:
                critical = True
        if args.create_tokens > 0:
            say(f"token creation: {args.create_tokens} bulk vs one PUT each ...")
            create = bench_create(server.url, args.create_tokens)
        print_report(facts, args.tokens, rows, create)
    finally:
        server.stop()
        say(f"pouchdb-server stopped")
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if critical:
        print("\nCRITICAL: a GRID_XFER token was claimed twice or did not end done "
              "(see Details).")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
