"""A stand-in for `gridxfer nightly` in tests/test_nightly_leader.py.

    python -m tests.leader_helper CONFIG NAME LEASE INTERVAL OUT

Every INTERVAL seconds it renews the leader lease (or tries to acquire it) and,
while it holds it, appends ``NAME TIME EXPIRES`` to OUT: one short O_APPEND
write, so two processes' lines never mix. It runs until it is killed.
"""

from __future__ import annotations

import os
import sys
import time

from GRID_XFER.app import App
from GRID_XFER.nightly.leader import Leadership


def main(argv: list[str]) -> None:
    config, name, lease, interval, out = argv
    leader = Leadership(App(config).couch(), lease=float(lease), holder=f"{name}:{os.getpid()}")
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    while True:
        if leader.renew() if leader.held else leader.acquire():
            now = time.time()
            if leader.held:  # act only while the lease holds by our own clock
                os.write(fd, f"{name} {now:.3f} {leader.expires:.3f}\n".encode())
        time.sleep(float(interval))


if __name__ == "__main__":
    main(sys.argv[1:])
