"""The token's transitions (GRID_XFER/token.py) as a state machine, in-process.

The transitions are pure functions without guards of their own: the callers pick
the tokens a transition applies to (a claim takes a ready todo, the reaper an
expired held token, the pollers staging and archiving tokens, a lease only its
own token or, for a result, its own token reaped back to todo). Hypothesis
drives one token through random sequences of exactly those calls, with random
time steps, and checks after every step what every view, poller and PiCaS
client relies on: the PiCaS fields match the state (the table in token.py), a
held token has a worker and a lease and nothing else has a lease, the history is
bounded and ends in the current state, attempts count claims as documented, done
carries no error, error carries its code, and :func:`token.validate` passes.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from GRID_XFER import token
from GRID_XFER.errors import Code, code_name

NIGHT = "20261201"
T0 = 1_790_000_000.0  # a realistic clock: PiCaS's lock and done are int(now) > 0
LEASE = 600.0
GRACE = 30.0
BACKOFF_BASE, BACKOFF_MAX = 30.0, 3600.0

# Fields no transition may touch: the work itself.
WORK = (
    "_id",
    "type",
    "token_set",
    "exposure",
    "files",
    "bytes_total",
    "source",
    "destination",
    "payload",
    "manifest",
    "max_attempts",
    "created",
)

steps = st.floats(min_value=0, max_value=7200, allow_nan=False, allow_infinity=False)
codes = st.sampled_from([c for c in Code if c != Code.OK])
names = st.from_regex(r"[a-z][a-z0-9_]{0,8}\.fits", fullmatch=True)
workers = st.builds(
    lambda host, pid, job: {"host": host, "pid": pid, "job_id": job, "id": f"{host}:{pid}"},
    st.sampled_from(["node1", "node2.example.org"]),
    st.integers(1, 99999),
    st.one_of(st.none(), st.just("77_2")),
)
# Each way a hand edit or an older tool can break a field a quarantine puts right.
CORRUPTIONS: dict[str, Any] = {
    "state": "paused",
    "lock": "1",
    "done": None,
    "output": 1.5,
    "attempts": -1,
    "scrub_count": "x",
    "lease_expires": "soon",
    "not_before": float("inf"),
    "history": "lost",
    "error": {"code": "22"},
}


@st.composite
def stage_requests(draw: st.DrawFn, now: float = T0) -> dict[str, Any]:
    urls = draw(st.lists(names.map(lambda n: f"root://tape//night/{n}"), min_size=1, max_size=3))
    return {
        "id": draw(st.from_regex(r"[a-f0-9]{8}", fullmatch=True)),
        "method": draw(st.sampled_from(["gfal2", "lta"])),
        "parts": [{"key": 0, "urls": urls, "t": now}],
        "requested": now,
        "deadline": now + 86400,
        "files": len(urls),
    }


class TokenMachine(RuleBasedStateMachine):
    """One token; the model tracks what the transitions must have done to it."""

    doc: dict[str, Any]

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.attempts = 0
        self.scrubs = 0
        self.holder: str | None = None  # the claim of a worker that may still record a result
        self.holder_incarnation: str | None = None
        self.incarnation = ""
        self.work: dict[str, Any] = {}

    # -- helpers -----------------------------------------------------------
    def tick(self, dt: float) -> float:
        self.now = round(self.now + dt, 3)
        return self.now

    @property
    def state(self) -> str:
        return str(self.doc["state"])

    def ours(self) -> bool:
        """The holder's token, as Lease._ours sees it."""
        return (
            self.state == "locked" and self.holder is not None and self.doc["claim"] == self.holder
        )

    def freed(self) -> bool:
        """The holder's token reaped back to todo, claimed by nobody since (Lease._freed)."""
        return (
            self.holder is not None
            and self.state == "todo"
            and not self.doc.get("claim")
            and self.doc["incarnation"] == self.holder_incarnation
        )

    def last_event(self) -> dict[str, Any]:
        event: dict[str, Any] = self.doc["history"][-1]
        return event

    def give_back(self) -> None:
        self.attempts = max(0, self.attempts - 1)

    def expect_error(self, code: int) -> None:
        assert self.state == "error"
        assert self.doc["error"]["code"] == code == self.doc["output"] == self.doc["exit_code"]
        assert self.doc["error"]["name"] == code_name(code)
        assert self.last_event()["event"] == "error" and self.last_event()["code"] == code

    # -- creation ----------------------------------------------------------
    @initialize(
        files=st.lists(names, max_size=3, unique=True),
        max_attempts=st.integers(1, 4),
    )
    def create(self, files: list[str], max_attempts: int) -> None:
        spec = token.parse_spec(
            {
                "exposure": "e1",
                "files": [{"name": n, "size": 10} for n in files],
                "max_attempts": max_attempts,
            }
        )
        self.doc = token.new_token(
            NIGHT, spec, source="file:///src", destination="file:///dst", now=self.now
        )
        token.validate(self.doc)
        assert self.state == "todo" and self.last_event()["event"] == "created"
        self.incarnation = self.doc["incarnation"]
        self.work = {k: copy.deepcopy(self.doc[k]) for k in WORK}

    # -- a worker ----------------------------------------------------------
    @precondition(lambda self: self.state == "todo")
    @rule(dt=steps, worker=workers)
    def claim(self, dt: float, worker: dict[str, Any]) -> None:
        # A worker claims once the backoff has passed (Pool.claim skips it until then).
        self.now = max(self.tick(dt), float(self.doc["not_before"]))
        assert token.ready(self.doc, self.now)
        before = self.doc.get("claim")
        token.claim(self.doc, worker, self.now, LEASE)
        self.attempts += 1
        self.holder, self.holder_incarnation = self.doc["claim"], self.doc["incarnation"]
        assert self.state == "locked" and self.doc["claim"] and self.doc["claim"] != before
        assert self.doc["worker"] == worker and self.doc["hostname"] == worker["host"]
        assert self.doc["lock"] == int(self.now) and self.doc["lease_expires"] == self.now + LEASE
        assert self.doc.get("job_id") == worker["job_id"] or not worker["job_id"]
        assert self.last_event()["attempt"] == self.attempts
        assert not token.is_expired(self.doc, self.now, GRACE)

    @precondition(lambda self: self.ours())
    @rule(dt=steps)
    def renew(self, dt: float) -> None:
        before = copy.deepcopy(self.doc)
        token.renew(self.doc, self.tick(dt), LEASE)
        assert self.doc["lease_expires"] == self.now + LEASE
        changed = {k for k in self.doc if self.doc[k] != before.get(k)}
        assert changed <= {"lease_expires", "updated"}
        assert not token.is_expired(self.doc, self.now, GRACE)

    @precondition(lambda self: self.ours() or self.freed())
    @rule(dt=steps)
    def finish(self, dt: float) -> None:
        token.finish(self.doc, self.tick(dt), results={"a.fits": {"bytes": 10}})
        self.holder = None
        assert self.state == "done" and self.doc["results"] == {"a.fits": {"bytes": 10}}
        assert self.doc["done"] == int(self.now) and self.doc["finished"] == self.now

    @precondition(lambda self: self.ours() or self.freed())
    @rule(dt=steps, code=codes, transient=st.booleans(), counted=st.booleans())
    def fail(self, dt: float, code: Code, transient: bool, counted: bool) -> None:
        token.fail(
            self.doc,
            code,
            "it broke",
            self.tick(dt),
            file="a.fits",
            transient=transient,
            backoff_base=BACKOFF_BASE,
            backoff_max=BACKOFF_MAX,
            count_attempt=counted,
        )
        self.holder = None
        if not counted:
            self.give_back()
        assert self.doc["error"]["file"] == "a.fits" and self.doc["output"] == code
        if transient and self.attempts < self.doc["max_attempts"]:
            delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, self.attempts - 1))
            assert self.state == "todo" and self.doc["not_before"] == self.now + delay
            assert self.last_event()["event"] == "retry"
        else:
            self.expect_error(code)

    @precondition(lambda self: self.ours())
    @rule(dt=steps)
    def release(self, dt: float) -> None:
        token.release(self.doc, self.tick(dt), "signal 15")
        self.holder = None
        self.give_back()
        assert self.state == "todo" and self.doc["worker"] is None and self.doc["claim"] is None
        assert self.last_event()["reason"] == "signal 15"

    # -- the reaper and the user -------------------------------------------
    @precondition(lambda self: self.state in token.HELD)
    @rule(dt=steps)
    def expire(self, dt: float) -> None:
        self.now = max(self.tick(dt), round(self.doc["lease_expires"] + GRACE + 1, 3))
        assert token.is_expired(self.doc, self.now, GRACE)
        token.expire(self.doc, self.now)
        if self.attempts >= self.doc["max_attempts"]:
            self.expect_error(Code.LEASE_EXPIRED)
        else:
            assert self.state == "todo" and self.doc["claim"] is None
            assert self.doc["error"]["code"] == Code.LEASE_EXPIRED
            assert self.last_event()["event"] == "reaped"

    @rule(dt=steps)
    def reset(self, dt: float) -> None:
        before = self.doc["incarnation"]
        token.reset(self.doc, self.tick(dt))
        self.attempts, self.scrubs, self.holder = 0, self.scrubs + 1, None
        self.incarnation = self.doc["incarnation"]
        assert self.incarnation != before
        assert self.state == "todo" and self.doc["error"] == [] and self.doc["output"] == 0
        assert self.doc["stage_request"] is None and "stage_rounds" not in self.doc

    @rule(dt=steps, field=st.sampled_from(sorted(CORRUPTIONS)))
    def quarantine(self, dt: float, field: str) -> None:
        """A hand edit breaks a field; the next command that reads it quarantines it."""
        bad = CORRUPTIONS[field]
        self.doc[field] = copy.deepcopy(bad)
        problem = token.problem(self.doc)
        assert problem is not None and problem.startswith(f"invalid token {self.doc['_id']}")
        token.quarantine(self.doc, problem, self.tick(dt))
        self.holder = None
        if field == "attempts":
            self.attempts = 0
        if field == "scrub_count":
            self.scrubs = 0
        self.expect_error(Code.INVALID_TOKEN)
        assert self.doc["quarantined"]["was"][field] == bad
        token.validate(self.doc)

    # -- tape --------------------------------------------------------------
    @precondition(lambda self: self.ours() or self.state == "todo")
    @rule(dt=steps, data=st.data())
    def to_staging(self, dt: float, data: st.DataObject) -> None:
        """From a worker that found the files on tape, or `stage` on a todo token."""
        request = data.draw(stage_requests(self.now))
        rounds = self.doc.get("stage_rounds", 0)
        if self.ours():
            self.give_back()
            self.holder = None
        token.to_staging(self.doc, request, self.tick(dt))
        assert self.state == "staging" and self.doc["stage_request"] == request
        assert self.doc["stage_rounds"] == rounds + 1 and self.doc["claim"] is None
        assert self.doc["worker"] is None and self.doc["lock"] == int(self.now)

    @precondition(lambda self: self.state == "staging")
    @rule(dt=steps)
    def staged(self, dt: float) -> None:
        token.staged(self.doc, self.tick(dt))
        assert self.state == "todo" and self.doc["stage_request"]["online"] == self.now
        assert token.ready(self.doc, self.now)

    @precondition(lambda self: self.state == "staging")
    @rule(dt=steps, code=st.sampled_from([Code.NOT_STAGED, Code.STAGING_TIMEOUT]))
    def staging_failed(self, dt: float, code: Code) -> None:
        token.staging_failed(self.doc, code, "recall failed", self.tick(dt), file="a.fits")
        self.expect_error(code)

    # Only from the holder's locked token: from a reaped one (Lease.archive accepts
    # that too) the lock stays 0; see test_archiving_a_reaped_token_keeps_the_picas_lock.
    @precondition(lambda self: self.ours())
    @rule(dt=steps, hold=st.floats(min_value=1, max_value=86400))
    def to_archiving(self, dt: float, hold: float) -> None:
        token.to_archiving(self.doc, self.tick(dt), hold, archive_deadline=self.now + hold)
        self.holder = None
        assert self.state == "archiving" and self.doc["lease_expires"] == self.now + hold
        assert self.doc["archiving_since"] == self.now

    @precondition(lambda self: self.state == "archiving")
    @rule(dt=steps)
    def archived(self, dt: float) -> None:
        token.archived(self.doc, self.tick(dt))
        assert self.state == "done" and self.doc["archived"] == self.now

    @precondition(lambda self: self.state == "archiving")
    @rule(dt=steps, code=st.sampled_from([Code.ARCHIVE_FAILED, Code.ARCHIVE_TIMEOUT]))
    def archive_failed(self, dt: float, code: Code) -> None:
        token.archive_failed(self.doc, code, "lost on tape", self.tick(dt), file="a.fits")
        self.expect_error(code)

    # -- what holds after every step ---------------------------------------
    @invariant()
    def valid(self) -> None:
        assert self.state in token.STATES
        token.validate(self.doc)
        assert token.problem(self.doc) is None

    @invariant()
    def picas_fields_match_the_state(self) -> None:
        lock, done, state = self.doc["lock"], self.doc["done"], self.state
        if state == "todo":
            assert (lock, done) == (0, 0)
        elif state in ("locked", "staging", "archiving"):
            assert lock > 0 and done == 0
        elif state == "done":
            assert lock > 0 and done > 0 and (lock, done) != (99, 99)
        else:
            assert (lock, done) == (token.PICAS_ERROR, token.PICAS_ERROR)

    @invariant()
    def a_held_token_has_a_worker_and_a_lease(self) -> None:
        if self.state in token.HELD:
            assert isinstance(self.doc["worker"], dict) and self.doc["worker"]["id"]
            assert self.doc["claim"] and self.doc["lease_expires"] > 0
        else:
            assert self.doc["lease_expires"] == 0

    @invariant()
    def history_is_bounded_and_ends_in_the_state(self) -> None:
        history = self.doc["history"]
        assert 1 <= len(history) <= token.HISTORY_LIMIT
        assert all(isinstance(h, dict) for h in history)
        assert history[-1]["state"] == self.state
        times = [h["t"] for h in history]
        assert times == sorted(times) and times[-1] <= self.now

    @invariant()
    def attempts_count_claims_not_given_back(self) -> None:
        assert self.doc["attempts"] == self.attempts
        assert 0 <= self.attempts <= self.doc["max_attempts"]
        assert self.doc["scrub_count"] == self.scrubs
        assert self.doc["incarnation"] == self.incarnation

    @invariant()
    def results_and_errors(self) -> None:
        error = self.doc["error"]  # no error: [] (PiCaS's default), else our one record
        if self.state == "done":
            assert error == [] and self.doc["output"] == 0
        if self.state == "error":
            assert isinstance(error, dict) and error["code"] == self.doc["output"] != 0
        if error != []:
            assert error["code"] in {int(c) for c in Code} and error["message"]
        assert token.error_code(self.doc) == (error["code"] if error else None)

    @invariant()
    def the_work_is_untouched(self) -> None:
        assert {k: self.doc[k] for k in WORK} == self.work
        assert self.doc["updated"] == self.now


TokenMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)
test_token_transitions = TokenMachine.TestCase


def test_history_keeps_the_last_events_only() -> None:
    doc = token.new_token(NIGHT, token.parse_spec("e1"), now=T0)
    worker = token.worker_identity(worker_id="w1")
    for i in range(token.HISTORY_LIMIT * 2):
        token.claim(doc, worker, T0 + i, LEASE)
        token.release(doc, T0 + i + 0.5, "shutdown")
    assert len(doc["history"]) == token.HISTORY_LIMIT
    assert doc["history"][-1]["event"] == "released" and doc["attempts"] == 0
    token.validate(doc)


def test_archiving_a_reaped_token_keeps_the_picas_lock() -> None:
    """A worker whose lease ran out finishes its copy: Lease.archive applies
    to_archiving to the token the reaper made todo (Lease._freed), as Lease.done
    applies finish, which does set the lock."""
    doc = token.new_token(NIGHT, token.parse_spec("e1"), now=T0)
    token.claim(doc, token.worker_identity(worker_id="w1"), T0, LEASE)
    token.expire(doc, T0 + LEASE + GRACE + 1)
    assert doc["state"] == "todo" and doc["claim"] is None  # what Lease._freed accepts
    token.to_archiving(doc, T0 + 2 * LEASE, 3600.0)
    assert doc["state"] == "archiving"
    assert doc["lock"] > 0 and doc["done"] == 0  # PiCaS: claimed, not finished
