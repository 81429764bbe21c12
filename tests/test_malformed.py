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


# -- item 8: an HTTP 500 from a view is no outage -------------------------------------
def test_a_view_the_server_cannot_answer_is_reported_as_such(db: Database) -> None:
    """An HTTP 500 from a view is no outage: one line naming the view and the reason, at once."""
    db.pool().create("n1", [parse_spec("a")])
    ddoc = db.couch.get("_design/gridxfer")
    ddoc["views"]["by_state"]["map"] = "function (doc) { emit([doc.token_set, doc.state, doc._id], 'x'); }"
    db.couch.put(ddoc)  # as a view of an older version met a string bytes_total
    cfg = db.write_config(couchdb={"retries": 4, "backoff": 2}, worker={"outage_seconds": 900})
    for args in (["status"], ["tokens", "list", "n1"], ["worker", "--night", "n1", "--idle-exit",
                                                        "--task", "noop"]):
        started = time.monotonic()
        proc = gridxfer(*args, config=cfg, timeout=90)
        assert proc.returncode == 4, (args, proc.stderr)
        line = error_line(proc)
        assert "gridxfer/by_state" in line and "HTTP 500" in line and "invalid_value" in line
        assert "unavailable" not in proc.stderr
        assert time.monotonic() - started < 15  # not retried as if the server were away


# -- SIGTERM always works ----------------------------------------------------------------
def test_first_sigterm_stops_a_worker_waiting_for_an_absent_database(tmp_path: Path) -> None:
    cfg = tmp_path / "gone.yaml"
    cfg.write_text(yaml.safe_dump({"couchdb": {"url": f"http://127.0.0.1:{free_port()}",
                                               "backoff": 1},
                                   "worker": {"outage_seconds": 900, "command": "true"}}))
    w = spawn_worker(cfg, "--idle-exit")
    try:
        time.sleep(3)  # retrying with backoff by now
        assert w.poll() is None
        w.send_signal(signal.SIGTERM)
        _, err = w.communicate(timeout=20)
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    assert w.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err


def test_first_sigterm_stops_a_worker_riding_out_an_outage(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", free_port())
    try:
        db = make_database(srv.url, tmp_path)
        db.pool().create("n1", [parse_spec("a")])
        cfg = db.write_config(couchdb={"retries": 4, "backoff": 1},
                              worker={"command": "true", "outage_seconds": 900,
                                      "idle_sleep": 0.2})
        w = spawn_worker(cfg, "--night", "n1")  # no --idle-exit: it waits for more work
        try:
            wait_for(lambda: db.pool().get("n1_a")["state"] == "done", timeout=60)
            srv.stop()
            time.sleep(3)  # its next look at the todo view is being retried
            assert w.poll() is None
            w.send_signal(signal.SIGTERM)
            _, err = w.communicate(timeout=20)
        finally:
            if w.poll() is None:
                w.kill()
                w.wait()
        assert w.returncode == 128 + signal.SIGTERM, err
        assert "Traceback" not in err
    finally:
        srv.stop()


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


