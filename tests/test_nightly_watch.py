"""What the service alerts on, and when it announces the end of it: a night past its
deadline, no progress while work remains, a source that does not answer. The
alerts go through the real webhook sink to a real HTTP receiver on loopback; the
clock is the test's, so hours pass in microseconds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from GRID_XFER.nightly.alerts import Alerter
from GRID_XFER.nightly.nights import night
from GRID_XFER.nightly.sinks import WebhookSink
from GRID_XFER.nightly.watch import Watch
from GRID_XFER.nightly_config import StreamConfig, WebhookConfig
from tests.receivers import webhook_receiver


@pytest.fixture
def posts() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with webhook_receiver("/hooks/k") as received:
        yield received


def _texts(got: list[dict[str, Any]]) -> list[str]:
    return [body["text"] for body in got]


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
    posts: tuple[str, list[dict[str, Any]]],
) -> None:
    url, got = posts
    clock = Clock()
    watch = _watch(url, clock)
    s = StreamConfig(name="cam", source="file:///s", destination="file:///d")
    n = night(s, dt.date(2026, 12, 1))
    watch.deadline(n, _counts(todo=3, done=5), 0, n.deadline - 1)
    assert _texts(got) == []  # not due yet
    for _ in range(3):  # every cycle after the deadline: one alert
        watch.deadline(n, _counts(todo=3, done=5), 2, n.deadline + 60)
    assert (
        len(_texts(got)) == 1
        and "not finished by its deadline: 5 exposure(s) left" in _texts(got)[0]
    )
    watch.deadline(n, _counts(done=8), 0, n.deadline + 120)
    watch.deadline(n, _counts(done=8), 0, n.deadline + 180)
    assert len(_texts(got)) == 2 and _texts(got)[1].startswith("[gridxfer] RECOVERED")


def test_no_progress_while_work_remains_alerts_and_recovers_when_tokens_finish(
    posts: tuple[str, list[dict[str, Any]]],
) -> None:
    url, got = posts
    clock = Clock()
    watch = _watch(url, clock)
    watch.progress({"n": _counts(todo=4, done=1)}, clock.now)
    watch.progress({"n": _counts(todo=4, done=1)}, clock.now + 1799)
    assert _texts(got) == []
    watch.progress({"n": _counts(todo=4, done=1)}, clock.now + 1800)
    watch.progress({"n": _counts(todo=4, done=1)}, clock.now + 2400)
    assert len(_texts(got)) == 1 and "no progress for 30 min, 4 left" in _texts(got)[0]
    watch.progress({"n": _counts(todo=3, done=2)}, clock.now + 2500)
    assert len(_texts(got)) == 2 and "RECOVERED" in _texts(got)[1]


def test_nothing_left_is_no_stall_however_long_it_is_quiet(
    posts: tuple[str, list[dict[str, Any]]],
) -> None:
    url, got = posts
    clock = Clock()
    watch = _watch(url, clock)
    for hours in range(0, 48, 6):
        watch.progress({"n": _counts(done=9)}, clock.now + hours * 3600)
    assert _texts(got) == []


def test_an_unreachable_source_alerts_once_per_repeat_and_recovers(
    posts: tuple[str, list[dict[str, Any]]],
) -> None:
    url, got = posts
    clock = Clock()
    watch = _watch(url, clock)
    for _ in range(5):
        watch.reachable("source", "connection refused")
    assert len(_texts(got)) == 1 and "source unreachable (stream cam)" in _texts(got)[0]
    clock.now += 6 * 3600  # still down after repeat_hours: said again
    watch.reachable("source", "connection refused")
    assert len(_texts(got)) == 2
    watch.reachable("source", None)
    watch.reachable("source", None)
    assert len(_texts(got)) == 3 and "RECOVERED" in _texts(got)[2]
