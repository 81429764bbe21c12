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
from GRID_XFER.cli.exits import exit_status
from GRID_XFER.errors import Code, GridXferError, InvalidToken, Rejected
from GRID_XFER.task import NoopTask
from GRID_XFER.token import parse_spec
from GRID_XFER.worker import Worker
from tests.conftest import (
    Database,
    free_port,
    gridxfer,
    make_database,
    spawn_worker,
    start_server,
    wait_for,
)

pytestmark = pytest.mark.slow  # starts servers or runs the CLI


def token(night: str, exposure: str, **fields: Any) -> dict[str, Any]:
    doc = tk.new_token(
        night,
        parse_spec({"exposure": exposure, "files": [{"name": "f.fits", "size": 10}]}),
        source="file:///src",
        destination="file:///dst",
    )
    doc.update(fields)
    return doc


def plant(db: Database, *docs: dict[str, Any]) -> None:
    with db.without_validation():
        for doc in docs:
            for attempt in range(50):
                try:
                    db.couch.put(doc)
                    break
                except Rejected:  # CouchDB 3 drops a design doc's old check a moment later
                    if attempt == 49:
                        raise
                    time.sleep(0.1)


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


# -- item 8: bad documents in the database -------------------------------------------
@pytest.mark.parametrize(
    "history",
    ["oops", {"t": 1}, 7, [{"event": "created"}, "x"]],
    ids=["string", "mapping", "number", "entries"],
)
def test_history_that_is_not_a_list_goes_to_error_2_and_nothing_is_lost(
    db: Database, history: Any
) -> None:
    planted = token("n1", "a", history=history, payload={"keep": "me"})
    plant(db, planted)
    pool = db.pool()
    assert pool.claim("n1") is None  # no crash, and nothing to run
    doc = quarantined(db, "n1_a", "history")
    assert doc["quarantined"]["was"]["history"] == history
    assert isinstance(doc["history"], list) and doc["history"][-1]["event"] == "error"
    for key, value in planted.items():  # every field it does not set is as it was
        if key not in (
            "state",
            "lock",
            "done",
            "output",
            "exit_code",
            "error",
            "history",
            "updated",
            "_rev",
        ):
            assert doc[key] == value, key
    assert pool.claim("n1") is None  # final: never retried


def test_list_status_and_delete_see_malformed_tokens_and_ignore_foreign_documents(
    db: Database,
) -> None:
    plant(
        db,
        token("n1", "err", state="error", lock=99, done=99, error="boom"),  # error: a string
        token("n1", "paused", state="paused"),  # unknown state
        token("n1", "big", bytes_total="lots"),  # not a number
        token("n1", "ok"),
        # A PiCaS token of another tool (no night), another app's documents.
        {"_id": "picas_1", "type": "token", "lock": 0, "done": 0, "input": "x"},
        {"_id": "n1_notes", "type": "note", "token_set": "n1", "state": "todo"},
        {"_id": "_design/other", "views": {"all": {"map": "function (doc) { emit(doc._id, 1); }"}}},
        {"_id": "_local/other", "anything": [1, 2]},
    )
    ours = ["n1_big", "n1_err", "n1_ok", "n1_paused"]

    listed = gridxfer("tokens", "list", "n1", config=db.config_file)
    assert listed.returncode == 0, listed.stderr
    lines = {ln.split()[0]: ln for ln in listed.stdout.splitlines()}
    assert sorted(lines) == ours
    assert lines["n1_err"].split()[1] == "error" and " 2 " in lines["n1_err"]
    assert lines["n1_paused"].split()[1] == "error" and "state" in lines["n1_paused"]
    assert "bytes_total" in lines["n1_big"]
    as_json = gridxfer("tokens", "list", "n1", "--json", config=db.config_file, check=True)
    assert sorted(d["_id"] for d in json.loads(as_json.stdout)) == ours
    errors = gridxfer(
        "tokens",
        "list",
        "n1",
        "--state",
        "error",
        "--code",
        "2",
        "--json",
        config=db.config_file,
        check=True,
    )
    assert sorted(d["_id"] for d in json.loads(errors.stdout)) == ["n1_err", "n1_paused"]

    for args in (["status"], ["status", "n1"], ["status", "--json"], ["status", "n1", "--json"]):
        proc = gridxfer(*args, config=db.config_file)
        assert proc.returncode == 0, (args, proc.stderr)
    report = json.loads(gridxfer("status", "--json", config=db.config_file, check=True).stdout)
    (n1,) = report["nights"]  # the PiCaS token has no night: not ours
    assert n1["states"]["error"] == 2 and n1["states"]["todo"] == 2 and n1["tokens"] == 4
    assert n1["errors"] == {"2": 2} and n1["bytes_total"] == 30  # "lots" counts as 0

    deleted = gridxfer("tokens", "delete", "n1", "--yes", "--json", config=db.config_file)
    assert deleted.returncode == 0, deleted.stderr
    assert sorted(json.loads(deleted.stdout)["deleted"]) == ours
    assert user_docs(db) == ["n1_notes", "picas_1"]
    assert db.couch.get("_local/other")["anything"] == [1, 2]


# -- item 9: tokens that never finish --------------------------------------------------
def test_locked_without_lease_is_reaped_into_error_2_and_reset_without_force(db: Database) -> None:
    worker = {"host": "gone", "pid": 1, "job_id": None, "id": "gone:1"}
    a = token("n1", "a", state="locked", lock=int(time.time()), attempts=1, worker=worker)
    b = token("n1", "b", state="locked", lock=int(time.time()), attempts=1, worker=worker)
    for doc in (a, b):
        del doc["lease_expires"]
    plant(db, a, b)
    pool = db.pool()
    assert pool.reset("n1", states=["locked"]) == ["n1_a", "n1_b"]  # no live worker holds them
    plant(db, {**a, "_rev": pool.get("n1_a")["_rev"]})
    assert pool.reap() == ["n1_a"]
    quarantined(db, "n1_a", "lease_expires")


def test_unknown_state_is_reaped_into_error_2(db: Database) -> None:
    plant(db, token("n1", "a", state="paused"), token("n1", "b", state=["todo"]))
    assert sorted(db.pool().reap("n1")) == ["n1_a", "n1_b"]
    assert quarantined(db, "n1_a", "state")["quarantined"]["was"]["state"] == "paused"
    quarantined(db, "n1_b", "state")


@pytest.mark.parametrize("not_before", ["soon", None, [1], {"t": 1}, True])
def test_non_numeric_not_before_is_claimed_into_error_2(db: Database, not_before: Any) -> None:
    plant(db, token("n1", "a", not_before=not_before))
    assert db.pool().claim("n1") is None
    assert quarantined(db, "n1_a", "not_before")["quarantined"]["was"]["not_before"] == not_before


# -- item 8: an HTTP 500 from a view is no outage -------------------------------------
def test_a_view_the_server_cannot_answer_is_reported_as_such(db: Database) -> None:
    """An HTTP 500 from a view is no outage: one line naming the view and the reason, at once."""
    db.pool().create("n1", [parse_spec("a")])
    ddoc = db.couch.get("_design/gridxfer")
    ddoc["views"]["by_state"]["map"] = (
        "function (doc) { emit([doc.token_set, doc.state, doc._id], 'x'); }"
    )
    db.couch.put(ddoc)  # as a view of an older version met a string bytes_total
    cfg = db.write_config(couchdb={"retries": 4, "backoff": 2}, worker={"outage_seconds": 900})
    for args in (
        ["status"],
        ["tokens", "list", "n1"],
        ["worker", "--night", "n1", "--idle-exit", "--task", "noop"],
    ):
        started = time.monotonic()
        proc = gridxfer(*args, config=cfg, timeout=90)
        assert proc.returncode == 4, (args, proc.stderr)
        line = error_line(proc)
        assert "gridxfer/by_state" in line and "HTTP 500" in line and "invalid_value" in line
        assert "unavailable" not in proc.stderr
        assert time.monotonic() - started < 15  # not retried as if the server were away


# -- SIGTERM always works ----------------------------------------------------------------
def assert_first_sigterm_ends(w: subprocess.Popen[str]) -> None:
    """A worker still waiting on the database exits at the first SIGTERM, cleanly."""
    try:
        assert w.poll() is None
        w.send_signal(signal.SIGTERM)
        _, err = w.communicate(timeout=20)
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    assert w.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err


def test_first_sigterm_stops_a_worker_waiting_for_an_absent_database(tmp_path: Path) -> None:
    cfg = tmp_path / "gone.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "couchdb": {"url": f"http://127.0.0.1:{free_port()}", "backoff": 1},
                "worker": {"outage_seconds": 900, "command": "true"},
            }
        )
    )
    w = spawn_worker(cfg, "--idle-exit")
    time.sleep(3)  # retrying with backoff by now
    assert_first_sigterm_ends(w)


def test_first_sigterm_stops_a_worker_riding_out_an_outage(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", free_port())
    try:
        db = make_database(srv.url, tmp_path)
        db.pool().create("n1", [parse_spec("a")])
        cfg = db.write_config(
            couchdb={"retries": 4, "backoff": 1},
            worker={"command": "true", "outage_seconds": 900, "idle_sleep": 0.2},
        )
        w = spawn_worker(cfg, "--night", "n1")  # no --idle-exit: it waits for more work
        try:
            wait_for(lambda: db.pool().get("n1_a")["state"] == "done", timeout=60)
            srv.stop()
            time.sleep(3)  # its next look at the todo view is being retried
        finally:
            assert_first_sigterm_ends(w)
    finally:
        srv.stop()


# -- item 10: bad input on the command line ----------------------------------------------
@pytest.mark.parametrize(
    "token_id",
    ["..", ".", "_all_docs", "_design/gridxfer", "_local/gridxfer-status", "n1/a", "_changes", ""],
)
def test_ids_that_are_no_token_ids_exit_6_before_any_request(tmp_path: Path, token_id: str) -> None:
    cfg = tmp_path / "gone.yaml"  # any request would end in exit 4
    cfg.write_text(
        yaml.safe_dump({"couchdb": {"url": f"http://127.0.0.1:{free_port()}", "retries": 0}})
    )
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


# -- any document: random ones never crash list, show, status or a worker ----------------
JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = [
    "type",
    "token_set",
    "exposure",
    "state",
    "lock",
    "done",
    "output",
    "exit_code",
    "files",
    "bytes_total",
    "source",
    "destination",
    "payload",
    "attempts",
    "max_attempts",
    "not_before",
    "rnd",
    "lease_expires",
    "worker",
    "error",
    "stage_request",
    "history",
    "scrub_count",
    "created",
    "updated",
    "hostname",
    "x",
]
STATE = st.sampled_from([*tk.STATES, "paused"]) | JSON  # a state of any type, half the time
# A token in any state, with a few fields set to any JSON value or removed.
CHANGES = st.dictionaries(st.sampled_from(FIELDS), JSON | st.just("<removed>"), max_size=3)
SERIAL = iter(range(10**6))


def random_token(night: str, state: Any, changes: dict[str, Any]) -> dict[str, Any]:
    """A token of ``night`` in ``state`` (a lost lease when held), then ``changes``."""
    doc = token(night, "a", state=state)
    if state in tk.HELD:
        doc.update(
            lease_expires=time.time() - 3600,
            attempts=1,
            worker={"host": "gone", "pid": 1, "job_id": None, "id": "gone:1"},
        )
    if state == "error":
        doc.update(
            lock=99,
            done=99,
            error={
                "code": 30,
                "name": "CHECKSUM_MISMATCH",
                "message": "differs",
                "file": None,
                "time": 1.0,
            },
        )
    for key, value in changes.items():
        if value == "<removed>":
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def valid(doc: dict[str, Any]) -> bool:
    try:
        tk.validate(doc)
    except InvalidToken:
        return False
    return True


def run_cli(config: Path, *args: str) -> tuple[int, str]:
    """``gridxfer ARGS`` in this process (fast enough for many examples): (status, output).

    A GridXferError is a documented exit status; any other exception fails the test.
    """
    result = CliRunner().invoke(cli, ["--config", str(config), *args], standalone_mode=False)
    logging.getLogger("GRID_XFER").handlers.clear()  # the CLI's handler wrote to the runner
    exc = result.exception
    if exc is None:
        return 0, result.output
    if isinstance(exc, SystemExit):
        return int(exc.code or 0), result.output
    if isinstance(exc, GridXferError):
        return exit_status(exc), result.output
    raise AssertionError(f"gridxfer {' '.join(args)} crashed") from exc


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(state=STATE, changes=CHANGES, foreign=JSON)
def test_any_document_survives(
    db: Database, state: Any, changes: dict[str, Any], foreign: Any
) -> None:
    night = f"h{next(SERIAL)}"
    doc = random_token(night, state, changes)
    other = {"_id": f"{night}_other", "type": "note", "token_set": night, "body": foreign}
    plant(db, doc, other, {"_id": f"_local/{night}", "body": foreign})
    # As read back: JSON numbers can come back in another form (1e16 as an int).
    planted, other = db.couch.get(doc["_id"]), db.couch.get(other["_id"])
    ours = doc.get("type") == "token" and doc.get("token_set") == night
    was_valid = valid(planted)

    for args in (
        ["tokens", "list", night],
        ["tokens", "list", night, "--json"],
        ["tokens", "show", doc["_id"]],
        ["tokens", "show", doc["_id"], "--json"],
        ["status"],
        ["status", "--json"],
        ["status", night],
        ["status", night, "--json"],
    ):
        code, out = run_cli(db.config_file, *args)
        # A night whose only document is not a token of it has no tokens: exit 5.
        unknown_night = not ours and night in args
        assert code == (5 if unknown_night else 0), (args, code, out)
        if args == ["tokens", "list", night]:
            assert (doc["_id"] in out) == ours

    # This night only: a token whose token_set names another night is that night's.
    Worker(db.pool(), NoopTask(), night=night, idle_exit=True, reap_every=0).run()
    after = db.couch.get(doc["_id"])
    assert db.couch.get(other["_id"]) == other  # foreign documents: left alone
    if not ours:
        assert after == planted
    else:
        if not was_valid and after["_rev"] != planted["_rev"]:
            # Touched only to quarantine it: error 2, and every value it replaced is kept.
            assert after["state"] == "error" and after["error"]["code"] == Code.INVALID_TOKEN
            was = after["quarantined"]["was"]
            for key, value in planted.items():
                if key == "history" and "history" not in was:  # a list of events: one added
                    assert after["history"][:-1] == value[-(tk.HISTORY_LIMIT - 1) :]
                elif key != "_rev" and after.get(key) != value:
                    assert key in was and was[key] == value, key
        if planted.get("state") not in tk.STATES:
            assert after["state"] == "error"  # an unknown state never lingers

    # Reset and delete take it too (a reset the write check refuses is a warning).
    states = [f"--state={s}" for s in tk.STATES]
    assert run_cli(db.config_file, "tokens", "reset", night, *states, "--force")[0] == (
        0 if ours else 5
    )
    assert run_cli(db.config_file, "tokens", "delete", night, "--yes")[0] == (0 if ours else 5)
    assert (db.couch.get_or_none(doc["_id"]) is None) == ours
    assert db.couch.get(other["_id"]) == other


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(state=STATE, changes=CHANGES)
def test_any_token_can_be_listed_reset_and_deleted(
    db: Database, state: Any, changes: dict[str, Any]
) -> None:
    night = f"r{next(SERIAL)}"
    doc = random_token(night, state, changes)
    plant(db, doc)
    ours = doc.get("type") == "token" and doc.get("token_set") == night
    states = [f"--state={s}" for s in tk.STATES]
    for args in (
        ["tokens", "list", night, *states],
        ["tokens", "reset", night, *states, "--force"],
        ["tokens", "list", night],
        ["tokens", "delete", night, "--yes"],
    ):
        assert run_cli(db.config_file, *args)[0] == (0 if ours else 5), args
    assert (db.couch.get_or_none(doc["_id"]) is None) == ours


@pytest.mark.parametrize("state", [["todo"], {"s": "locked"}, 5, None], ids=repr)
def test_a_state_of_any_type_is_listed_reset_and_deleted(db: Database, state: Any) -> None:
    plant(db, token("n1", "a", state=state, history="oops"))
    (listed,) = db.pool().select("n1", ["error"], [Code.INVALID_TOKEN])
    assert listed["_id"] == "n1_a"
    assert db.pool().reset("n1") == ["n1_a"]  # quarantined, then a fresh start
    doc = db.pool().get("n1_a")
    assert doc["state"] == "todo" and doc["quarantined"]["was"]["state"] == state
    assert doc["quarantined"]["was"]["history"] == "oops"
    assert db.pool().delete("n1") == ["n1_a"]
