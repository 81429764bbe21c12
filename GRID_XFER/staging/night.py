"""A whole night (or a file of URLs, or one URL) at once: what `state-all` and `stage` ask for.

A worker stages one token's files when it claims the token; an operator who
knows a night is on tape asks for all of it up front, under one request, so the
tape system can order the recalls. These functions make those night-wide calls;
the CLI only parses and prints.

With the LTA stager no locality is asked before a request: the LTA knows what
is on tape, and a user with LTA credentials but no grid proxy can still stage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from GRID_XFER import scan, srmlist
from GRID_XFER import token as tk
from GRID_XFER.errors import Code, NotFound
from GRID_XFER.staging.archive import Archive
from GRID_XFER.staging.locality import NEARLINE, StateReport, may_be_on_tape, token_urls
from GRID_XFER.staging.methods import StagerMethod
from GRID_XFER.staging.recall import Staging
from GRID_XFER.views import DDOC

if TYPE_CHECKING:
    from GRID_XFER.pool import Pool

log = logging.getLogger(__name__)


@dataclass
class Target:
    """A night's tokens (``docs``) or a file of URLs or one URL (``docs`` None),
    as (token id or '', URL) pairs."""

    pairs: list[tuple[str, str]]
    docs: list[dict[str, Any]] | None = None


def target_urls(target: str, pool: Callable[[], Pool]) -> Target:
    """The source URLs of NIGHT's well-formed tokens, of the file of URLs ``target``,
    or ``target`` itself when it is a URL (it holds ``://``).

    ``pool`` is called only for a night: a URL or a file of URLs needs no database.
    """
    if "://" in target:
        return Target([("", srmlist.one_url(target))])
    path = Path(target)
    if path.is_file():
        return Target([("", u) for u in scan.read_surl_list(path)])
    p = pool()
    p.require_night(target)
    docs = []
    for d in p.select(target):
        if (why := tk.problem(d)) is not None:
            log.warning("%s; left out", why)
        else:
            docs.append(d)
    return Target([(d["_id"], u) for d in docs for _, u in token_urls(d)], docs)


def state_report(staging: Staging, target: str, pool: Callable[[], Pool]) -> StateReport:
    """Locality of every source file of NIGHT's tokens, or of a file of URLs."""
    return staging.report(u for _, u in target_urls(target, pool).pairs)


@dataclass
class StageResult:
    """What `stage NIGHT|FILE|URL` did: one request for the files on tape."""

    target: str
    night: bool  # a night's tokens, not a file of URLs
    urls: list[str] = field(default_factory=list)
    request: dict[str, Any] | None = None  # without its parts
    tokens: list[str] = field(default_factory=list)  # moved to staging
    refused: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "files": len(self.urls),
            "request": self.request,
            "tokens": self.tokens,
            "refused": self.refused,
        }


def stage_target(staging: Staging, target: str, pool: Callable[[], Pool]) -> StageResult:
    """Request staging of the files on tape only, under one request.

    For a night, only todo tokens (nobody holds them) count, and each of those with
    files in the request moves to ``staging`` holding its share of it. The stager
    gets every URL that may be on tape, without a locality query.
    """
    found = target_urls(target, pool)
    docs, pairs = found.docs, found.pairs
    if docs is not None:
        docs = [d for d in docs if d["state"] == "todo"]
        wanted = {d["_id"] for d in docs}
        pairs = [(i, u) for i, u in pairs if i in wanted]
    if staging.method().name == "stager":
        on_tape = {u for _, u in pairs if may_be_on_tape(u)}
    else:
        report = staging.report(u for _, u in pairs)
        on_tape = {f.url for f in report.files if f.state == NEARLINE}
    result = StageResult(target, docs is not None)
    result.urls = sorted(on_tape)
    if not result.urls:
        return result
    request, result.refused = staging.request(result.urls)
    result.request = {k: v for k, v in request.items() if k != "parts"}
    if docs is not None:
        p = pool()
        now = p.clock()
        for d in docs:
            mine = [u for i, u in pairs if i == d["_id"] and u in on_tape]
            if mine:
                tk.to_staging(d, staging.for_token(request, mine), now)
                if p.save(d):
                    result.tokens.append(d["_id"])
    return result


def _waiting_on(pool: Pool, request_id: str) -> list[dict[str, Any]]:
    """The staging tokens holding (a share of) request ``request_id``."""
    rows = pool.couch.view(DDOC, "staging", include_docs=True)["rows"]
    return [
        r["doc"]
        for r in rows
        if r.get("doc") and str((r["doc"].get("stage_request") or {}).get("id")) == request_id
    ]


def _kind(staging: Staging, docs: list[dict[str, Any]], request_id: str, method: str | None) -> str:
    if method:
        return method
    if docs:
        return str(docs[0]["stage_request"]["method"])
    # our gfal2 request ids say so; the stager's are its own numbers
    return "gfal2" if request_id.startswith("gfal2-") else staging.cfg.method


def _stager(staging: Staging) -> StagerMethod:
    m = staging.method("stager")
    assert isinstance(m, StagerMethod)
    return m


def request_status(
    staging: Staging, pool: Pool, request_id: str, method: str | None = None
) -> dict[str, Any]:
    """The tokens staging under ``request_id`` and, for the stager, its own status."""
    docs = _waiting_on(pool, request_id)
    out: dict[str, Any] = {"id": request_id, "tokens": [d["_id"] for d in docs]}
    if _kind(staging, docs, request_id, method) == "stager":
        client = _stager(staging).client
        out["stager_status"] = client.status(request_id)
        out["staged_urls"] = len(client.staged_urls(request_id))
    return out


def abort_request(
    staging: Staging, pool: Pool, request_id: str, method: str | None = None
) -> dict[str, Any]:
    """Abort a request; the tokens waiting on it end in error 22 saying so.

    Not back to todo: the next claim would request the same files again, undoing
    the abort. ``tokens reset NIGHT --code 22`` is the way back.
    """
    docs = _waiting_on(pool, request_id)
    kind = _kind(staging, docs, request_id, method)
    if kind == "stager":
        _stager(staging).client.abort(request_id)  # errors shown: the user asked for it
    elif docs:
        staging.method(kind).abort([p for d in docs for p in d["stage_request"]["parts"]])
    else:
        raise NotFound(f"no staging token with request {request_id}")
    moved = []
    now = pool.clock()
    for d in docs:
        message = f"staging request {request_id} ({kind}) aborted by hand (gridxfer stage --abort)"
        tk.staging_failed(d, Code.NOT_STAGED, message, now)
        if pool.save(d):
            moved.append(d["_id"])
    return {"id": request_id, "method": kind, "aborted": True, "tokens": moved}


def reschedule_request(staging: Staging, request_id: str) -> dict[str, Any]:
    """Ask the stager to take up a request again (after it was put on hold)."""
    _stager(staging).client.reschedule(request_id)
    return {"id": request_id, "rescheduled": True}


def stager_progress(staging: Staging) -> dict[str, Any]:
    """The stager's progress of every request of this account."""
    return {str(k): v for k, v in _stager(staging).client.progress().items()}


def poll_once(
    staging: Staging, archive: Archive, pool: Pool, night: str | None = None
) -> dict[str, dict[str, int]]:
    """One recall poll and one archive poll (what `stage --poll` does)."""
    return {
        "staging": staging.poll(pool, night).as_dict(),
        "archive": archive.poll(pool, night).as_dict(),
    }
