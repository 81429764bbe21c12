"""Any document survives: what the database holds never crashes or hangs a command.

Documents are planted past the database's write check (``without_validation``), as
an older version, a script or a person editing by hand could leave them. A malformed
token ends in ``error`` with code 2 and keeps everything else it held (docs/tokens.md,
"Malformed documents"); a document that is no token of a night is left alone.
"""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from GRID_XFER import token as tk
from GRID_XFER.cli import cli
from GRID_XFER.errors import Code, GridXferError, InvalidToken
from GRID_XFER.task import NoopTask
from GRID_XFER.token import parse_spec
from GRID_XFER.worker import Worker
from tests.conftest import Database, free_port, gridxfer, make_database, spawn_worker, \
    start_server, wait_for


def token(night: str, exposure: str, **fields: Any) -> dict[str, Any]:
    doc = tk.new_token(night, parse_spec({"exposure": exposure,
                                          "files": [{"name": "f.fits", "size": 10}]}),
                       source="file:///src", destination="file:///dst")
    doc.update(fields)
    return doc


def plant(db: Database, *docs: dict[str, Any]) -> None:
    with db.without_validation():
        for doc in docs:
            db.couch.put(doc)


def quarantined(db: Database, doc_id: str, field: str) -> dict[str, Any]:
    """The stored document, checked to be in error 2 with a message naming ``field``."""
    doc = db.pool().get(doc_id)
    assert doc["state"] == "error" and doc["output"] == Code.INVALID_TOKEN, doc
    assert doc["error"]["code"] == Code.INVALID_TOKEN and doc["lock"] == doc["done"] == 99
    assert doc_id in doc["error"]["message"] and field in doc["error"]["message"], doc["error"]
    return doc


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("gridxfer: error: "), proc.stderr
    assert not any(ln.startswith("gridxfer: error: ") for ln in lines[:-1]), proc.stderr
    return lines[-1]


def user_docs(db: Database) -> list[str]:
    return sorted(r["id"] for r in db.couch.all_docs() if not r["id"].startswith("_design/"))


# -- item 10: bad input on the command line ----------------------------------------------
@pytest.mark.parametrize("token_id", ["..", ".", "_all_docs", "_design/gridxfer",
                                      "_local/gridxfer-status", "n1/a", "_changes", ""])
def test_ids_that_are_no_token_ids_exit_6_before_any_request(tmp_path: Path,
                                                             token_id: str) -> None:
    cfg = tmp_path / "gone.yaml"  # any request would end in exit 4
    cfg.write_text(yaml.safe_dump({"couchdb": {"url": f"http://127.0.0.1:{free_port()}",
                                               "retries": 0}}))
    for extra in ([], ["--json"]):
        proc = gridxfer("tokens", "show", token_id, *extra, config=cfg)
        assert proc.returncode == 6, proc.stderr
        assert "token id" in error_line(proc) and proc.stdout == ""


@pytest.mark.parametrize("option", ["--from", "--template"])
def test_create_from_a_file_that_is_not_utf8_exits_6(db: Database, option: str) -> None:
    spec = db.tmp / "latin1.yaml"
    spec.write_bytes("- caf\u00e9\n".encode("latin-1"))
    proc = gridxfer("tokens", "create", "n1", option, str(spec), config=db.config_file)
    assert proc.returncode == 6, proc.stderr
    line = error_line(proc)
    assert str(spec) in line and "UTF-8" in line
    assert user_docs(db) == []


