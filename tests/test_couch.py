"""The CouchDB client: failover between coordinators, write outcomes, quorum reads."""
from __future__ import annotations

import socket
from pathlib import Path

from GRID_XFER.couch import Couch
from GRID_XFER.token import parse_spec
from tests.conftest import Database, make_database
from tests.plugins.couchdb import CouchDB3


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_dead_coordinator_is_skipped_at_once(db: Database) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    cfg = db.cfg.model_copy(update={"url": [dead, db.cfg.primary], "retries": 0})
    couch = Couch(cfg, outage_seconds=600)
    couch._current = 0  # start at the dead one (normally a random coordinator)
    assert couch.db_exists()
    assert couch.url == db.cfg.primary
    assert couch.recovered_at is None  # failing over is no outage: nothing waited


def test_writes_say_whether_a_quorum_took_them(db: Database) -> None:
    write = db.couch.put({"_id": "x", "v": 1})
    assert write.quorum and write.rev.startswith("1-")
    assert db.couch.cluster()["n"] == 1 and not db.couch.replicated
    assert [leaf["_rev"] for leaf in db.couch.leaves("x")] == [write.rev]
    assert db.couch.docs(["x", "missing"]) == {"x": db.couch.get("x"), "missing": None}


def test_a_worker_whose_node_dies_moves_on_and_keeps_its_lease(couchdb_cluster: CouchDB3,
                                                                tmp_path: Path) -> None:
    db = make_database(couchdb_cluster.urls, tmp_path, couchdb_cluster)
    pool = db.pool(lease=60)
    pool.couch.outage_seconds = 600
    assert pool.couch.replicated
    pool.create("n1", [parse_spec("a")])
    lease = pool.claim("n1")
    assert lease is not None
    pool.couch._current = 2  # talking to node 3 ...
    couchdb_cluster.node_kill(3)  # ... which dies
    try:
        lease.heartbeat()
        assert pool.couch.url != couchdb_cluster.urls[2]
        assert pool.couch.recovered_at is None  # it did not sit out an outage
        lease.done()
    finally:
        couchdb_cluster.node_start(3)
    doc = pool.get("n1_a")
    assert doc["state"] == "done" and doc["attempts"] == 1
