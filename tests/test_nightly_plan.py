"""The nightly service's decisions without servers: which night it is, when an
exposure is ready, how many workers a backlog gets, what the report says."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from GRID_XFER.errors import Code, StorageError
from GRID_XFER.nightly.discover import Discovery
from GRID_XFER.nightly.nights import night, night_date, window
from GRID_XFER.nightly.report import ADVICE, render
from GRID_XFER.nightly.workforce import wanted
from GRID_XFER.nightly_config import StreamConfig
from GRID_XFER.storage import Storage
from tests.nightgen import write_exposure


def _stream(**kw: Any) -> StreamConfig:
    base: dict[str, Any] = {"name": "cam", "source": "file:///src", "destination": "file:///dst"}
    return StreamConfig.model_validate({**base, **kw})


def _at(text: str, tz: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


# -- nights -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("2026-12-01T11:59:59", "20261130"),  # before the rollover: last evening's night
        ("2026-12-01T12:00:00", "20261201"),
        ("2026-12-01T23:59:00", "20261201"),
        ("2026-12-02T03:00:00", "20261201"),  # after midnight, same night
    ],
)
def test_a_night_changes_name_at_the_rollover_not_at_midnight(local: str, expected: str) -> None:
    s = _stream(timezone="America/Santiago", rollover_hour=12)
    d = night_date(s, _at(local, "America/Santiago"))
    assert d.strftime("%Y%m%d") == expected


def test_the_night_ends_at_the_next_rollover_and_is_due_deadline_hours_later() -> None:
    s = _stream(timezone="Europe/Amsterdam", rollover_hour=9, deadline_hours=3)
    n = night(s, dt.date(2026, 3, 28))  # the clocks go forward in that night
    assert n.end == _at("2026-03-29T09:00:00", "Europe/Amsterdam")
    assert n.deadline == n.end + 3 * 3600
    assert n.name == "20260328"


def test_the_window_is_tonight_and_the_catch_up_nights_oldest_first() -> None:
    s = _stream(catch_up_nights=2, rollover_hour=0, night_format="cam-%Y%m%d")
    names = [n.name for n in window(s, _at("2026-12-01T05:00:00", "UTC"))]
    assert names == ["cam-20261129", "cam-20261130", "cam-20261201"]
    assert window(s, _at("2026-12-01T05:00:00", "UTC"))[0].directory == "20261129"


# -- workers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backlogs", "expected"),
    [
        ({"a": 0, "b": 0}, {"a": 0, "b": 0}),  # nothing to do: nobody
        ({"a": 1, "b": 0}, {"a": 2, "b": 0}),  # min_workers while work remains
        ({"a": 45, "b": 0}, {"a": 3, "b": 0}),  # one per 20 tokens
        ({"a": 100, "b": 100}, {"a": 5, "b": 0}),  # at most max, oldest night first
        ({"a": 30, "b": 30}, {"a": 2, "b": 2}),
    ],
)
def test_workers_follow_the_backlog_between_min_and_max(
    backlogs: dict[str, int], expected: dict[str, int]
) -> None:
    s = _stream(min_workers=2, max_workers=5, tokens_per_worker=20)
    assert wanted(s, backlogs) == expected


# -- readiness --------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _discovery(tmp_path: Path, clock: Clock, **ready: Any) -> tuple[Discovery, Any]:
    s = _stream(
        source=(tmp_path / "src").as_uri(),
        destination=(tmp_path / "dst").as_uri(),
        rollover_hour=0,
        ready={"quiet_seconds": 30, **ready},
    )
    n = night(s, dt.date(2026, 12, 1))
    return Discovery(s, Storage(), clock=clock), n


def test_an_exposure_is_ready_once_its_manifest_is_there_and_it_is_quiet(tmp_path: Path) -> None:
    clock = Clock()
    disco, n = _discovery(tmp_path, clock)
    exp = tmp_path / "src" / "20261201" / "e1"
    write_exposure(exp, {"a.fits": b"a" * 10}, manifest=False)
    assert disco.look(n).waiting == ["e1"]  # no manifest yet
    write_exposure(exp, {"a.fits": b"a" * 10})
    found = disco.look(n)
    assert found.waiting == ["e1"] and not found.ready  # just written: not quiet yet
    clock.now += 32
    found = disco.look(n)
    assert [r.spec.exposure for r in found.ready] == ["e1"]
    names = {f.name for f in found.ready[0].spec.files}
    assert names == {"a.fits", "checksum-e1.sha256sum"}


def test_a_marker_file_makes_an_exposure_ready_and_is_not_moved(tmp_path: Path) -> None:
    clock = Clock()
    disco, n = _discovery(tmp_path, clock, marker="{exposure}.done")
    exp = tmp_path / "src" / "20261201" / "e2"
    write_exposure(exp, {"a.fits": b"a"})
    clock.now += 3600
    assert disco.look(n).waiting == ["e2"]  # quiet, manifest there, but no marker
    (exp / "e2.done").write_text("")
    found = disco.look(n)
    assert [f.name for f in found.ready[0].spec.files] == ["a.fits", "checksum-e2.sha256sum"]


def test_a_night_not_yet_at_the_source_is_nothing_to_do(tmp_path: Path) -> None:
    disco, n = _discovery(tmp_path, Clock())
    (tmp_path / "src").mkdir()
    found = disco.look(n)
    assert (found.ready, found.waiting) == ([], [])


def test_an_unchanged_exposure_is_not_walked_again_until_the_full_rescan(tmp_path: Path) -> None:
    clock = Clock()
    disco, n = _discovery(tmp_path, clock)
    exp = tmp_path / "src" / "20261201" / "e3"
    write_exposure(exp, {"a.fits": b"a"})
    past = clock.now - 60
    os.utime(exp, (past, past))
    for f in exp.iterdir():
        os.utime(f, (past, past))
    found = disco.look(n)
    assert len(found.ready) == 1
    disco._seen[(n.name, "e3")] = found.ready[0].mtime  # as make_tokens records it
    assert disco.look(n).untouched == 1
    (exp / "late.fits").write_bytes(b"late")  # a late file changes the directory
    assert disco.look(n).waiting == ["e3"]
    clock.now += 3601  # the full rescan forgets what it saw
    assert len(disco.look(n).ready) == 1


# -- report -----------------------------------------------------------------------


def test_the_report_text_says_what_to_do_for_each_error_code() -> None:
    doc = {
        "night": "20261201",
        "stream": "cam",
        "exposures": {"total": 3, "done": 1, "error": 2, "remaining": 0},
        "bytes": 2_500_000,
        "duration": 3600.0,
        "throughput": 694.4,
        "errors": [
            {
                "code": 30,
                "name": "CHECKSUM_MISMATCH",
                "count": 2,
                "advice": ADVICE[30],
                "samples": [{"token": "20261201_e1", "message": "sha256 differs"}],
            }
        ],
    }
    text = render(doc)
    assert "1 of 3 exposures done, 2 in error" in text
    assert "2.5 MB" in text
    assert ADVICE[30] in text and "20261201_e1: sha256 differs" in text


class FailingWalk(Storage):
    """A fault: one exposure cannot be read (as root, permissions cannot make one)."""

    def walk(self, url: str, *, refused: dict[str, str] | None = None) -> dict[str, Any]:
        if url.rstrip("/").endswith("/bad"):
            raise StorageError("permission denied", code=Code.SOURCE_MISSING, errno=13)
        return super().walk(url, refused=refused)


def test_an_unreadable_exposure_waits_and_the_others_become_tokens(tmp_path: Path) -> None:
    clock = Clock()
    s = _stream(
        source=(tmp_path / "src").as_uri(),
        destination=(tmp_path / "dst").as_uri(),
        ready={"quiet_seconds": 0},
    )
    n = night(s, dt.date(2026, 12, 1))
    for e in ("bad", "good"):
        write_exposure(tmp_path / "src" / "20261201" / e, {"a.fits": b"a"})
    clock.now += 10
    found = Discovery(s, FailingWalk(), clock=clock).look(n)
    assert [r.spec.exposure for r in found.ready] == ["good"]
    assert found.waiting == ["bad"] and "permission denied" in found.problems["bad"]


def test_a_directory_no_token_can_name_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    disco, n = _discovery(tmp_path, clock)
    (tmp_path / "src" / "20261201" / "exp 001").mkdir(parents=True)
    disco.look(n)
    disco.look(n)
    said = [r for r in caplog.records if "exp 001 is not moved" in r.getMessage()]
    assert len(said) == 1
