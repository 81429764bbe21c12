"""Design documents from tokens/views: install, idempotence, PiCaS Monitor semantics,
the write check, and who may do what on CouchDB 3."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
import yaml

from GRID_XFER import views
from GRID_XFER.config import CouchDBConfig, load_config
from GRID_XFER.couch import Couch
from GRID_XFER.errors import Code, DatabaseError, Rejected
from GRID_XFER.token import parse_spec
from tests.conftest import Database, gridxfer, make_database
from tests.plugins.couchdb import CouchDB3


def test_design_docs_built_from_js_sources() -> None:
    docs = views.design_docs()
    assert set(docs) == {"Monitor", "gridxfer"}
    assert set(docs["Monitor"]["views"]) == {"todo", "locked", "done", "error", "overview_total"}
    assert docs["gridxfer"]["views"]["by_state"]["reduce"] == "_stats"
    assert all(v["map"].startswith("function") for d in docs.values() for v in d["views"].values())


@pytest.mark.slow
def test_install_is_idempotent_and_updates_only_changed(db: Database) -> None:
    assert db.couch.create_db() is False
    assert views.install(db.couch) == {"Monitor": "unchanged", "gridxfer": "unchanged"}
    ddoc = db.couch.get("_design/gridxfer")
    ddoc["views"]["todo"]["map"] = "function (doc) {}"
    db.couch.put(ddoc)
    assert views.install(db.couch) == {"Monitor": "unchanged", "gridxfer": "updated"}
    assert db.couch.get("_design/gridxfer")["views"] == views.design_docs()["gridxfer"]["views"]


@pytest.mark.slow
def test_picas_monitor_views_read_our_tokens(db: Database) -> None:
    pool = db.pool()
    pool.create("n1", [parse_spec(x) for x in "abcd"])
    done = pool.claim("n1")
    failed = pool.claim("n1")
    held = pool.claim("n1")
    assert done and failed and held
    done.done()
    failed.fail(Code.SOURCE_MISSING, "gone")

    def ids(view: str) -> set[str]:
        return (
            {r["id"] for r in db.couch.view("Monitor", view, reduce=False)["rows"]}
            if view == "overview_total"
            else {r["id"] for r in db.couch.view("Monitor", view)["rows"]}
        )

    assert ids("done") == {done.id}
    assert ids("error") == {failed.id}
    assert ids("locked") == {held.id}
    assert len(ids("todo")) == 1
    totals = {
        r["key"]: r["value"] for r in db.couch.view("Monitor", "overview_total", group=True)["rows"]
    }
    assert totals == {"todo": 1, "locked": 1, "done": 1, "error": 1}


@pytest.mark.slow
def test_the_write_check_refuses_a_broken_token_from_any_client(db: Database) -> None:
    pool = db.pool()
    pool.create("n1", [parse_spec("a")])
    doc = pool.get("n1_a")
    for field, value, says in [
        ("state", "finished", "state must be one of"),
        ("bytes_total", "12 GB", "bytes_total must be a number"),
        ("history", "none", "history must be a list"),
        ("files", [{"size": 1}], "files[0] must be an object with a non-empty name"),
    ]:
        broken = {**doc, field: value}
        with pytest.raises(Rejected, match=f"invalid token n1_a: {re.escape(says)}"):
            db.couch.put(broken)
    assert pool.get("n1_a")["_rev"] == doc["_rev"]  # nothing was written
    # Documents that are not tokens, and deletions, pass.
    db.couch.put({"_id": "site-notes", "text": "not a token"})
    db.couch.delete("n1_a", doc["_rev"])


@pytest.mark.slow
def test_init_merges_into_a_picas_monitor_and_keeps_views_it_does_not_own(db: Database) -> None:
    monitor = db.couch.get("_design/Monitor")
    monitor["views"]["todo"]["map"] = "function (doc) { emit(doc._id, 1); }"  # stale, ours
    monitor["views"]["by_owner"] = {"map": "function (doc) { emit(doc.owner, 1); }"}  # PiCaS user's
    db.couch.put(monitor)
    assert views.install(db.couch)["Monitor"] == "updated"
    stored = db.couch.get("_design/Monitor")["views"]
    assert stored["by_owner"]["map"].startswith("function (doc) { emit(doc.owner")
    assert stored["todo"] == views.design_docs()["Monitor"]["views"]["todo"]
    assert views.install(db.couch)["Monitor"] == "unchanged"


@pytest.mark.slow
def test_init_on_a_fresh_cluster_database_works_the_first_time(
    couchdb_cluster: CouchDB3, tmp_path: Path
) -> None:
    for _ in range(3):  # a fresh database each time: the first write of the page must stick
        cfg = CouchDBConfig(
            url=couchdb_cluster.urls,
            db=f"t{uuid.uuid4().hex[:10]}",
            user=couchdb_cluster.user,
            password_file=couchdb_cluster.password_file(tmp_path),
        )
        couch = Couch(cfg)
        assert couch.create_db()
        assert views.install(couch) == {"Monitor": "created", "gridxfer": "created"}
        assert views.install(couch) == {"Monitor": "unchanged", "gridxfer": "unchanged"}
        files = views.status_files()
        assert couch.get_attachment("_design/gridxfer", "status.css") == files["status.css"][0]


def _as_member(db: Database, tmp_path: Path, name: str) -> Path:
    """A CouchDB user with the role `gridxfer`, and a config file that logs in as it."""
    password = "member-" + uuid.uuid4().hex
    users = Couch(db.cfg.model_copy(update={"db": "_users"}))
    users.put(
        {
            "_id": f"org.couchdb.user:{name}",
            "name": name,
            "password": password,
            "roles": ["gridxfer"],
            "type": "user",
        }
    )
    secret = tmp_path / f"{name}.password"
    secret.write_text(password)
    secret.chmod(0o600)
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "couchdb": {
                    "url": db.cfg.primary,
                    "db": db.cfg.db,
                    "user": name,
                    "password_file": str(secret),
                    "retries": 1,
                    "backoff": 0.2,
                },
                "worker": {"command": "true", "idle_sleep": 0.5},
            }
        )
    )
    return cfg


@pytest.mark.slow
def test_workers_and_status_need_only_member_rights(couchdb3: CouchDB3, tmp_path: Path) -> None:
    db = make_database(couchdb3.url, tmp_path, couchdb3)
    member = _as_member(db, tmp_path, f"worker{uuid.uuid4().hex[:6]}")
    # CouchDB 3 makes a new database admin-only: a member is turned away until init says so.
    refused = gridxfer("status", "--json", config=member)
    assert refused.returncode == 4 and "not authorised" in refused.stderr
    db.write_config(couchdb={"member_roles": ["gridxfer"]})
    out = gridxfer("init", "--json", config=db.config_file, check=True)
    assert json.loads(out.stdout)["members_updated"] is True
    gridxfer(
        "tokens",
        "create",
        "n1",
        "--from",
        str(_exposures(tmp_path, "abc")),
        "--dest",
        "file:///tmp/none",
        config=member,
        check=True,
    )
    gridxfer("worker", "--night", "n1", "--idle-exit", config=member, check=True)
    report = json.loads(gridxfer("status", "n1", "--json", config=member, check=True).stdout)
    assert report["nights"][0]["states"]["done"] == 3
    # A member cannot change the design documents, and its broken writes are refused with a reason.
    denied = gridxfer("init", config=member)
    assert denied.returncode == 4 and "not authorised" in denied.stderr
    couch = Couch(load_config(member).couchdb)
    doc = couch.get("n1_a")
    with pytest.raises(Rejected, match="state must be one of"):
        couch.put({**doc, "state": "whatever"})


@pytest.mark.slow
def test_creating_a_database_tells_existing_from_refused_by_status_not_message(
    couchdb3: CouchDB3, tmp_path: Path
) -> None:
    # CI once ran on port 24120: a refusal whose message held "412" was taken for
    # "exists", and a member's `init` said it succeeded. The name here holds it too.
    db = make_database(couchdb3.url, tmp_path, couchdb3)
    assert db.couch.create_db() is False  # it exists: HTTP 412
    member = load_config(_as_member(db, tmp_path, f"worker{uuid.uuid4().hex[:6]}")).couchdb
    other = Couch(member.model_copy(update={"db": f"t412{uuid.uuid4().hex[:8]}exist"}))
    with pytest.raises(DatabaseError, match="not authorised") as refused:
        other.create_db()
    assert refused.value.status == 401


def _exposures(tmp_path: Path, names: str) -> Path:
    f = tmp_path / "exposures.yaml"
    f.write_text("".join(f"- {n}\n" for n in names))
    return f
