"""Design documents from tokens/views: install, idempotence, PiCaS Monitor semantics."""
from __future__ import annotations

from GRID_XFER import views
from GRID_XFER.errors import Code
from GRID_XFER.token import parse_spec
from tests.conftest import Database


def test_design_docs_built_from_js_sources() -> None:
    docs = views.design_docs()
    assert set(docs) == {"Monitor", "gridxfer"}
    assert set(docs["Monitor"]["views"]) == {"todo", "locked", "done", "error", "overview_total"}
    assert docs["gridxfer"]["views"]["by_state"]["reduce"] == "_stats"
    assert all(v["map"].startswith("function") for d in docs.values() for v in d["views"].values())


def test_install_is_idempotent_and_updates_only_changed(db: Database) -> None:
    assert views.install(db.couch) == {"Monitor": "unchanged", "gridxfer": "unchanged"}
    ddoc = db.couch.get("_design/gridxfer")
    ddoc["views"]["todo"]["map"] = "function (doc) {}"
    db.couch.put(ddoc)
    assert views.install(db.couch) == {"Monitor": "unchanged", "gridxfer": "updated"}
    assert db.couch.get("_design/gridxfer")["views"] == views.design_docs()["gridxfer"]["views"]


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
        return {r["id"] for r in db.couch.view("Monitor", view, reduce=False)["rows"]} \
            if view == "overview_total" else \
            {r["id"] for r in db.couch.view("Monitor", view)["rows"]}

    assert ids("done") == {done.id}
    assert ids("error") == {failed.id}
    assert ids("locked") == {held.id}
    assert len(ids("todo")) == 1
    totals = {r["key"]: r["value"] for r in db.couch.view("Monitor", "overview_total",
                                                          group=True)["rows"]}
    assert totals == {"todo": 1, "locked": 1, "done": 1, "error": 1}
