"""The leader's lease (GRID_XFER/nightly/leader.py): one active service per database.

On pouchdb-server and CouchDB 3 (``db``), and on the real 3-node cluster, where two
writes from one revision can both be kept: contenders racing in threads, with a
node stopped, and real processes of which the active one is SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from GRID_XFER.config import CouchDBConfig
from GRID_XFER.couch import Couch
from GRID_XFER.nightly import leader as ld
from GRID_XFER.nightly.leader import Leadership
from GRID_XFER.token import is_token
from tests.conftest import REPO, Database, cli_env, make_database, wait_for
from tests.plugins.couchdb import CouchDB3


class Clock:
    """A clock the test moves; shared by contenders whose clocks agree."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- judge: the cluster rules on hand-made leaves ---------------------------------------
def leaf(*path: str, **fields: Any) -> dict[str, Any]:
    """A leaf whose revision and ancestors are ``path`` (newest first, "gen-hash")."""
    gen = int(path[0].split("-")[0])
    ids = [p.split("-")[1] for p in path]
    return {"_id": ld.DOC_ID, "_rev": path[0], "_revisions": {"start": gen, "ids": ids}, **fields}


NOW, MARGIN = 1000.0, 3.0


def claim(holder: str, *path: str, acquired: float = NOW) -> dict[str, Any]:
    return leaf(*path, holder=holder, acquired=acquired, renewals=0, expires=acquired + 30)


def test_a_claimant_alone_holds_it_and_removes_expired_and_released_leaves() -> None:
    mine = claim("a", "3-a", "2-x", "1-x")
    old = leaf("2-y", "1-x", holder="b", renewals=4, expires=NOW - MARGIN - 0.1)
    released = leaf("2-z", "1-x", holder="c", renewals=0, expires=NOW + 20, released=NOW)
    verdict = ld.judge([mine, old, released], "a", NOW, MARGIN)
    assert verdict.outcome == "own" and verdict.current is mine
    assert sorted(verdict.delete) == ["2-y", "2-z"]
    # Expired, but within the margin: its holder's clock may not say so yet.
    recent = leaf("2-y", "1-x", holder="b", renewals=4, expires=NOW - MARGIN + 0.1)
    assert ld.judge([mine, recent], "a", NOW, MARGIN).outcome == "lost"


def test_two_claims_from_one_revision_the_higher_waits_for_the_lower_to_step_aside() -> None:
    low, high = claim("a", "3-aaa", "2-x"), claim("b", "3-bbb", "2-x")
    assert ld.judge([low, high], "a", NOW, MARGIN).outcome == "lost"
    assert ld.judge([low, high], "a", NOW, MARGIN).delete == ["3-aaa"]
    assert ld.judge([low, high], "b", NOW, MARGIN).outcome == "wait"
    assert ld.judge([high], "b", NOW, MARGIN).outcome == "own"
    # A lower claim that renewed went ahead (its claimant decided it held it): step aside.
    ahead = leaf("4-aaa", "3-aaa", "2-x", holder="a", acquired=NOW, renewals=1, expires=NOW + 30)
    assert ld.judge([ahead, high], "b", NOW, MARGIN).outcome == "lost"


def test_an_owner_loses_to_a_write_on_its_revision_and_removes_stale_claims() -> None:
    renewal = leaf("5-o", "4-o", "3-o", holder="o", acquired=NOW - 60, renewals=2, expires=NOW + 30)
    # A standby that read an old revision (a lagging copy) claimed from it: it loses.
    stale = claim("s", "3-s", "2-o")
    verdict = ld.judge([renewal, stale], "o", NOW, MARGIN, owner_rev="4-o")
    assert (verdict.outcome, verdict.delete) == ("own", ["3-s"])
    # A standby that took over the revision the owner renewed from: the owner lost it.
    took = claim("s", "5-s", "4-o", "3-o")
    assert ld.judge([renewal, took], "o", NOW, MARGIN, owner_rev="4-o").outcome == "lost"
    # ...and that standby, seeing the owner's renewal, steps aside too: nobody holds it
    # rather than two.
    assert ld.judge([renewal, took], "s", NOW, MARGIN).outcome == "lost"
    # Someone deleted the lease under the owner.
    tomb = {"_id": ld.DOC_ID, "_rev": "5-d", "_deleted": True}
    tomb["_revisions"] = {"start": 5, "ids": ["d", "o", "o"]}
    assert ld.judge([renewal, tomb], "o", NOW, MARGIN, owner_rev="4-o").outcome == "lost"
    assert (
        ld.judge([renewal, tomb], "o", NOW, MARGIN, owner_rev="4-o", dropped=["4-o"]).outcome
        == "own"
    )


def test_two_holders_that_both_went_ahead_leave_the_senior_and_delete_nothing_of_it() -> None:
    senior = leaf("4-a", "3-a", holder="a", acquired=NOW - 50, renewals=3, expires=NOW + 30)
    junior = leaf("4-b", "3-b", holder="b", acquired=NOW - 20, renewals=1, expires=NOW + 30)
    a = ld.judge([senior, junior], "a", NOW, MARGIN, owner_rev="3-a")
    b = ld.judge([senior, junior], "b", NOW, MARGIN, owner_rev="3-b")
    assert (a.outcome, a.delete) == ("own", [])
    assert (b.outcome, b.delete) == ("lost", ["4-b"])


# -- one database copy and one cluster alike ---------------------------------------------
def test_one_holds_the_other_waits_for_release_or_expiry(db: Database) -> None:
    clock = Clock()
    a = Leadership(Couch(db.cfg), lease=30, clock=clock)
    b = Leadership(Couch(db.cfg), lease=30, clock=clock)
    assert a.holder != b.holder and a.margin == 3.0
    assert a.current() is None
    assert a.acquire() and a.held
    assert not b.acquire() and not b.held
    assert b.current() == a.current()
    now = b.current()
    assert now is not None and now["holder"] == a.holder and now["pid"] == os.getpid()
    assert now["expires"] == clock.now + 30
    clock.now += 10
    assert a.renew() and a.acquire()  # acquiring what we hold renews it
    assert a.current()["expires"] == clock.now + 30  # type: ignore[index]
    assert not b.acquire() and not b.renew()
    a.release()
    assert not a.held and a.current() is None and not a.renew()
    a.release()  # nothing to give up: no error
    assert b.acquire()
    assert not a.acquire()

    # b stops renewing: its lease runs out at clock.now + 30, and a takes over only
    # once it is expired by more than the margin.
    clock.now += 30 + 2.9
    assert not b.held  # b's own clock says it ran out: it has stopped acting
    assert not a.acquire()
    clock.now += 0.2
    assert a.acquire()
    assert not b.renew() and not b.held
    b.release()  # a lost lease: nothing to release, no error, a keeps it
    assert a.renew() and a.current()["holder"] == a.holder  # type: ignore[index]
    doc = db.couch.get(ld.DOC_ID)
    assert doc["type"] == "gridxfer-leader" and not is_token(doc)


def test_a_lease_that_ran_out_is_taken_anew_by_its_holder_if_nobody_took_it(
    db: Database,
) -> None:
    clock = Clock()
    a = Leadership(Couch(db.cfg), lease=10, clock=clock)
    assert a.acquire()
    clock.now += 100
    assert not a.held
    assert a.renew() and a.held


def _race(contenders: list[Leadership], act: Any = None) -> list[bool]:
    """Every contender calls ``act(contender)`` (acquire) at once, from its own thread."""
    barrier = threading.Barrier(len(contenders))
    results: list[Any] = [None] * len(contenders)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = (act or Leadership.acquire)(contenders[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(contenders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(isinstance(r, bool) for r in results), results
    return results


def _contenders(cfg: CouchDBConfig, n: int, **kw: Any) -> list[Leadership]:
    """Contenders each on its own connection, spread over a cluster's coordinators."""
    urls = list(cfg.url)
    out = []
    for i in range(n):
        k = i % len(urls)
        couch = Couch(cfg.model_copy(update={"url": urls[k:] + urls[:k]}))
        out.append(Leadership(couch, lease=30, **kw))
    return out


def _check_rounds(contenders: list[Leadership], rounds: int) -> None:
    """Race for the lease ROUNDS times, from a fresh document and from a released one."""
    for round_ in range(rounds):
        results = _race(contenders)
        assert results.count(True) == 1, f"round {round_}: {results}"
        winner = contenders[results.index(True)]
        assert [c.held for c in contenders] == results
        # Everyone tries again: only the winner holds it, and its renewal left one branch.
        assert _race(contenders) == results
        couch = winner.couch
        live = [x for x in couch.leaves(winner.doc_id) if not x.get("_deleted")]
        if couch.replicated:
            assert [x["holder"] for x in live] == [winner.holder]
        assert winner.current()["holder"] == winner.holder  # type: ignore[index]
        winner.release()


def test_contenders_racing_for_the_lease_one_wins(db: Database) -> None:
    _check_rounds(_contenders(db.cfg, 6), rounds=5)


# -- the cluster ----------------------------------------------------------------------
@pytest.fixture
def cluster_db(couchdb_cluster: CouchDB3, tmp_path: Path) -> Database:
    return make_database(couchdb_cluster.urls, tmp_path, couchdb_cluster)


@pytest.mark.slow
def test_on_a_cluster_exactly_one_of_many_racing_contenders_holds_the_lease(
    cluster_db: Database,
) -> None:
    assert cluster_db.couch.replicated
    _check_rounds(_contenders(cluster_db.cfg, 9), rounds=20)


@pytest.mark.slow
def test_on_a_cluster_with_a_node_stopped_exactly_one_holds_the_lease(
    couchdb_cluster: CouchDB3, cluster_db: Database
) -> None:
    contenders = _contenders(cluster_db.cfg, 9)
    try:
        couchdb_cluster.node_stop(2)
        _check_rounds(contenders, rounds=10)
    finally:
        couchdb_cluster.node_start(2)
    _check_rounds(contenders, rounds=3)


@pytest.mark.slow
def test_on_a_cluster_a_late_renewal_racing_a_takeover_leaves_one_holder(
    cluster_db: Database,
) -> None:
    """The holder renews a lease its own clock says ran out while standbys take it."""
    clock = Clock()
    contenders = _contenders(cluster_db.cfg, 6, clock=clock)
    holder = contenders[0]
    for round_ in range(10):
        for c in contenders:
            c.release()
        assert holder.acquire()
        clock.now += 30 + 3 + 1
        assert not holder.held
        results = _race(contenders, lambda c: c.renew() if c is holder else c.acquire())
        assert results.count(True) == 1, f"round {round_}: {results}"


# -- real processes -----------------------------------------------------------------------
def _spawn(db: Database, name: str, out: Path, lease: float, interval: float) -> Any:
    args = [str(db.config_file), name, str(lease), str(interval), str(out)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.leader_helper", *args],
        cwd=REPO,
        env=cli_env(db.config_file),
        stderr=subprocess.DEVNULL,
    )


def _acts(out: Path) -> list[tuple[str, float, float]]:
    if not out.exists():
        return []
    rows = [line.split() for line in out.read_text().splitlines()]
    return [(name, float(t), float(exp)) for name, t, exp in rows]


def _check_sigkill_handover(db: Database, tmp_path: Path) -> None:
    lease, interval = 3.0, 0.3
    out = tmp_path / "acts.txt"
    procs = {n: _spawn(db, n, out, lease, interval) for n in ("p1", "p2")}
    try:
        wait_for(lambda: len(_acts(out)) >= 5, timeout=60, what="a leader acting")
        active = _acts(out)[-1][0]
        standby = "p2" if active == "p1" else "p1"
        time.sleep(1)  # the standby stands by: only one acts
        assert {name for name, _, _ in _acts(out)} == {active}
        procs[active].send_signal(signal.SIGKILL)
        procs[active].wait()
        killed_at = time.time()
        wait_for(
            lambda: any(n == standby for n, _, _ in _acts(out)),
            timeout=lease + interval + 30,
            what="the standby taking over",
        )
        acts = _acts(out)
        last_expiry = max(exp for n, _, exp in acts if n == active)
        first = min(t for n, t, _ in acts if n == standby)
        # Never both: the standby acted only after the killed one's lease ran out (one
        # machine, one clock), and within one lease (plus margin) and one interval of it.
        assert first >= last_expiry, (first, last_expiry)
        assert first - killed_at <= lease + ld.default_margin(lease) + interval + 2.0
        wait_for(lambda: len([a for a in _acts(out) if a[0] == standby]) >= 3, timeout=30)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_a_sigkilled_leader_is_replaced_by_the_standby_within_one_lease(
    db: Database, tmp_path: Path
) -> None:
    _check_sigkill_handover(db, tmp_path)


@pytest.mark.slow
def test_on_a_cluster_a_sigkilled_leader_is_replaced_within_one_lease(
    cluster_db: Database, tmp_path: Path
) -> None:
    _check_sigkill_handover(cluster_db, tmp_path)
