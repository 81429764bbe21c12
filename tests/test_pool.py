"""The token pool against a real CouchDB-API server."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from GRID_XFER import token as tk
from GRID_XFER.errors import Code, InvalidToken, LeaseLost
from GRID_XFER.token import parse_spec
from tests.conftest import Database

pytestmark = pytest.mark.slow  # starts servers or runs the CLI


def specs(n: int, prefix: str = "e") -> list[tk.ExposureSpec]:
    return [parse_spec(f"{prefix}{i:05d}") for i in range(n)]


def test_create_twice_adds_nothing_and_ids_are_deterministic(db: Database) -> None:
    pool = db.pool()
    first = pool.create("20261101", specs(1200))  # spans several _bulk_docs batches
    second = pool.create("20261101", specs(1200))
    assert len(first.created) == 1200 and not first.unchanged
    assert not second.created and len(second.unchanged) == 1200
    assert pool.get("20261101_e00042")["exposure"] == "e00042"
    assert pool.counts("20261101")["20261101"]["todo"]["count"] == 1200
    listed = [d["_id"] for d in pool.select("20261101")]  # pages past 1000 rows
    assert len(listed) == len(set(listed)) == 1200


def test_create_rejects_duplicate_and_invalid_exposures(db: Database) -> None:
    pool = db.pool()
    with pytest.raises(InvalidToken, match="listed twice"):
        pool.create("20261101", [parse_spec("a"), parse_spec("a")])
    with pytest.raises(InvalidToken, match="invalid exposure entry 3"):
        parse_spec({"exposure": "../etc"}, 3)
    with pytest.raises(InvalidToken, match="night"):
        pool.create("bad night", [parse_spec("a")])
    with pytest.raises(InvalidToken, match="must be relative"):
        parse_spec({"exposure": "x", "files": [{"name": "/etc/passwd"}]})


def test_create_updates_changed_todo_token_but_leaves_done_alone(db: Database) -> None:
    pool = db.pool()
    one = {"exposure": "a", "files": [{"name": "f1", "size": 1}]}
    two = {"exposure": "b", "files": [{"name": "f1", "size": 1}]}
    pool.create("n1", [parse_spec(one), parse_spec(two)])
    lease = pool.claim("n1")
    assert lease is not None
    lease.done()
    done_id = lease.id
    grown = [
        parse_spec({**x, "files": x["files"] + [{"name": "f2", "size": 2}]}) for x in (one, two)
    ]
    report = pool.create("n1", grown)
    assert report.skipped == [done_id]
    (updated,) = report.updated
    assert [f["name"] for f in pool.get(updated)["files"]] == ["f1", "f2"]
    assert [f["name"] for f in pool.get(done_id)["files"]] == ["f1"]


def test_claim_sets_lease_and_picas_fields(db: Database) -> None:
    pool = db.pool(lease=60)
    pool.create("n1", specs(3))
    lease = pool.claim("n1")
    assert lease is not None
    doc = pool.get(lease.id)
    assert doc["state"] == "locked" and doc["lock"] > 0 and doc["done"] == 0
    assert doc["lease_expires"] > time.time() + 50
    assert doc["worker"]["id"] == pool.worker["id"] and doc["hostname"]
    assert doc["attempts"] == 1
    lease.done()
    doc = pool.get(lease.id)
    assert doc["state"] == "done" and doc["done"] >= doc["lock"] > 0 and doc["output"] == 0


def test_claim_returns_none_for_other_night_or_empty(db: Database) -> None:
    pool = db.pool()
    pool.create("n1", specs(1))
    assert pool.claim("n2") is None
    assert pool.claim("n1") is not None
    assert pool.claim("n1") is None


def test_concurrent_claims_never_share_a_token(db: Database) -> None:
    db.pool().create("n1", specs(300))
    claimed: list[str] = []
    lock = threading.Lock()

    def drain() -> None:
        pool = db.pool(window=16)
        while (lease := pool.claim("n1")) is not None:
            with lock:
                claimed.append(lease.id)
            lease.done()

    threads = [threading.Thread(target=drain) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dupes = [i for i, n in Counter(claimed).items() if n > 1]
    assert dupes == [] and len(claimed) == 300


def test_stale_revision_gets_409_and_lease_knows_it_lost(db: Database) -> None:
    pool = db.pool(lease=60)
    pool.create("n1", specs(1))
    lease = pool.claim("n1")
    assert lease is not None
    other = db.pool()
    doc = other.get(lease.id)
    tk.reset(doc, time.time())  # a user resets it under the worker
    other.couch.put(doc)
    with pytest.raises(LeaseLost, match="no longer ours"):
        lease.heartbeat()


def test_heartbeat_survives_own_concurrent_update(db: Database) -> None:
    pool = db.pool(lease=60)
    pool.create("n1", specs(1))
    lease = pool.claim("n1")
    assert lease is not None
    stale = dict(lease.doc)
    lease.update(progress=1)
    lease.doc = stale  # as if a save raced: our revision is out of date
    lease.heartbeat()  # re-reads, sees the token is still ours, saves
    assert pool.get(lease.id)["progress"] == 1


class FakeClock:
    """Time that moves only when the test says so: no race with a loaded machine."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_transient_failure_backs_off_then_errors_after_max_attempts(db: Database) -> None:
    clock = FakeClock()
    pool = db.pool(max_attempts=2, backoff_base=0.5, clock=clock)
    pool.create("n1", specs(1))
    lease = pool.claim("n1")
    assert lease is not None
    lease.fail(Code.TRANSFER_FAILED, "connection reset", file="a.fits", transient=True)
    doc = pool.get(lease.id)
    assert doc["state"] == "todo" and doc["not_before"] > clock()
    assert pool.claim("n1") is None  # still backing off
    clock.advance(0.6)
    lease = pool.claim("n1")
    assert lease is not None and lease.doc["attempts"] == 2
    lease.fail(Code.TRANSFER_FAILED, "connection reset again", transient=True)
    doc = pool.get(lease.id)
    assert doc["state"] == "error" and doc["output"] == 21
    assert doc["error"]["name"] == "TRANSFER_FAILED" and doc["lock"] == doc["done"] == 99


def test_permanent_failure_goes_to_error_at_once(db: Database) -> None:
    pool = db.pool(max_attempts=5)
    pool.create("n1", specs(1))
    lease = pool.claim("n1")
    assert lease is not None
    lease.fail(Code.CHECKSUM_MISMATCH, "sha256 differs", file="x.fits")
    doc = pool.get(lease.id)
    assert (doc["state"], doc["output"], doc["error"]["file"]) == ("error", 30, "x.fits")


def test_release_does_not_count_an_attempt(db: Database) -> None:
    pool = db.pool()
    pool.create("n1", specs(1))
    lease = pool.claim("n1")
    assert lease is not None
    lease.release("signal 15")
    doc = pool.get(lease.id)
    assert doc["state"] == "todo" and doc["attempts"] == 0 and doc["lock"] == 0


def test_reap_returns_expired_lease_then_errors_with_90(db: Database) -> None:
    clock = FakeClock()
    pool = db.pool(lease=0.3, max_attempts=2, clock=clock)
    pool.create("n1", specs(1))
    assert pool.claim("n1") is not None
    assert pool.reap() == []  # not expired yet
    clock.advance(0.4)
    (reaped,) = pool.reap()
    assert pool.get(reaped)["state"] == "todo"
    assert pool.claim("n1") is not None
    clock.advance(0.4)
    assert pool.reap() == [reaped]
    doc = pool.get(reaped)
    assert doc["state"] == "error" and doc["error"]["code"] == Code.LEASE_EXPIRED


def test_late_finish_after_reap_is_kept(db: Database) -> None:
    pool = db.pool(lease=0.2)
    pool.create("n1", specs(1))
    lease = pool.claim("n1")
    assert lease is not None
    time.sleep(0.3)
    db.pool().reap()
    lease.done()  # the work was done; nobody else took the token
    assert db.pool().get(lease.id)["state"] == "done"


def test_reset_while_held_drops_the_holders_result_and_the_work_is_done_anew(db: Database) -> None:
    pool = db.pool()
    pool.create("n1", specs(1))
    lease = pool.claim("n1")
    assert lease is not None
    before = pool.get(lease.id)["incarnation"]
    assert pool.reset("n1", states=["locked"], force=True) == [lease.id]
    with pytest.raises(LeaseLost):
        lease.done()
    doc = pool.get(lease.id)
    assert doc["state"] == "todo" and doc["attempts"] == 0 and doc["incarnation"] != before
    assert doc["history"][-1]["event"] == "reset"
    again = db.pool().claim("n1")
    assert again is not None and again.id == lease.id  # claimable: the work is redone


def test_delete_and_create_again_while_held_drops_the_holders_result(db: Database) -> None:
    pool = db.pool()
    pool.create("n1", [parse_spec({"exposure": "a", "destination": "file:///old"})])
    lease = pool.claim("n1")
    assert lease is not None
    pool.delete("n1")
    pool.create("n1", [parse_spec({"exposure": "a", "destination": "file:///new"})])
    with pytest.raises(LeaseLost):
        lease.done()
    doc = pool.get(lease.id)
    assert doc["state"] == "todo" and doc["destination"] == "file:///new"
    assert [h["event"] for h in doc["history"]] == ["created"] and doc["attempts"] == 0


def test_result_for_a_token_deleted_meanwhile_is_dropped(db: Database) -> None:
    pool = db.pool()
    pool.create("n1", specs(1))
    lease = pool.claim("n1")
    assert lease is not None
    pool.delete("n1")
    lease.attach("worker-1.log", b"a log")
    with pytest.raises(LeaseLost):
        lease.done()
    assert pool.couch.get_or_none(lease.id) is None


def test_catch_up_of_a_reaped_token_makes_the_late_result_of_the_old_inputs_dropped(
    db: Database,
) -> None:
    pool = db.pool(lease=0.2)
    pool.create("n1", [parse_spec({"exposure": "a", "files": [{"name": "x", "size": 1}]})])
    lease = pool.claim("n1")
    assert lease is not None
    time.sleep(0.3)
    assert pool.reap() == [lease.id]
    report = pool.create(
        "n1",
        [
            parse_spec(
                {"exposure": "a", "files": [{"name": "x", "size": 1}, {"name": "late", "size": 2}]}
            )
        ],
    )
    assert report.updated == [lease.id]
    with pytest.raises(LeaseLost):
        lease.done()  # it moved the old file list only
    assert pool.get(lease.id)["state"] == "todo"


def test_reset_by_code_and_state(db: Database) -> None:
    pool = db.pool()
    pool.create("n1", specs(3))
    for code in (Code.CHECKSUM_MISMATCH, Code.SOURCE_MISSING):
        lease = pool.claim("n1")
        assert lease is not None
        lease.fail(code, "boom")
    assert len(pool.reset("n1", codes=[30])) == 1
    counts = pool.counts("n1")["n1"]
    assert counts["todo"]["count"] == 2 and counts["error"]["count"] == 1
    assert len(pool.reset("n1")) == 1
    assert pool.counts("n1")["n1"]["todo"]["count"] == 3
    assert all(
        d["scrub_count"] == 1
        for d in pool.select("n1")
        if d["attempts"] == 0 and d["history"][-1]["event"] == "reset"
    )


def test_invalid_token_in_pool_is_put_in_error_2(db: Database) -> None:
    with db.without_validation():
        db.couch.put(
            {
                "_id": "n1_junk",
                "type": "token",
                "token_set": "n1",
                "state": "todo",
                "lock": 0,
                "done": 0,
                "not_before": 0,
            }
        )
    pool = db.pool()
    assert pool.claim("n1") is None
    doc = pool.get("n1_junk")
    assert doc["state"] == "error" and doc["output"] == Code.INVALID_TOKEN
    assert "n1_junk" in doc["error"]["message"]


def test_delete_night_removes_only_that_night(db: Database) -> None:
    pool = db.pool()
    pool.create("n1", specs(5))
    pool.create("n2", specs(2))
    assert len(pool.delete("n1")) == 5
    assert set(pool.counts()) == {"n2"}


def test_reap_times_out_staging_tokens_nobody_polls(db: Database) -> None:
    clock = FakeClock()
    pool = db.pool(lease=10, clock=clock)
    pool.create("n1", specs(2))
    for _ in range(2):
        lease = pool.claim("n1")
        assert lease is not None
        lease.stage(
            {
                "method": "gfal2",
                "id": "req-1",
                "parts": [],
                "requested": clock(),
                "deadline": clock() + 60,
            }
        )
    clock.advance(65)  # past the deadline, but a poller still has a lease's time to act
    assert pool.reap() == []
    clock.advance(10)
    reaped = pool.reap("n1")
    assert len(reaped) == 2
    for token_id in reaped:
        doc = pool.get(token_id)
        assert doc["state"] == "error" and doc["error"]["code"] == Code.STAGING_TIMEOUT
        assert "req-1" in doc["error"]["message"]


def test_no_reaping_within_a_lease_of_riding_out_an_outage(db: Database) -> None:
    clock = FakeClock()
    pool = db.pool(lease=10, clock=clock)
    pool.create("n1", specs(1))
    assert pool.claim("n1") is not None
    clock.advance(12)  # expired, grace (1 s) too: its worker was cut off by the same outage
    pool.couch.recovered_at = time.monotonic()  # as Couch records after a retried call
    assert pool.reap() == []
    pool.couch.recovered_at = time.monotonic() - 11  # a lease later: it really is lost
    assert len(pool.reap()) == 1


def test_reset_leaves_live_leases_alone_unless_forced(db: Database) -> None:
    clock = FakeClock()
    pool = db.pool(lease=10, clock=clock)
    pool.create("n1", specs(2))
    held = pool.claim("n1")
    assert held is not None
    assert pool.reset("n1", states=["locked", "todo"]) == sorted(
        set(d["_id"] for d in pool.select("n1")) - {held.id}
    )
    assert pool.get(held.id)["state"] == "locked"  # its worker still runs it
    clock.advance(11)  # lease expired: fair game
    assert held.id in pool.reset("n1", states=["locked"])
    again = pool.claim("n1")
    assert again is not None
    assert pool.reset("n1", states=["locked"], force=True) == [again.id]
