"""What the service alerts on, and when it announces the end of it: a night past its
deadline, no progress while work remains, a source that does not answer. The
alerts go through the real webhook sink to a real HTTP receiver on loopback; the
clock is the test's, so hours pass in microseconds."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from GRID_XFER.nightly.alerts import Alerter
from GRID_XFER.nightly.nights import night
from GRID_XFER.nightly.sinks import WebhookSink
from GRID_XFER.nightly.watch import Watch
from GRID_XFER.nightly_config import StreamConfig, WebhookConfig


@pytest.fixture
def posts() -> Iterator[tuple[str, list[str]]]:
    got: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/hooks/k", got
    finally:
        srv.shutdown()


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _watch(url: str, clock: Clock) -> Watch:
    sink = WebhookSink(WebhookConfig(), env={"GRIDXFER_WEBHOOK_URL": url})
    alerter = Alerter([sink], None, repeat_seconds=6 * 3600, clock=clock)
    return Watch("cam", alerter, stall_seconds=1800)


def _counts(todo: int = 0, done: int = 0, error: int = 0) -> dict[str, dict[str, int]]:
    return {
        s: {"count": n, "bytes": 0}
        for s, n in (("todo", todo), ("done", done), ("error", error))
        if n
    }


def test_a_night_past_its_deadline_alerts_once_and_its_end_is_announced(
    posts: tuple[str, list[str]],
) -> None:
    url, got = posts
    clock = Clock()
    watch = _watch(url, clock)
    s = StreamConfig(name="cam", source="file:///s", destination="file:///d")
    n = night(s, dt.date(2026, 12, 1))
    watch.deadline(n, _counts(todo=3, done=5), 0, n.deadline - 1)
    assert got == []  # not due yet
    for _ in range(3):  # every cycle after the deadline: one alert
        watch.deadline(n, _counts(todo=3, done=5), 2, n.deadline + 60)
    assert len(got) == 1 and "not finished by its deadline: 5 exposure(s) left" in got[0]
    watch.deadline(n, _counts(done=8), 0, n.deadline + 120)
    watch.deadline(n, _counts(done=8), 0, n.deadline + 180)
    assert len(got) == 2 and got[1].startswith("[gridxfer] RECOVERED")


def test_no_progress_while_work_remains_alerts_and_recovers_when_tokens_finish(
    posts: tuple[str, list[str]],
) -> None:
    url, got = posts
    clock = Clock()
    watch = _watch(url, clock)
    watch.progress({"n": _counts(todo=4, done=1)}, clock.now)
    watch.progress({"n": _counts(todo=4, done=1)}, clock.now + 1799)
    assert got == []
    watch.progress({"n": _counts(todo=4, done=1)}, clock.now + 1800)
    watch.progress({"n": _counts(todo=4, done=1)}, clock.now + 2400)
    assert len(got) == 1 and "no progress for 30 min, 4 left" in got[0]
    watch.progress({"n": _counts(todo=3, done=2)}, clock.now + 2500)
    assert len(got) == 2 and "RECOVERED" in got[1]


def test_nothing_left_is_no_stall_however_long_it_is_quiet(posts: tuple[str, list[str]]) -> None:
    url, got = posts
    clock = Clock()
    watch = _watch(url, clock)
    for hours in range(0, 48, 6):
        watch.progress({"n": _counts(done=9)}, clock.now + hours * 3600)
    assert got == []


def test_an_unreachable_source_alerts_once_per_repeat_and_recovers(
    posts: tuple[str, list[str]],
) -> None:
    url, got = posts
    clock = Clock()
    watch = _watch(url, clock)
    for _ in range(5):
        watch.reachable("source", "connection refused")
    assert len(got) == 1 and "source unreachable (stream cam)" in got[0]
    clock.now += 6 * 3600  # still down after repeat_hours: said again
    watch.reachable("source", "connection refused")
    assert len(got) == 2
    watch.reachable("source", None)
    watch.reachable("source", None)
    assert len(got) == 3 and "RECOVERED" in got[2]
