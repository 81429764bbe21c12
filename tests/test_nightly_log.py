"""The service's log file: rotated, optionally JSON lines, never a credential."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from GRID_XFER.cli.nightly import log_to_file
from GRID_XFER.nightly_config import NightlyConfig


@pytest.fixture
def package_log() -> Iterator[logging.Logger]:
    root = logging.getLogger("GRID_XFER")
    handlers, level = list(root.handlers), root.level
    root.setLevel(logging.INFO)
    try:
        yield logging.getLogger("GRID_XFER.nightly.service")
    finally:
        for h in root.handlers[len(handlers) :]:
            h.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def test_json_lines_carry_time_level_logger_and_a_redacted_message(
    tmp_path: Path, package_log: logging.Logger
) -> None:
    path = tmp_path / "log" / "nightly.log"
    log_to_file(NightlyConfig(log_file=path, log_json=True))
    package_log.warning("source root://user:s3cret@host//raw does not answer")
    entry = json.loads(path.read_text().splitlines()[-1])
    assert entry["level"] == "WARNING" and entry["logger"] == "GRID_XFER.nightly.service"
    assert "s3cret" not in path.read_text() and "does not answer" in entry["message"]


def test_the_log_file_is_rotated_at_its_size_keeping_the_backups(
    tmp_path: Path, package_log: logging.Logger
) -> None:
    path = tmp_path / "nightly.log"
    log_to_file(NightlyConfig(log_file=path, log_max_bytes=10_000, log_backups=2))
    for i in range(400):
        package_log.info("cycle %d: %s", i, "x" * 80)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "nightly.log",
        "nightly.log.1",
        "nightly.log.2",
    ]
    assert all(p.stat().st_size <= 10_000 + 200 for p in tmp_path.iterdir())
    assert "cycle 399" in path.read_text()
