"""PiCaS 1.1.2 (PyPI ``picas``, in its own virtualenv, run as a subprocess with that
python) against our tokens, on pouchdb-server and Apache CouchDB 3: its Monitor views
classify tokens our own code paths put in todo, locked, done and error, and its
``Task.error()`` works on our tokens, which our commands still read afterwards."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from bench.picas_venv import PICAS_VERSION, find_picas_python
from GRID_XFER import token as tk
from GRID_XFER.errors import Code
from GRID_XFER.token import parse_spec
from tests.conftest import Database, cli_env, gridxfer

# Runs with the picas virtualenv's python: imports picas only, never GRID_XFER.
PICAS_SIDE = r"""
import json, os, sys
from picas.clients import CouchDB
from picas.documents import Task
from picas.iterators import TaskViewIterator

url, name, action = sys.argv[1:4]
db = CouchDB(url=url, db=name, username=os.environ.get("PICAS_USER") or None,
             password=os.environ.get("PICAS_PASSWORD", ""))
if action == "classify":
    views = {v: sorted(r.id for r in db.view(v)) for v in ("todo", "locked", "done", "error")}
    views["overview"] = {r.key: r.value for r in db.view("overview_total", group=True)}
    print(json.dumps(views))
elif action == "claim-and-error":  # a PiCaS worker: claim from todo, fail the task
    task = next(iter(TaskViewIterator(db, "todo")))
    task.error("parset refused by picas worker")
    db.save(task)
    again = Task(db.get(task.id).value)
    print(json.dumps({"id": task.id, "has_error": again.has_error(),
                      "errors": again.get_errors()}))
elif action == "error":  # Task.error() on a given token
    task = Task(db.get(sys.argv[4]).value)
    try:
        task.error("marked by hand")
    except Exception as exc:
        print(json.dumps({"raised": type(exc).__name__, "why": str(exc)}))
    else:
        db.save(task)
        print(json.dumps({"saved": True}))
"""


@pytest.fixture(scope="module")
def picas_python() -> str:
    python, version = find_picas_python()
    assert version == PICAS_VERSION
    return python


def picas(python: str, db: Database, *args: str) -> Any:
    secret = db.cfg.secret() or ""
    env = cli_env(db.config_file, PICAS_USER=db.cfg.user or "", PICAS_PASSWORD=secret)
    url = db.cfg.url if isinstance(db.cfg.url, str) else db.cfg.url[0]
    proc = subprocess.run(
        [python, "-c", PICAS_SIDE, url, db.cfg.db, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _four_states(db: Database) -> dict[str, str]:
    """Tokens in todo, locked, done and error, each put there by our own code paths."""
    pool = db.pool(lease=600)
    pool.create("n1", [parse_spec(e) for e in ("a", "b", "c", "d")])
    held, finished, failed = (pool.claim("n1") for _ in range(3))
    assert held is not None and finished is not None and failed is not None
    finished.done()
    failed.fail(int(Code.SOURCE_MISSING), "no such file", transient=False)
    (todo,) = {"n1_a", "n1_b", "n1_c", "n1_d"} - {held.id, finished.id, failed.id}
    return {"todo": todo, "locked": held.id, "done": finished.id, "error": failed.id}


def test_picas_views_classify_our_tokens(db: Database, picas_python: str) -> None:
    states = _four_states(db)
    seen = picas(picas_python, db, "classify")
    for state, token_id in states.items():
        assert seen[state] == [token_id], (state, seen)
    assert seen["overview"] == {"todo": 1, "locked": 1, "done": 1, "error": 1}


def test_picas_task_error_works_on_our_tokens_and_we_still_read_them(
    db: Database, picas_python: str
) -> None:
    states = _four_states(db)
    out = picas(picas_python, db, "claim-and-error")
    assert out["id"] == states["todo"] and out["has_error"] is True
    (entry,) = out["errors"]  # PiCaS's list: our "no error" ([]) took its append
    assert entry["message"] == "parset refused by picas worker"
    # on a token our worker holds, too (a PiCaS script marking it by hand)
    assert picas(picas_python, db, "error", states["locked"]) == {"saved": True}
    seen = picas(picas_python, db, "classify")
    assert seen["error"] == sorted([states["error"], states["todo"], states["locked"]])
    # Our readers: the token is still well-formed, listed, counted and shown.
    doc = db.pool().get(states["todo"])
    assert tk.problem(doc) is None and tk.error_code(doc) is None
    assert doc["state"] == "todo" and doc["lock"] == doc["done"] == 99
    listed = gridxfer("tokens", "list", "n1", "--json", config=db.config_file, check=True)
    assert {d["_id"] for d in json.loads(listed.stdout)} == set(states.values())
    text = gridxfer("tokens", "list", "n1", config=db.config_file, check=True).stdout
    line = next(x for x in text.splitlines() if x.startswith(states["todo"]))
    assert "PiCaS error: parset refused by picas worker" in line
    status = gridxfer("status", "n1", "--json", config=db.config_file, check=True)
    assert "n1" in status.stdout
    ours = db.pool().get(states["error"])
    assert ours["error"]["code"] == int(Code.SOURCE_MISSING)  # our record, untouched


def test_picas_task_error_on_a_token_holding_our_error_record(
    db: Database, picas_python: str
) -> None:
    """The one clash left: our error record is one object, and PiCaS 1.1.2's
    ``Task.error()`` appends to ``error`` (``doc['error'].append``): on a token that
    already holds a GRID_XFER error (state error, or todo awaiting a retry) it raises
    AttributeError before saving anything. `gridxfer tokens reset` clears the record."""
    states = _four_states(db)
    out = picas(picas_python, db, "error", states["error"])
    assert out["raised"] == "AttributeError" and "append" in out["why"]
    gridxfer("tokens", "reset", "n1", config=db.config_file, check=True)
    assert picas(picas_python, db, "error", states["error"]) == {"saved": True}
