#!/usr/bin/env python3
"""Benchmark: SHA-256 manifest verification throughput and peak memory.

    .venv/bin/python bench/verify.py            # full run: 8 x 256 MiB + one 2 GiB file
    .venv/bin/python bench/verify.py --quick    # smoke run: 4 x 16 MiB + one 64 MiB file

It writes a set of files and one big file into a temporary directory, reads them
all once so the page cache is equally warm for everyone, and then hashes them
with three methods, each in its own process:

  hash_file   GRID_XFER.checksum.hash_file(path, "sha256")            (local read)
  gfal2       hash_chunks(Storage().open_read("file://...", 1 MiB))   (through gfal2)
  sha256sum   the coreutils command on the same files

Throughput is MB/s (10^6 bytes per second) of hashing only: the Python children
time their own hashing loop, after start-up and imports. Peak memory is the
child's VmHWM (RSS high-water mark) as the child itself reads it from
/proc/self/status, and for sha256sum the maximum RSS from GNU time. All three
must produce the same digests, or the run exits 1. It prints figures; it asserts
nothing about timing. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from typing import Any

from _sizes import human, parse_size  # noqa: E402

MIB = 1 << 20
METHODS = ("hash_file", "gfal2", "sha256sum")
READ_CHUNK = 1 << 20  # what GRID_XFER.transfer uses for gfal2 reads
GOAL_MB = 100  # the goal: flat memory, under 100 MB


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------
# Child process: `verify.py --child METHOD FILE...` prints one JSON line
# ---------------------------------------------------------------------------
def _child(method: str, files: list[str]) -> None:
    try:
        if method == "hash_file":
            from GRID_XFER.checksum import hash_file

            def one(path: str) -> str:
                return hash_file(path, "sha256")
        elif method == "gfal2":
            from GRID_XFER.checksum import hash_chunks
            from GRID_XFER.storage import Storage

            storage = Storage()

            def one(path: str) -> str:
                return hash_chunks(storage.open_read("file://" + path, READ_CHUNK), "sha256")
        else:
            raise SystemExit(f"unknown method {method}")
    except ImportError as exc:
        raise SystemExit(
            f"verify.py: cannot import GRID_XFER ({exc}); run it with the project's "
            "virtualenv: .venv/bin/python bench/verify.py"
        ) from None
    base_rss = _status_kb("VmRSS")
    base_hwm = _status_kb("VmHWM")
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    digests = [one(p) for p in files]
    seconds = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu": cpu,
                "digests": digests,
                "base_rss_kb": base_rss,
                "base_hwm_kb": base_hwm,
                "hwm_kb": _status_kb("VmHWM"),
            }
        ),
        flush=True,
    )


# ---------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------
def write_file(path: Path, size: int, seed: int) -> None:
    """Pseudo-random content: one random MiB, its first 16 bytes changed per MiB."""
    block = bytearray(os.urandom(min(size, MIB)))
    with open(path, "wb") as fh:
        left, i = size, 0
        while left:
            n = min(left, MIB)
            if n > 16:
                block[:16] = (seed * 1_000_003 + i).to_bytes(16, "little")
            fh.write(memoryview(block)[:n])
            left -= n
            i += 1


def warm(paths: list[Path]) -> float:
    """Read every file once (page cache warm-up); returns seconds."""
    buf = bytearray(4 * MIB)
    t = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    return time.perf_counter() - t


def resident(paths: list[Path]) -> str:
    """Share of the files in the page cache, from util-linux fincore (if present)."""
    fincore = shutil.which("fincore")
    if not fincore:
        return "unknown (no fincore)"
    try:
        out = subprocess.run(
            [fincore, "--bytes", "--noheadings", "--raw", "--output", "RES", *map(str, paths)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        res = sum(int(x) for x in out.stdout.split())
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return "unknown (fincore failed)"
    total = sum(p.stat().st_size for p in paths)
    return f"{100.0 * res / total:.1f}% of {human(total)}"


def run_python(method: str, files: list[Path]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", method, *map(str, files)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{method} child exited {out.returncode}: {out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "seconds": r["seconds"],
        "cpu": r["cpu"],
        "digests": r["digests"],
        "peak_kb": r["hwm_kb"],
        "base_kb": r["base_rss_kb"],
    }


def run_sha256sum(files: list[Path]) -> dict[str, Any]:
    gnu_time = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    with tempfile.NamedTemporaryFile("r", prefix="verify-time-", suffix=".txt") as tf:
        cmd = ["sha256sum", "--", *map(str, files)]
        if gnu_time:
            # GNU time forks sha256sum from its own tiny process and reports that
            # child's maximum RSS (not polluted by this Python parent).
            cmd = [gnu_time, "-f", "%M %U %S", "-o", tf.name, *cmd]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak, cpu = 0, None
        if not gnu_time:  # fall back to sampling the high-water mark while it runs
            status = Path(f"/proc/{proc.pid}/status")
            while proc.poll() is None:
                try:
                    for line in status.read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]))
                except OSError:
                    pass
                time.sleep(0.02)
        out, err = proc.communicate()
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"sha256sum exited {proc.returncode}: {err[-2000:]}")
        if gnu_time:  # the last line (GNU time may print a status line before it)
            kb, user, system = Path(tf.name).read_text().splitlines()[-1].split()
            peak, cpu = int(kb), float(user) + float(system)
    digests = [line.split()[0].lstrip("\\") for line in out.splitlines() if line.strip()]
    return {"seconds": seconds, "cpu": cpu, "digests": digests, "peak_kb": peak, "base_kb": None}


def measure(method: str, files: list[Path]) -> dict[str, Any]:
    return run_sha256sum(files) if method == "sha256sum" else run_python(method, files)


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / 1e6 / seconds if seconds > 0 else float("inf")


def sha256sum_version() -> str:
    try:
        out = subprocess.run(["sha256sum", "--version"], capture_output=True, text=True)
        return out.stdout.splitlines()[0]
    except (OSError, IndexError):
        return "?"


def print_report(
    facts: list[str],
    workloads: list[tuple[str, list[Path], int]],
    results: dict[tuple[str, str], list[dict[str, Any]]],
    repeat: int,
    mismatches: list[str],
) -> None:
    print()
    for line in facts:
        print(line)
    print()
    print(
        f"SHA-256 throughput, MB/s = 10^6 bytes/s of hashing (median and best of {repeat}; "
        "each run a fresh process, files in the page cache)"
    )
    head = (
        f"{'workload':<22} | {'method':<10} | {'median s':>8} | {'median MB/s':>11} | "
        f"{'best MB/s':>9} | {'vs sha256sum':>12} | {'MB per CPU-s':>12}"
    )
    print(head)
    print("-" * len(head))
    for label, _files, nbytes in workloads:
        ref = statistics.median(mbps(nbytes, r["seconds"]) for r in results[(label, "sha256sum")])
        for m in METHODS:
            runs = results[(label, m)]
            rates = [mbps(nbytes, r["seconds"]) for r in runs]
            med_s = statistics.median(r["seconds"] for r in runs)
            med = statistics.median(rates)
            cpus = [r["cpu"] for r in runs if r["cpu"]]
            per_cpu = f"{nbytes / 1e6 / statistics.median(cpus):>12.0f}" if cpus else f"{'-':>12}"
            print(
                f"{label:<22} | {m:<10} | {med_s:>8.2f} | {med:>11.0f} | {max(rates):>9.0f} | "
                f"{med / ref:>11.2f}x | {per_cpu}"
            )
    print()
    print(
        "Peak memory (RSS high-water mark, MB = 10^6 bytes; goal: flat, under "
        f"{GOAL_MB} MB while verifying the big file)"
    )
    big_label, big_files, _ = workloads[-1]
    set_label = workloads[0][0]
    head = (
        f"{'method':<10} | {'after start-up':>14} | {'peak, ' + set_label:>22} | "
        f"{'peak, ' + big_label:>22} | {'growth on big':>13} | {'goal':>4}"
    )
    print(head)
    print("-" * len(head))
    for m in METHODS:
        big = max(r["peak_kb"] for r in results[(big_label, m)])
        small = max(r["peak_kb"] for r in results[(set_label, m)])
        bases = [r["base_kb"] for r in results[(big_label, m)] if r["base_kb"] is not None]
        base = min(bases) if bases else None
        base_s = f"{base * 1024 / 1e6:.1f} MB" if base is not None else "-"
        growth = f"{(big - base) * 1024 / 1e6:+.1f} MB" if base is not None else "-"
        ok = "ok" if big * 1024 / 1e6 < GOAL_MB else "OVER"
        print(
            f"{m:<10} | {base_s:>14} | {small * 1024 / 1e6:>19.1f} MB | "
            f"{big * 1024 / 1e6:>19.1f} MB | {growth:>13} | {ok:>4}"
        )
    print()
    print(
        "Notes: 'MB per CPU-s' divides by the user+system CPU time of the hashing (the "
        "child's own getrusage around its loop; for sha256sum GNU time's %U+%S, start-up "
        "included): it shows the cost of the method even when other jobs take CPU away."
    )
    print(
        "'after start-up' is the child's RSS once Python, GRID_XFER (and gfal2) are "
        "loaded, before the first byte is hashed; 'growth on big' is peak minus that. "
        "sha256sum's peak comes from GNU time (%M). The machine is shared (other test runs "
        "use the same CPUs), so the MB/s figures are noisy; compare methods within one run."
    )
    if mismatches:
        print()
        print("DIGEST MISMATCH between methods:")
        for line in mismatches:
            print(f"  {line}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="SHA-256 verification throughput and peak memory: "
        "GRID_XFER hash_file, hash_chunks over gfal2, and sha256sum."
    )
    ap.add_argument(
        "--size", type=parse_size, help="total size of the file set (default 2G; binary units)"
    )
    ap.add_argument("--files", type=int, help="number of files in the set (default 8)")
    ap.add_argument(
        "--big", type=parse_size, help="size of the single big file (default 2G; 0 skips it)"
    )
    ap.add_argument("--repeat", type=int, help="runs per method and workload (default 3)")
    ap.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where to create the temporary data directory (default %(default)s); "
        "it is removed at the end",
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 4 x 16 MiB, a 64 MiB big file, 2 runs each"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = ap.parse_args(argv)
    quick = {"size": 64 * MIB, "files": 4, "big": 64 * MIB, "repeat": 2}
    full = {"size": 2048 * MIB, "files": 8, "big": 2048 * MIB, "repeat": 3}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.files < 1 or args.size < args.files or args.repeat < 1 or args.big < 0:
        ap.error("need --files >= 1, --size >= --files bytes, --repeat >= 1, --big >= 0")
    return args


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[2:])
        return 0
    args = parse_args(argv)
    if not shutil.which("sha256sum"):
        sys.exit("verify.py: sha256sum is not installed")
    try:  # fail early, before writing gigabytes, if the children could not import
        subprocess.run(
            [sys.executable, "-c", "import GRID_XFER.checksum, GRID_XFER.storage"],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        sys.exit(
            f"verify.py: this python cannot import GRID_XFER and gfal2: "
            f"{exc.stderr.decode(errors='replace')[-500:]}\nrun it with the project's "
            "virtualenv: .venv/bin/python bench/verify.py"
        )
    signal.signal(signal.SIGTERM, _terminate)  # clean up on TERM as on Ctrl-C
    args.dir.mkdir(parents=True, exist_ok=True)
    need = args.size + args.big
    free = shutil.disk_usage(args.dir).free
    if free < need + 256 * MIB:
        sys.exit(f"verify.py: {args.dir} has {human(free)} free, {human(need)} needed")
    tmp = Path(tempfile.mkdtemp(prefix="gridxfer-verify-", dir=args.dir))
    mismatches: list[str] = []
    try:
        per = args.size // args.files
        set_files = [tmp / f"set-{i:02d}.bin" for i in range(args.files)]
        sizes = [per] * (args.files - 1) + [args.size - per * (args.files - 1)]
        say(
            f"writing {args.files} files ({human(per)} each) and a {human(args.big)} file "
            f"in {tmp} ..."
        )
        t = time.perf_counter()
        for i, (p, n) in enumerate(zip(set_files, sizes, strict=False)):
            write_file(p, n, seed=i)
        workloads: list[tuple[str, list[Path], int]] = [
            (f"{args.files} x {human(per)}", set_files, sum(sizes))
        ]
        if args.big:
            big = tmp / "big.bin"
            write_file(big, args.big, seed=999)
            workloads.append((f"1 x {human(args.big)}", [big], args.big))
        all_files = sorted({p for _, fs, _ in workloads for p in fs})
        say(
            f"written in {time.perf_counter() - t:.1f} s; sync (so writeback does not overlap "
            "the measurements) ..."
        )
        os.sync()
        took = warm(all_files)
        total = sum(p.stat().st_size for p in all_files)
        say(f"warm-up read of {human(total)} in {took:.1f} s ({mbps(total, took):.0f} MB/s)")
        cache_before = resident(all_files)
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        order = list(METHODS)
        for r in range(args.repeat):
            for label, files, nbytes in workloads:
                for m in order:
                    res = measure(m, files)
                    results.setdefault((label, m), []).append(res)
                    say(
                        f"run {r + 1}/{args.repeat} {label}: {m:<9} {res['seconds']:6.2f} s "
                        f"{mbps(nbytes, res['seconds']):7.0f} MB/s, cpu "
                        f"{res['cpu'] or 0:.2f} s, peak "
                        f"{res['peak_kb'] * 1024 / 1e6:.1f} MB"
                    )
            order = order[1:] + order[:1]  # rotate, so no method always goes first
        for label, _files, _ in workloads:
            ref = results[(label, "sha256sum")][0]["digests"]
            for m in METHODS:
                for i, res in enumerate(results[(label, m)]):
                    if res["digests"] != ref:
                        mismatches.append(
                            f"{label}: {m} run {i + 1} {res['digests']} != sha256sum {ref}"
                        )
        cache_after = resident(all_files)
        facts = [
            f"machine: nproc {os.cpu_count()}, python {platform.python_version()} "
            f"({platform.system()} {platform.release()}), {sha256sum_version()}, "
            f"load average at the end {os.getloadavg()[0]:.2f} (shared machine: figures are noisy)",
            f"data: {tmp} on {args.dir}; {workloads[0][0]} = {human(workloads[0][2])}"
            + (f", plus 1 x {human(args.big)}" if args.big else "")
            + f"; page cache before the runs {cache_before}, after {cache_after}",
            f"reads: hash_file 4 MiB readinto one buffer; gfal2 open_read {human(READ_CHUNK)} "
            "chunks (as GRID_XFER.transfer)",
        ]
        print_report(facts, workloads, results, args.repeat, mismatches)
    finally:
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            say(f"removed {tmp}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
