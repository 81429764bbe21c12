#!/usr/bin/env python3
"""Benchmark: what one `gridxfer nightly` cycle costs to look at a night's source.

    .venv/bin/python bench/discover.py            # 1000 exposures x 8 files
    .venv/bin/python bench/discover.py --quick    # 200 exposures x 4 files
    .venv/bin/python bench/discover.py --source root://host//path   # a night already there

It writes a synthetic night (file://, unless --source names one whose night
directory exists) and times, side by side in one run:

  first look      Discovery.look() the first time: every exposure walked, every
                  manifest read (what a cycle costs when the service starts)
  later look      Discovery.look() once every exposure is a token and nothing
                  changed: one listing of the night (every later cycle)
  one late file   a later look after a file was added to one exposure
  scan_night      GRID_XFER.scan.scan_night, what `tokens create` does each time
  find            `find NIGHT -type f` (coreutils), one walk of the tree, file:// only

Each is the median of --repeat runs, in one process with a warm page cache. It
prints figures and asserts nothing about timing. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from GRID_XFER.nightly.discover import Discovery  # noqa: E402
from GRID_XFER.nightly.nights import night  # noqa: E402
from GRID_XFER.nightly_config import StreamConfig  # noqa: E402
from GRID_XFER.scan import scan_night  # noqa: E402
from GRID_XFER.storage import Storage  # noqa: E402
from tests.nightgen import write_exposure  # noqa: E402

NIGHT = dt.date(2026, 12, 1)


def timed(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_night(root: Path, exposures: int, files: int) -> None:
    old = time.time() - 3600
    for i in range(exposures):
        d = root / NIGHT.strftime("%Y%m%d") / f"e{i:05d}"
        write_exposure(d, {f"f{k}.fits": os.urandom(64) for k in range(files)})
        for p in [d, *d.iterdir()]:
            os.utime(p, (old, old))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--exposures", type=int)
    ap.add_argument("--files", type=int)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--source", help="a source URL whose 20261201/ night already exists")
    a = ap.parse_args()
    exposures = a.exposures or (200 if a.quick else 1000)
    files = a.files or (4 if a.quick else 8)
    tmp = Path(tempfile.mkdtemp(prefix="gridxfer-bench-discover-"))
    source = a.source
    if source is None:
        print(f"writing {exposures} exposures x {files} files under {tmp}", file=sys.stderr)
        make_night(tmp, exposures, files)
        source = tmp.as_uri()
    stream = StreamConfig(
        name="bench",
        source=source,
        destination="file:///nowhere",
        rollover_hour=0,
        ready={"quiet_seconds": 0},
    )
    n = night(stream, NIGHT)
    storage = Storage()

    def fresh_look() -> object:
        return Discovery(stream, storage, clock=time.time).look(n)

    disco = Discovery(stream, storage, clock=time.time)
    found = disco.look(n)
    count = len(found.ready)
    for r in found.ready:  # as make_tokens records what became tokens
        disco._seen[(n.name, r.spec.exposure)] = r.mtime
    rows = [
        ("first look", timed(fresh_look, a.repeat)),
        ("later look", timed(lambda: disco.look(n), a.repeat)),
    ]
    if a.source is None:
        late = tmp / n.directory / "e00000" / "late.fits"

        def one_late() -> object:
            late.write_bytes(b"late")
            os.utime(late, (time.time() - 3600,) * 2)
            out = disco.look(n)
            late.unlink()
            disco._seen.pop((n.name, "e00000"), None)
            return out

        rows.append(("one late file", timed(one_late, a.repeat)))
    rows.append(("scan_night", timed(lambda: scan_night(storage, source, n.directory), a.repeat)))
    if a.source is None:
        cmd = ["find", str(tmp / n.directory), "-type", "f"]
        rows.append(("find", timed(lambda: subprocess.run(cmd, capture_output=True), a.repeat)))
    print(f"\nnight of {count} exposures x {files} files (+ manifest), {source.split(':')[0]}://")
    print(f"{'method':<16}{'median s':>10}{'per exposure ms':>18}")
    for name, secs in rows:
        print(f"{name:<16}{secs:>10.3f}{secs / max(count, 1) * 1000:>18.3f}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
