"""What can happen to a token: its states and the pure transitions between them.

Transitions are pure functions on the document dict, so the pool can apply them
to whatever revision it just read and save with that ``_rev``. Every transition
keeps the PiCaS fields (``lock``, ``done``, ``output``, ``hostname``,
``scrub_count``) consistent with ``state``, so PiCaS's Monitor views and
``Task.has_error()`` read our tokens right:

    state      lock            done        output
    todo       0               0           0 (or last code while retrying)
    locked     claim time      0
    staging    request time    0
    archiving  claim time      0
    done       claim time      finish time 0
    error      99              99          code  (PiCaS convention)

The document itself (its fields, ids and validation) is :mod:`GRID_XFER.token`.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from typing import Any, Literal

from GRID_XFER.errors import Code, code_name

STATES = ("todo", "locked", "staging", "archiving", "done", "error")
# Tuples, not sets: `doc.get("state") in HELD` must not raise for a state that is a
# list or a mapping (a malformed token), as a set's hashing would.
CLAIMABLE = ("todo",)
HELD = ("locked", "archiving")
PICAS_ERROR = 99
HISTORY_LIMIT = 20

State = Literal["todo", "locked", "staging", "archiving", "done", "error"]


def add_event(doc: dict[str, Any], now: float, event: str, **extra: Any) -> None:
    """Append to the token's bounded history, which ``tokens show`` prints."""
    entry = {"t": round(now, 3), "event": event, "state": doc["state"], **extra}
    history = doc.setdefault("history", [])
    history.append(entry)
    del history[:-HISTORY_LIMIT]
    doc["updated"] = now


def new_incarnation() -> str:
    """Names one life of a token: creation, and every fresh start (``reset``).

    A worker records its result only on the incarnation it claimed, so a token
    reset, or deleted and created again, while a worker holds it is done anew,
    not taken over by the older work (docs/tokens.md, "Edits while a worker
    holds a token").
    """
    return uuid.uuid4().hex


def worker_identity(job_id: str | None = None, worker_id: str | None = None) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "job_id": job_id,
        "id": worker_id or f"{socket.gethostname()}:{os.getpid()}",
    }


# -- reading the state -----------------------------------------------------------
def shown_state(doc: dict[str, Any]) -> str:
    """The state a token is listed and counted in: an unknown one counts as ``error``
    (the views do the same), since it is quarantined to error 2 when reaped."""
    state = doc.get("state")
    return state if isinstance(state, str) and state in STATES else "error"


def error_code(doc: dict[str, Any]) -> int | None:
    """The code a token is listed and counted with, as the ``errors`` view has it: an
    error token without a valid record, or in an unknown state, counts as 2."""
    code = _recorded_code(doc.get("error"))
    if shown_state(doc) == "error" and (doc.get("state") != "error" or code is None):
        return int(Code.INVALID_TOKEN)
    return None if code is None else int(code)


def _recorded_code(error: Any) -> int | float | None:
    """The error record's code if it is a finite number (not a bool), else None.

    Ours is one record; PiCaS keeps a list (``Task.error()`` appends one without a
    code): the last entry of a list counts."""
    if isinstance(error, list):
        error = error[-1] if error else None
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, (int, float)) and not isinstance(code, bool) and math.isfinite(code):
        return code
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def ready(doc: dict[str, Any], now: float) -> bool:
    """A todo token whose backoff has passed, or whose ``not_before`` is no number
    (a claim then quarantines it, rather than leave it unclaimable for ever)."""
    not_before = _number(doc.get("not_before", 0))
    return doc.get("state") in CLAIMABLE and (not_before is None or not_before <= now)


def is_expired(doc: dict[str, Any], now: float, grace: float = 0.0) -> bool:
    """Held, and the lease ran out more than ``grace`` seconds ago (clock slack), or
    held without a lease at all: no live worker holds such a token."""
    lease = _number(doc.get("lease_expires"))
    return doc.get("state") in HELD and (lease is None or lease <= 0 or lease < now - grace)


# -- transitions -----------------------------------------------------------------
def claim(doc: dict[str, Any], worker: dict[str, Any], now: float, lease: float) -> None:
    # ``claim`` names this claim alone: on a cluster it tells the claimant's branch
    # from every other (GRID_XFER/branches.py).
    # ``claimed_from`` is the generation claimed from: a branch that grew past
    # generation claimed_from + 1 was worked on after its claim.
    parent = str(doc.get("_rev") or "0-").split("-")[0]
    doc.update(
        state="locked",
        lock=int(now),
        done=0,
        hostname=worker["host"],
        worker=worker,
        lease_expires=now + lease,
        claimed=now,
        claim=uuid.uuid4().hex,
        claimed_from=int(parent) if parent.isdigit() else 0,
    )
    doc["attempts"] = doc.get("attempts", 0) + 1
    if worker.get("job_id"):
        doc["job_id"] = worker["job_id"]
    add_event(doc, now, "claimed", worker=worker["id"], attempt=doc["attempts"])


def renew(doc: dict[str, Any], now: float, lease: float) -> None:
    doc["lease_expires"] = now + lease
    doc["updated"] = now


def finish(doc: dict[str, Any], now: float, **fields: Any) -> None:
    doc.update(fields)
    doc.update(
        state="done",
        done=int(now),
        output=0,
        exit_code=0,
        error=[],  # PiCaS's own default: its Task.error() appends to it
        lease_expires=0,
        not_before=0,
        finished=now,
    )
    if not doc.get("lock"):
        doc["lock"] = int(now)
    add_event(doc, now, "done")


def _error_record(code: int, message: str, file: str | None, now: float) -> dict[str, Any]:
    return {
        "code": int(code),
        "name": code_name(code),
        "message": message[:2000],
        "file": file,
        "time": now,
    }


def fail(
    doc: dict[str, Any],
    code: int,
    message: str,
    now: float,
    *,
    file: str | None = None,
    transient: bool = False,
    backoff_base: float = 30.0,
    backoff_max: float = 3600.0,
    count_attempt: bool = True,
) -> None:
    """Record a failure; retry later (todo + not_before) or end in error."""
    if not count_attempt:
        doc["attempts"] = max(0, doc.get("attempts", 0) - 1)
    doc["error"] = _error_record(code, message, file, now)
    doc["output"] = int(code)
    doc["exit_code"] = int(code)
    doc["lease_expires"] = 0
    attempts, limit = doc.get("attempts", 0), doc.get("max_attempts", 1)
    if transient and attempts < limit:
        delay = min(backoff_max, backoff_base * 2 ** max(0, attempts - 1))
        doc.update(state="todo", lock=0, done=0, not_before=now + delay)
        add_event(doc, now, "retry", code=int(code), after=round(delay, 1))
    else:
        doc.update(state="error", lock=PICAS_ERROR, done=PICAS_ERROR, not_before=0)
        add_event(doc, now, "error", code=int(code))


def release(doc: dict[str, Any], now: float, reason: str) -> None:
    """Back to todo without counting the attempt (signal, shutdown)."""
    doc["attempts"] = max(0, doc.get("attempts", 0) - 1)
    doc.update(state="todo", lock=0, done=0, lease_expires=0, worker=None, claim=None)
    add_event(doc, now, "released", reason=reason)


# What a quarantine sets; the values they had are kept under ``quarantined.was``.
_QUARANTINE_SETS = (
    "state",
    "lock",
    "done",
    "output",
    "exit_code",
    "error",
    "lease_expires",
    "not_before",
    "claim",
    "attempts",
    "scrub_count",
    "updated",
    "quarantined",
)


def quarantine(doc: dict[str, Any], message: str, now: float) -> None:
    """A malformed token (edited by hand, written by an older or another tool): error 2, final.

    The one way a command changes a token that fails :func:`validate`. It sets the
    fields that mark the error and puts right those the other transitions compute
    with (``history`` a list of events, ``attempts``/``scrub_count`` counts), so
    that a later ``tokens reset`` works; every value it replaces is kept under
    ``quarantined.was``, and nothing else changes. An error-2 token always passes
    the database's write check, whatever else is wrong with it.
    """
    code = int(Code.INVALID_TOKEN)
    old = {k: doc[k] for k in _QUARANTINE_SETS if k in doc}
    history = doc.get("history", [])
    events = [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
    doc.update(
        state="error",
        lock=PICAS_ERROR,
        done=PICAS_ERROR,
        output=code,
        exit_code=code,
        error=_error_record(code, message, None, now),
        lease_expires=0,
        not_before=0,
        claim=None,
    )
    for key in ("attempts", "scrub_count"):
        if key in doc and not (type(doc[key]) is int and doc[key] >= 0):
            doc[key] = 0
    doc["history"] = events
    add_event(doc, now, "error", code=code)
    was = {
        k: v
        for k, v in old.items()
        if k == "quarantined" or type(doc[k]) is not type(v) or doc[k] != v
    }
    if events != history:  # not a list, or entries that are no events
        was["history"] = history
    doc["quarantined"] = {"time": now, "was": was}


def expire(doc: dict[str, Any], now: float) -> None:
    """A lease ran out: the worker was lost. The attempt stays counted."""
    lost = (doc.get("worker") or {}).get("id", "?")
    doc["claim"] = None
    message = f"lease expired: worker {lost} stopped renewing"
    if doc.get("attempts", 0) >= doc.get("max_attempts", 1):
        fail(doc, Code.LEASE_EXPIRED, message + f" ({doc.get('attempts')} attempts)", now)
    else:
        doc.update(state="todo", lock=0, done=0, lease_expires=0, worker=None, claim=None)
        doc["error"] = _error_record(Code.LEASE_EXPIRED, message, None, now)
        add_event(doc, now, "reaped", worker=lost)


def reset(doc: dict[str, Any], now: float) -> None:
    """A user's fresh start: like PiCaS's scrub, plus our retry bookkeeping."""
    doc["scrub_count"] = doc.get("scrub_count", 0) + 1
    doc.update(
        state="todo",
        lock=0,
        done=0,
        output=0,
        exit_code="",
        attempts=0,
        not_before=0,
        lease_expires=0,
        worker=None,
        error=[],  # PiCaS's own default: its Task.error() appends to it
        stage_request=None,
        claim=None,
        incarnation=new_incarnation(),
    )
    doc.pop("stage_rounds", None)
    add_event(doc, now, "reset")


def to_staging(doc: dict[str, Any], request: dict[str, Any], now: float) -> None:
    """Wait for a tape recall without a lease: no worker sits idle meanwhile.

    The claim that found the files on tape gives its attempt back (nothing failed).
    """
    if doc.get("state") == "locked":
        doc["attempts"] = max(0, doc.get("attempts", 0) - 1)
    doc.update(
        state="staging",
        lock=int(now),
        done=0,
        lease_expires=0,
        worker=None,
        not_before=0,
        stage_request=dict(request),
        claim=None,
    )
    doc["stage_rounds"] = doc.get("stage_rounds", 0) + 1
    add_event(
        doc,
        now,
        "staging",
        request=request.get("id"),
        method=request.get("method"),
        files=request.get("files"),
    )


def staged(doc: dict[str, Any], now: float) -> None:
    """Every file is online: claimable again."""
    request = dict(doc.get("stage_request") or {})
    request["online"] = now
    doc.update(state="todo", lock=0, done=0, not_before=0, stage_request=request)
    add_event(doc, now, "staged", request=request.get("id"))


def staging_failed(
    doc: dict[str, Any], code: int, message: str, now: float, *, file: str | None = None
) -> None:
    """22 (recall failed, file missing on tape) or 23 (timeout): error until a reset."""
    fail(doc, code, message, now, file=file, transient=False)


def to_archiving(doc: dict[str, Any], now: float, hold: float, **fields: Any) -> None:
    """Copied to a tape-backed destination; done once the files are on tape.

    Still held (by the worker that copied), for ``hold`` seconds, so the reaper
    only steps in when nobody confirmed the archive or timed it out by then.
    """
    doc.update(fields)
    doc.update(state="archiving", lease_expires=now + hold, archiving_since=now)
    if not doc.get("lock"):  # reaped to todo meanwhile: PiCaS must not count it as todo
        doc["lock"] = int(now)
    add_event(doc, now, "archiving")


def archived(doc: dict[str, Any], now: float) -> None:
    finish(doc, now, archived=now)


def archive_failed(
    doc: dict[str, Any], code: int, message: str, now: float, *, file: str | None = None
) -> None:
    """50 (a file lost or refused by tape) or 51 (not on tape in time)."""
    fail(doc, code, message, now, file=file, transient=False)
