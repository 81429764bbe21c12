"""The CouchDB client: failover between coordinators, write outcomes, quorum reads."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from GRID_XFER.couch import Couch
from GRID_XFER.token import parse_spec
from tests.conftest import Database, make_database, wait_for
from tests.plugins.couchdb import CouchDB3

pytestmark = pytest.mark.slow  # starts servers or runs the CLI


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


def test_a_worker_whose_node_dies_moves_on_and_keeps_its_lease(
    couchdb_cluster: CouchDB3, tmp_path: Path
) -> None:
    db = make_database(couchdb_cluster.urls, tmp_path, couchdb_cluster)
    pool = db.pool(lease=60)
    pool.couch.outage_seconds = 600
    assert pool.couch.replicated
    pool.create("n1", [parse_spec("a")])
    # A view answers from one copy, which may not have the new token yet: claim when it does.
    lease = wait_for(lambda: pool.claim("n1"), timeout=30, what="the token in the todo view")
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


def test_a_coordinator_cut_off_in_mid_answer_is_failed_over_from(db: Database) -> None:
    """A node killed while it sends: the answer breaks off inside a chunk. Here a
    socket that does exactly that stands in for the dying node (the real one is
    in test_cluster's node-kill test, where timing decides whether it happens)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def cut_off() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b'Transfer-Encoding: chunked\r\n\r\n400\r\n{"rows": ['
            )
            conn.close()

    threading.Thread(target=cut_off, daemon=True).start()
    dying = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        cfg = db.cfg.model_copy(update={"url": [dying, db.cfg.primary], "retries": 0})
        couch = Couch(cfg, outage_seconds=600)
        couch._current = 0
        assert couch.all_docs(limit=1) is not None
        assert couch.url == db.cfg.primary and couch.recovered_at is None
    finally:
        listener.close()
