"""Exactly-once claims on a real 3-node Apache CouchDB 3 cluster, with nodes failing.

Workers are real `gridxfer worker` processes spread over the three coordinators;
their command task appends the token id to a shared file, so a token run twice
shows there twice. A node is stopped (SIGTERM) or killed (SIGKILL) in the middle.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from GRID_XFER.errors import LeaseLost
from GRID_XFER.token import parse_spec
from tests.conftest import Database, cli_env, gridxfer, make_database, spawn_worker, wait_for
from tests.plugins.couchdb import CouchDB3

pytestmark = pytest.mark.slow  # starts servers or runs the CLI

NIGHT = "20261201"


@pytest.fixture
def cluster_db(couchdb_cluster: CouchDB3, tmp_path: Path) -> Database:
    return make_database(couchdb_cluster.urls, tmp_path, couchdb_cluster)


def _record_command(record: Path) -> str:
    return f"sh -c 'echo $GRIDXFER_TOKEN_ID >> {record}'"


def _workers(
    db: Database, n: int, record: Path, *extra: str, lease: float = 60
) -> list[subprocess.Popen[str]]:
    cfg = db.write_config(
        worker={
            "command": _record_command(record),
            "lease_seconds": lease,
            "idle_sleep": 0.5,
            "outage_seconds": 120,
        },
        couchdb={"timeout": 10},
    )
    procs = []
    for i in range(n):
        with open(db.tmp / f"worker-{i}.log", "w") as log:  # kept for a failure's message
            procs.append(
                spawn_worker(
                    cfg, "--night", NIGHT, "--idle-exit", *extra, stderr=log, env=cli_env(cfg)
                )
            )
    return procs


def _done(db: Database) -> int:
    return db.pool().counts(NIGHT).get(NIGHT, {}).get("done", {}).get("count", 0)


def _finish(db: Database, procs: list[subprocess.Popen[str]], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    for i, p in enumerate(procs):
        p.wait(timeout=max(1, deadline - time.monotonic()))
        log = db.tmp / f"worker-{i}.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        assert p.returncode == 0, f"worker {i} exited {p.returncode}:\n{tail}"


def _conflicted(db: Database) -> list[str]:
    ids = [d["_id"] for d in db.pool().select(NIGHT)]
    docs = db.couch.docs(ids, conflicts=True)
    return [i for i, d in docs.items() if d and d.get("_conflicts")]


def _settle(db: Database, timeout: float = 90) -> list[str]:
    """Sweep until no token has a second live branch (claims younger than
    branches.SETTLE_AGE are left to their claimants, so this can take that long)."""

    def clean() -> bool:
        gridxfer("tokens", "reap", "--night", NIGHT, config=db.config_file, check=True)
        return not _conflicted(db)

    with contextlib.suppress(AssertionError):  # the caller shows what is left
        wait_for(clean, timeout=timeout, every=3, what="no conflicted tokens")
    return _conflicted(db)


def _check_exactly_once(db: Database, record: Path, count: int) -> None:
    runs = Counter(record.read_text().split())
    twice = sorted(t for t, n in runs.items() if n > 1)
    assert twice == [], f"{len(twice)} tokens ran more than once: {twice[:10]}"
    assert len(runs) == count
    states = Counter(d["state"] for d in db.pool().select(NIGHT))
    assert states == {"done": count}, states


def _run_through_a_fault(
    db: Database, tmp_path: Path, fault: Any, repair: Any, count: int = 1500
) -> Path:
    """8 workers drain COUNT tokens; once 200 are done, ``fault`` strikes; ``repair``
    runs whatever happens. Returns the file the command task wrote each run to."""
    db.pool().create(NIGHT, [parse_spec(f"e{i:05d}") for i in range(count)])
    record = tmp_path / "runs.txt"
    record.touch()
    procs = _workers(db, 8, record)
    try:
        wait_for(lambda: _done(db) >= 200, timeout=300, every=1, what="200 tokens done")
        fault()
        _finish(db, procs)
    finally:
        repair()
        for p in procs:
            p.kill()
    return record


def test_a_node_stopped_and_restarted_costs_no_double_run(
    couchdb_cluster: CouchDB3, cluster_db: Database, tmp_path: Path
) -> None:
    def outage() -> None:
        couchdb_cluster.node_stop(2)
        time.sleep(20)
        couchdb_cluster.node_start(2)

    record = _run_through_a_fault(
        cluster_db, tmp_path, outage, lambda: couchdb_cluster.node_start(2)
    )
    _check_exactly_once(cluster_db, record, 1500)
    _check_status_never_final_when_stale(cluster_db, 1500)
    assert _settle(cluster_db) == []


def _check_status_never_final_when_stale(db: Database, count: int) -> None:
    """Right after a run, with a node just back, views can lag: status either has
    the true counts or says it is not settled."""

    def report() -> dict[str, Any]:
        out = gridxfer("status", NIGHT, "--json", config=db.config_file, check=True)
        return json.loads(out.stdout)

    seen_settled = False
    for _ in range(5):
        r = report()
        if r["settled"]:
            seen_settled = True
            assert r["nights"][0]["states"]["done"] == count, r["nights"][0]["states"]
    if not seen_settled:
        r = wait_for(
            lambda: (x := report())["settled"] and x, timeout=120, every=2, what="status settled"
        )
        assert r["nights"][0]["states"]["done"] == count


def test_a_node_killed_for_good_workers_fail_over(
    couchdb_cluster: CouchDB3, cluster_db: Database, tmp_path: Path
) -> None:
    record = _run_through_a_fault(
        cluster_db,
        tmp_path,
        lambda: couchdb_cluster.node_kill(3),
        lambda: couchdb_cluster.node_start(3),
    )
    _check_exactly_once(cluster_db, record, 1500)
    assert _settle(cluster_db) == []


def test_a_hot_set_over_many_rounds_runs_each_token_once(
    couchdb_cluster: CouchDB3, cluster_db: Database, tmp_path: Path
) -> None:
    """Small nights drained by 8 workers at once: the races that make 202s and conflicts."""
    record = tmp_path / "runs.txt"
    record.touch()
    total = 0
    for round_ in range(6):
        night = f"{NIGHT}{round_}"
        cluster_db.pool().create(night, [parse_spec(f"h{i:03d}") for i in range(50)])
        cfg = cluster_db.write_config(
            worker={
                "command": _record_command(record),
                "lease_seconds": 60,
                "idle_sleep": 0.5,
                "claim_window": 4,
            }
        )
        procs = [
            spawn_worker(cfg, "--night", night, "--idle-exit", stderr=subprocess.DEVNULL)
            for _ in range(8)
        ]
        _finish(cluster_db, procs, timeout=300)
        total += 50
    runs = Counter(record.read_text().split())
    twice = sorted(t for t, n in runs.items() if n > 1)
    assert twice == [] and len(runs) == total, (
        f"{len(twice)} tokens ran more than once: {twice[:10]}"
    )


def test_a_conflicted_token_is_listed_and_settled_as_the_branch_that_is_the_token(
    cluster_db: Database,
) -> None:
    """Two branches planted the way replication would (new_edits=false): CouchDB shows
    the todo one (higher hash), but the work is done; list, status and the sweeper agree."""
    pool = cluster_db.pool()
    pool.create(NIGHT, [parse_spec("a")])
    doc = pool.get(f"{NIGHT}_a")
    parent = doc["_rev"].split("-")[1]
    now = time.time()
    finished = {**doc, "state": "done", "lock": int(now), "done": int(now)}
    branches_ = [
        {
            **finished,
            "_rev": "2-" + "a" * 32,
            "_revisions": {"start": 2, "ids": ["a" * 32, parent]},
        },
        {**doc, "_rev": "2-" + "f" * 32, "_revisions": {"start": 2, "ids": ["f" * 32, parent]}},
    ]
    cluster_db.couch.request("POST", "_bulk_docs", body={"docs": branches_, "new_edits": False})
    assert wait_for(lambda: cluster_db.couch.get(doc["_id"], conflicts=True).get("_conflicts"))
    assert cluster_db.couch.get(doc["_id"])["state"] == "todo"  # CouchDB's winner
    listed = json.loads(
        gridxfer(
            "tokens", "list", NIGHT, "--json", config=cluster_db.config_file, check=True
        ).stdout
    )
    assert [d["state"] for d in listed] == ["done"]
    report = json.loads(
        gridxfer("status", NIGHT, "--json", config=cluster_db.config_file, check=True).stdout
    )
    assert report["settled"] is False  # the view counts the todo branch
    out = json.loads(
        gridxfer("tokens", "reap", "--json", config=cluster_db.config_file, check=True).stdout
    )
    assert out["conflicts_settled"] == [doc["_id"]]
    assert cluster_db.couch.get(doc["_id"])["state"] == "done"
    assert _conflicted(cluster_db) == []
    report = json.loads(
        gridxfer("status", NIGHT, "--json", config=cluster_db.config_file, check=True).stdout
    )
    assert report["settled"] and report["nights"][0]["states"]["done"] == 1


def test_an_owner_on_a_cluster_lets_a_reset_or_a_delete_take_its_token(
    cluster_db: Database,
) -> None:
    pool = cluster_db.pool(lease=60)
    pool.create(NIGHT, [parse_spec("a"), parse_spec("b")])
    # (a view answers from one copy, which may not have the new tokens yet)
    first = wait_for(lambda: pool.claim(NIGHT), timeout=30, what="a token in the todo view")
    assert pool.reset(NIGHT, ["locked"], force=True) == [first.id]
    with pytest.raises(LeaseLost):
        first.heartbeat()
    first.abandon()
    assert pool.get(first.id)["state"] == "todo" and _conflicted(cluster_db) == []

    second = wait_for(lambda: pool.claim(NIGHT), timeout=30, what="a token in the todo view")
    doc = cluster_db.couch.get(second.id)
    cluster_db.couch.delete(second.id, doc["_rev"])  # `tokens delete` while it is held
    with pytest.raises(LeaseLost):
        second.heartbeat()
    second.abandon()
    assert cluster_db.couch.get_or_none(second.id) is None


def test_an_owner_on_a_cluster_finishing_after_a_reset_drops_its_result(
    cluster_db: Database,
) -> None:
    """The result goes only to the incarnation claimed: a reset is a new one."""
    pool = cluster_db.pool(lease=60)
    pool.create(NIGHT, [parse_spec("c")])
    lease = wait_for(lambda: pool.claim(NIGHT), timeout=30, what="a token in the todo view")
    assert pool.reset(NIGHT, ["locked"], force=True) == [lease.id]
    with pytest.raises(LeaseLost):
        lease.done()
    lease.abandon()
    doc = pool.get(lease.id)
    assert doc["state"] == "todo" and doc["history"][-1]["event"] == "reset"
    assert _conflicted(cluster_db) == []
