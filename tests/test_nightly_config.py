"""The nightly service's settings: a bad stream fails at load time with its key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from GRID_XFER.config import Config, load_config
from GRID_XFER.errors import ConfigError

STREAM = "{name: cam, source: 'file:///raw', destination: 'file:///arch'%s}"


def _streams(*items: str) -> str:
    return "nightly: {streams: [" + ", ".join(items) + "]}"


def _load(tmp_path: Path, text: str) -> Config:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    return load_config(f, env={})


def test_a_stream_with_defaults(tmp_path: Path) -> None:
    cfg = _load(tmp_path, _streams(STREAM % ""))
    s = cfg.nightly.stream("cam")
    assert (s.timezone, s.rollover_hour, s.night_format) == ("UTC", 12, "%Y%m%d")
    assert s.min_workers <= s.max_workers
    assert cfg.nightly.kill_file is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (", timezone: Mars/Olympus", "nightly.streams.0.timezone: unknown time zone"),
        (", rollover_hour: 24", "nightly.streams.0.rollover_hour"),
        (", night_format: tonight", "nightly.streams.0.night_format: must be a strftime"),
        (", night_format: '%Y/%m/%d'", "nightly.streams.0.night_format: must be a strftime"),
        (", min_workers: 5, max_workers: 2", "min_workers is more than max_workers"),
        (", name: 'a b'", "nightly.streams.0.name"),
        (", colour: red", "nightly.streams.0.colour: unknown key"),
        (", time_limit: 4 hours", "nightly.streams.0.time_limit: invalid duration"),
        (", time_limit: '0'", "nightly.streams.0.time_limit: invalid duration"),
        (
            ", catch_up_nights: 0",
            "deadline_hours (12) must be less than 24 x catch_up_nights (0)",
        ),
    ],
)
def test_a_bad_stream_names_its_key(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, _streams(STREAM % extra))
    assert message in str(info.value)


def test_streams_sharing_a_token_set_name_are_refused(tmp_path: Path) -> None:
    two = _streams(STREAM % "", (STREAM % "").replace("cam", "cam2"))
    with pytest.raises(ConfigError, match="same night_format"):
        _load(tmp_path, two)


def test_an_unknown_stream_is_named(tmp_path: Path) -> None:
    cfg = _load(tmp_path, _streams(STREAM % ""))
    with pytest.raises(Exception, match="unknown stream 'nope'.*cam"):
        cfg.nightly.stream("nope")
