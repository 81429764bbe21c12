"""A whole night (or a file of URLs) at once: what `state-all` and `stage` ask for.

A worker stages one token's files when it claims the token; an operator who
knows a night is on tape asks for all of it up front, under one request, so the
tape system can order the recalls. These functions make those night-wide calls;
the CLI only parses and prints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from GRID_XFER import scan
from GRID_XFER import token as tk
from GRID_XFER.staging.archive import Archive
from GRID_XFER.staging.locality import NEARLINE, StateReport, token_urls
from GRID_XFER.staging.methods import StagerMethod
from GRID_XFER.staging.recall import Staging
from GRID_XFER.views import DDOC

if TYPE_CHECKING:
    from GRID_XFER.pool import Pool

log = logging.getLogger(__name__)


@dataclass
class Target:
    """A night's tokens (``docs``) or a file of URLs (``docs`` None), as
    (token id or '', URL) pairs."""

    pairs: list[tuple[str, str]]
    docs: list[dict[str, Any]] | None = None


def target_urls(target: str, pool: Callable[[], Pool]) -> Target:
    """The source URLs of NIGHT's well-formed tokens, or of the file of URLs ``target``.

    ``pool`` is called only for a night: a file of URLs needs no database.
    """
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
    """What `stage NIGHT|FILE` did: one request for the files on tape only."""

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
    files in the request moves to ``staging`` holding its share of it.
    """
    found = target_urls(target, pool)
    report = staging.report(u for _, u in found.pairs)
    state = {f.url: f.state for f in report.files}
    docs, pairs = found.docs, found.pairs
    if docs is not None:
        docs = [d for d in docs if d["state"] == "todo"]
        wanted = {d["_id"] for d in docs}
        pairs = [(i, u) for i, u in pairs if i in wanted]
    result = StageResult(target, docs is not None)
    result.urls = sorted({u for _, u in pairs if state.get(u) == NEARLINE})
    if not result.urls:
        return result
    request, result.refused = staging.request(result.urls)
    result.request = {k: v for k, v in request.items() if k != "parts"}
    if docs is not None:
        p = pool()
        now = p.clock()
        for d in docs:
            mine = [u for i, u in pairs if i == d["_id"] and state.get(u) == NEARLINE]
            if mine:
                tk.to_staging(d, staging.for_token(request, mine), now)
                if p.save(d):
                    result.tokens.append(d["_id"])
    return result


def request_status(
    staging: Staging, pool: Pool, request_id: str, method: str | None = None
) -> dict[str, Any]:
    """The tokens staging under ``request_id`` and, for the stager, its own status."""
    rows = pool.couch.view(DDOC, "staging", include_docs=True)["rows"]
    docs = [
        r["doc"]
        for r in rows
        if r.get("doc") and str((r["doc"].get("stage_request") or {}).get("id")) == request_id
    ]
    out: dict[str, Any] = {"id": request_id, "tokens": [d["_id"] for d in docs]}
    if method:
        kind = method
    elif docs:
        kind = docs[0]["stage_request"]["method"]
    else:  # our gfal2 request ids say so; the stager's are its own numbers
        kind = "gfal2" if request_id.startswith("gfal2-") else staging.cfg.method
    if kind == "stager":
        m = staging.method("stager")
        assert isinstance(m, StagerMethod)
        out["stager_status"] = m.client.status(request_id)
        out["staged_urls"] = len(m.client.staged_urls(request_id))
    return out


def poll_once(
    staging: Staging, archive: Archive, pool: Pool, night: str | None = None
) -> dict[str, dict[str, int]]:
    """One recall poll and one archive poll (what `stage --poll` does)."""
    return {
        "staging": staging.poll(pool, night).as_dict(),
        "archive": archive.poll(pool, night).as_dict(),
    }
