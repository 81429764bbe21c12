"""The token: one exposure's work, as a PiCaS-compatible CouchDB document.

Its fields (``TokenDoc``), the ids (``<night>_<exposure>``), a new token made from
what a user or a scan gives (``ExposureSpec``), and the check that tells a stored
token from a malformed one. What can happen to a token lives in
:mod:`GRID_XFER.transitions`; its names are importable from here too, so
``token.claim(doc, ...)`` reads as what it does.
"""

from __future__ import annotations

import random
import re
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from GRID_XFER.errors import InvalidInput, InvalidToken
from GRID_XFER.transitions import (
    CLAIMABLE,
    HELD,
    HISTORY_LIMIT,
    PICAS_ERROR,
    STATES,
    State,
    add_event,
    archive_failed,
    archived,
    claim,
    error_code,
    expire,
    fail,
    finish,
    is_expired,
    new_incarnation,
    quarantine,
    ready,
    release,
    renew,
    reset,
    shown_state,
    staged,
    staging_failed,
    to_archiving,
    to_staging,
    worker_identity,
)
from GRID_XFER.urls import PlainURL

TOKEN_TYPE = "token"
_ID_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_ID_RULE = "use 1-128 letters, digits and ._+- (not starting with a symbol)"


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

    @field_validator("error", mode="before")
    @classmethod
    def _picas_errors(cls, v: Any) -> Any:
        """A list of records is PiCaS's (``[]`` by default; ``Task.error()`` appends):
        no GRID_XFER error record, and no fault either."""
        if isinstance(v, list) and all(isinstance(e, dict) for e in v):
            return None
        return v

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
        "error": [],  # PiCaS's default; a GRID_XFER error is one record (docs/tokens.md)
        "stage_request": None,
        "created": now,
        "updated": now,
        "incarnation": new_incarnation(),
        "history": [],
    }
    add_event(doc, now, "created")
    return doc


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


__all__ = [
    # the document
    "TOKEN_TYPE",
    "ErrorRecord",
    "ExposureSpec",
    "FileEntry",
    "Number",
    "SpecFile",
    "StagePart",
    "StageRequest",
    "StoredFile",
    "TokenDoc",
    "check_id_part",
    "check_token_id",
    "is_token",
    "new_token",
    "parse_spec",
    "problem",
    "token_id",
    "validate",
    # its states and transitions (GRID_XFER.transitions)
    "CLAIMABLE",
    "HELD",
    "HISTORY_LIMIT",
    "PICAS_ERROR",
    "STATES",
    "State",
    "add_event",
    "archive_failed",
    "archived",
    "claim",
    "error_code",
    "expire",
    "fail",
    "finish",
    "is_expired",
    "new_incarnation",
    "quarantine",
    "ready",
    "release",
    "renew",
    "reset",
    "shown_state",
    "staged",
    "staging_failed",
    "to_archiving",
    "to_staging",
    "worker_identity",
]
