"""The token: one exposure's work, as a PiCaS-compatible CouchDB document.

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
"""

from __future__ import annotations

import math
import random
import re
import socket
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from GRID_XFER.errors import Code, InvalidInput, InvalidToken, code_name
from GRID_XFER.urls import PlainURL

TOKEN_TYPE = "token"
STATES = ("todo", "locked", "staging", "archiving", "done", "error")
# Tuples, not sets: `doc.get("state") in HELD` must not raise for a state that is a
# list or a mapping (a malformed token), as a set's hashing would.
CLAIMABLE = ("todo",)
HELD = ("locked", "archiving")
PICAS_ERROR = 99
HISTORY_LIMIT = 20
_ID_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_ID_RULE = "use 1-128 letters, digits and ._+- (not starting with a symbol)"

State = Literal["todo", "locked", "staging", "archiving", "done", "error"]


class FileEntry(BaseModel):
    """A file of the exposure; ``checksums`` maps algorithm -> expected hex."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    size: int | None = Field(None, ge=0)
    checksums: dict[str, str] = Field(default_factory=dict)
    result: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in v.split("/") or "\x00" in v:
            raise ValueError(f"file name {v!r} must be relative, without '..'")
        return v

    @field_validator("checksums")
    @classmethod
    def _hex(cls, v: dict[str, str]) -> dict[str, str]:
        out = {}
        for algo, value in v.items():
            if not re.fullmatch(r"[0-9a-fA-F]+", value or ""):
                raise ValueError(f"checksum {algo} must be hex, got {value!r}")
            out[algo.lower()] = value.lower()
        return out


class SpecFile(FileEntry):
    """A file as given to create a token; its own ``url`` (URL lists) obeys the URL policy:
    a token is read by every worker and the status page, so no URL in it carries a secret."""

    url: PlainURL | None = None


class ExposureSpec(BaseModel):
    """What a user (or a source scan) gives to create one token."""

    model_config = ConfigDict(extra="forbid")

    exposure: str
    files: list[SpecFile] = Field(default_factory=list)
    source: PlainURL | None = None
    destination: PlainURL | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    max_attempts: int | None = Field(None, ge=1)
    # Where the expected checksums came from: {name, algo, error?}; None for SURL lists.
    manifest: dict[str, Any] | None = None

    @field_validator("exposure")
    @classmethod
    def _exposure(cls, v: str) -> str:
        if not _ID_PART.fullmatch(v):
            raise ValueError(_ID_RULE)
        return v


# A number as JSON has it: an int or a finite float, never a bool or a numeric string.
Number = Annotated[float, Field(allow_inf_nan=False)]


class StoredFile(FileEntry):
    """A file entry as stored: of the types written, nothing coerced."""

    model_config = ConfigDict(extra="allow", strict=True)

    url: str | None = None  # URL lists: the source of this file
    role: str | None = None


class ErrorRecord(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    code: int
    message: str | None = None
    file: str | None = None
    time: Number | None = None


class StagePart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    key: str | int
    urls: list[str]
    t: Number = 0


class StageRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    method: str = "?"
    parts: list[StagePart] = Field(default_factory=list)
    requested: Number = 0
    deadline: Number | None = None


class TokenDoc(BaseModel):
    """A stored token, field by field as the commands use it; nothing is coerced.

    The types every transition, view and task relies on (a claim adds to
    ``attempts``, appends to ``history``, compares ``not_before``...). A token
    that fails it is quarantined (error 2) when a worker claims or reaps it.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True, strict=True)

    id: str = Field(alias="_id")
    type: Literal["token"]
    token_set: str = Field(min_length=1)
    exposure: str = Field(min_length=1)
    state: State
    lock: Number
    done: Number
    output: int
    attempts: int = Field(ge=0)
    max_attempts: int = Field(ge=1)
    files: list[StoredFile]
    bytes_total: Number | None = Field(0, ge=0)
    source: str | None = None
    destination: str | None = None
    payload: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    not_before: Number = 0
    lease_expires: Number = 0
    rnd: Number = 0
    scrub_count: int = Field(0, ge=0)
    hostname: str = ""
    worker: dict[str, Any] | None = None
    error: ErrorRecord | None = None
    stage_request: StageRequest | None = None
    archiving_since: Number = 0
    archive_deadline: Number = 0
    created: Number | None = None
    updated: Number | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> TokenDoc:
        if self.state in HELD and not self.lease_expires > 0:
            raise ValueError(f"lease_expires: must be set while the token is {self.state}")
        if self.state == "error" and self.error is None:
            raise ValueError("error: an error token needs its error record")
        return self


def check_id_part(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID_PART.fullmatch(value):
        raise InvalidToken(f"invalid {what} {value!r}: {_ID_RULE}")
    return value


_TOKEN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}_[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_token_id(value: str) -> str:
    """Refuse what cannot be a token id (``..``, ``_all_docs``, ``_design/x``, ``a/b``).

    Such a string in a document URL names something else on the server (its root,
    a listing, a design document): it must never reach a request.
    """
    if not _TOKEN_ID.fullmatch(value):
        raise InvalidInput(
            f"invalid token id {value!r}: token ids are <night>_<exposure>, "
            f"each part 1-128 letters, digits and ._+- (not starting with a symbol)"
        )
    return value


def token_id(night: str, exposure: str) -> str:
    return f"{night}_{exposure}"


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def parse_spec(raw: Any, index: int | None = None) -> ExposureSpec:
    try:
        if isinstance(raw, (str, int)):
            raw = {"exposure": str(raw)}
        return ExposureSpec.model_validate(raw)
    except ValidationError as exc:
        where = f"entry {index}: " if index is not None else ""
        raise InvalidToken(f"invalid exposure {where}{_first_error(exc)}") from None


def new_token(
    night: str,
    spec: ExposureSpec,
    *,
    source: str | None = None,
    destination: str | None = None,
    max_attempts: int = 3,
    now: float | None = None,
) -> dict[str, Any]:
    check_id_part(night, "night")
    now = time.time() if now is None else now
    doc: dict[str, Any] = {
        "_id": token_id(night, spec.exposure),
        "type": TOKEN_TYPE,
        "token_set": night,
        "exposure": spec.exposure,
        "state": "todo",
        "lock": 0,
        "done": 0,
        "hostname": "",
        "scrub_count": 0,
        "output": 0,
        "exit_code": "",
        "files": [f.model_dump(exclude_none=True) for f in spec.files],
        "bytes_total": sum(f.size or 0 for f in spec.files),
        "source": spec.source or source,
        "destination": spec.destination or destination,
        "payload": spec.payload,
        "manifest": spec.manifest,
        "attempts": 0,
        "max_attempts": spec.max_attempts or max_attempts,
        "not_before": 0,
        "rnd": round(random.random(), 6),  # spreads claiming workers over the todo view
        "lease_expires": 0,
        "worker": None,
        "error": None,
        "stage_request": None,
        "created": now,
        "updated": now,
        "incarnation": new_incarnation(),
        "history": [],
    }
    _event(doc, now, "created")
    return doc


def new_incarnation() -> str:
    """Names one life of a token: creation, and every fresh start (``reset``).

    A worker records its result only on the incarnation it claimed, so a token
    reset, or deleted and created again, while a worker holds it is done anew,
    not taken over by the older work (docs/tokens.md, "Edits while a worker
    holds a token").
    """
    return uuid.uuid4().hex


def validate(doc: dict[str, Any]) -> None:
    """Raise InvalidToken (code 2) naming the first bad field."""
    message = problem(doc)
    if message is not None:
        raise InvalidToken(message)


def problem(doc: dict[str, Any]) -> str | None:
    """What makes a stored token malformed (``invalid token ID: FIELD: why``), or None."""
    try:
        TokenDoc.model_validate(doc)
    except ValidationError as exc:
        return f"invalid token {doc.get('_id', '?')}: {_first_error(exc)}"
    return None


def is_token(doc: Any) -> bool:
    """One of ours: a token of a night. Anything else in the database is foreign
    (design documents, other applications' documents, a PiCaS token of another
    tool, which has no ``token_set``) and no command touches it."""
    return (
        isinstance(doc, dict)
        and doc.get("type") == TOKEN_TYPE
        and isinstance(doc.get("token_set"), str)
        and doc["token_set"] != ""
    )


def shown_state(doc: dict[str, Any]) -> str:
    """The state a token is listed and counted in: an unknown one counts as ``error``
    (the views do the same), since it is quarantined to error 2 when reaped."""
    state = doc.get("state")
    return state if isinstance(state, str) and state in STATES else "error"


def error_code(doc: dict[str, Any]) -> int | None:
    """The code a token is listed and counted with, as the ``errors`` view has it: an
    error token without a valid record, or in an unknown state, counts as 2."""
    error = doc.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    valid = isinstance(code, (int, float)) and not isinstance(code, bool) and math.isfinite(code)
    if shown_state(doc) == "error" and (doc.get("state") != "error" or not valid):
        return int(Code.INVALID_TOKEN)
    return int(code) if valid else None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def ready(doc: dict[str, Any], now: float) -> bool:
    """A todo token whose backoff has passed, or whose ``not_before`` is no number
    (a claim then quarantines it, rather than leave it unclaimable for ever)."""
    not_before = _number(doc.get("not_before", 0))
    return doc.get("state") in CLAIMABLE and (not_before is None or not_before <= now)


# -- transitions -------------------------------------------------------------
def _event(doc: dict[str, Any], now: float, event: str, **extra: Any) -> None:
    entry = {"t": round(now, 3), "event": event, "state": doc["state"], **extra}
    history = doc.setdefault("history", [])
    history.append(entry)
    del history[:-HISTORY_LIMIT]
    doc["updated"] = now


def worker_identity(job_id: str | None = None, worker_id: str | None = None) -> dict[str, Any]:
    import os

    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "job_id": job_id,
        "id": worker_id or f"{socket.gethostname()}:{os.getpid()}",
    }


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
    _event(doc, now, "claimed", worker=worker["id"], attempt=doc["attempts"])


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
        error=None,
        lease_expires=0,
        not_before=0,
        finished=now,
    )
    if not doc.get("lock"):
        doc["lock"] = int(now)
    _event(doc, now, "done")


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
        _event(doc, now, "retry", code=int(code), after=round(delay, 1))
    else:
        doc.update(state="error", lock=PICAS_ERROR, done=PICAS_ERROR, not_before=0)
        _event(doc, now, "error", code=int(code))


def release(doc: dict[str, Any], now: float, reason: str) -> None:
    """Back to todo without counting the attempt (signal, shutdown)."""
    doc["attempts"] = max(0, doc.get("attempts", 0) - 1)
    doc.update(state="todo", lock=0, done=0, lease_expires=0, worker=None, claim=None)
    _event(doc, now, "released", reason=reason)


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
    _event(doc, now, "error", code=code)
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
        _event(doc, now, "reaped", worker=lost)


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
        error=None,
        stage_request=None,
        claim=None,
        incarnation=new_incarnation(),
    )
    doc.pop("stage_rounds", None)
    _event(doc, now, "reset")


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
    _event(
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
    _event(doc, now, "staged", request=request.get("id"))


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
    _event(doc, now, "archiving")


def archived(doc: dict[str, Any], now: float) -> None:
    finish(doc, now, archived=now)


def archive_failed(
    doc: dict[str, Any], code: int, message: str, now: float, *, file: str | None = None
) -> None:
    """50 (a file lost or refused by tape) or 51 (not on tape in time)."""
    fail(doc, code, message, now, file=file, transient=False)


def is_expired(doc: dict[str, Any], now: float, grace: float = 0.0) -> bool:
    """Held, and the lease ran out more than ``grace`` seconds ago (clock slack), or
    held without a lease at all: no live worker holds such a token."""
    lease = _number(doc.get("lease_expires"))
    return doc.get("state") in HELD and (lease is None or lease <= 0 or lease < now - grace)
