"""What every part of the pool shares: its database, settings and clock, and reads.

:class:`PoolBase` reads tokens as a quorum of copies has them (a view on a cluster
answers from one copy per shard range, which can lag) and saves one token
against its ``_rev``. Claiming (:mod:`.claim`), creating (:mod:`.create`) and
upkeep (:mod:`.reap`) build on it.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from GRID_XFER import branches
from GRID_XFER import token as tk
from GRID_XFER.couch import Couch
from GRID_XFER.errors import Conflict, NotFound
from GRID_XFER.lease import adopt
from GRID_XFER.views import DDOC

BATCH = 500


@dataclass
class PoolSettings:
    lease: float = 300.0
    max_attempts: int = 3
    backoff_base: float = 30.0
    backoff_max: float = 3600.0
    window: int = 64

    @property
    def grace(self) -> float:
        """Slack between clocks: a holder renews this long before its lease runs
        out, and the reaper waits this long after it."""
        return min(30.0, self.lease / 10)


class PoolBase:
    """The database, settings, clock and worker identity of a pool, and its reads."""

    def __init__(
        self,
        couch: Couch,
        settings: PoolSettings | None = None,
        *,
        job_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.couch = couch
        self.settings = settings or PoolSettings()
        self.clock = clock
        # Todo tokens read at once and claimed one by one (pool/claim.py), for one night.
        self._candidates: list[dict[str, Any]] = []
        self._candidates_night: str | None = None
        # How claims went on a cluster (201, 202, 409, lost, gave up): for tests and benchmarks.
        self.stats: Counter[str] = Counter()
        base = tk.worker_identity(job_id)
        base["id"] = f"{base['id']}:{uuid.uuid4().hex[:6]}"
        self.worker = base

    # -- a night's tokens ---------------------------------------------------------
    def select(
        self, night: str, states: Iterable[str] | None = None, codes: Iterable[int] | None = None
    ) -> list[dict[str, Any]]:
        """The night's token documents, optionally filtered by state and error code.

        On a cluster a view answers from one copy per shard range, and pages of it
        read from copies at different points can skip a token that moved between
        states; so there the night's ids are listed from ``_all_docs`` (ids are
        ``<night>_<exposure>`` and never move) and the documents read from a quorum.
        A malformed token is listed as :func:`token.shown_state` and
        :func:`token.error_code` have it (an unknown state as error 2), as the views
        count it.
        """
        wanted = set(states) if states else set(tk.STATES)
        code_set = {int(c) for c in codes} if codes else None
        if self.couch.replicated:
            docs = sorted(
                self._night_tokens(night),
                key=lambda d: (tk.STATES.index(tk.shown_state(d)), d["_id"]),
            )
        else:
            docs = [
                row["doc"]
                for state in sorted(wanted, key=tk.STATES.index)
                for row in self.couch.iter_view(
                    DDOC,
                    "by_state",
                    reduce=False,
                    include_docs=True,
                    startkey=[night, state],
                    endkey=[night, state, {}],
                )
                if row.get("doc")
            ]
        return [
            d
            for d in docs
            if tk.is_token(d)
            and tk.shown_state(d) in wanted
            and (code_set is None or tk.error_code(d) in code_set)
        ]

    def _night_tokens(self, night: str) -> list[dict[str, Any]]:
        """A night's tokens by id (``<night>_<exposure>``), as a quorum of copies has them."""
        ids = list(self.couch.iter_ids(tk.token_id(night, "")))
        return [
            d
            for d in current_tokens(self.couch, ids, self.clock()).values()
            if d.get("type") == tk.TOKEN_TYPE and d.get("token_set") == night
        ]

    def counts(self, night: str | None = None) -> dict[str, dict[str, dict[str, int]]]:
        """``{night: {state: {"count": n, "bytes": b}}}`` from the reduce view."""
        params: dict[str, Any] = {"group_level": 2}
        if night is not None:
            params.update(startkey=[night], endkey=[night, {}])
        out: dict[str, dict[str, dict[str, int]]] = {}
        for row in self.couch.view(DDOC, "by_state", **params)["rows"]:
            n, state = row["key"][:2]
            out.setdefault(n, {})[state] = {
                "count": int(row["value"]["count"]),
                "bytes": int(row["value"]["sum"]),
            }
        return out

    # -- tape: tokens nobody holds while they wait ---------------------------------
    def staging(self, night: str | None = None) -> list[dict[str, Any]]:
        """Tokens waiting for a tape recall (the ``staging`` view)."""
        params: dict[str, Any] = {"include_docs": True}
        if night is not None:
            params.update(startkey=[night], endkey=[night, {}])
        # Not paged: keys repeat (tokens share a request), which paging by key cannot do.
        # Malformed ones are left to the reaper (error 2): a poll never trips over them.
        return [
            r["doc"]
            for r in self.couch.view(DDOC, "staging", **params)["rows"]
            if r.get("doc") and r["doc"].get("state") == "staging" and tk.problem(r["doc"]) is None
        ]

    def archiving(self, night: str | None = None) -> list[dict[str, Any]]:
        """Tokens copied to a tape-backed destination, waiting for migration
        (malformed ones are left to the reaper)."""
        nights = [n for n, states in self.counts(night).items() if states.get("archiving")]
        return [
            d
            for n in nights
            for d in self.select(n, ["archiving"])
            if d.get("state") == "archiving" and tk.problem(d) is None
        ]

    def waiting(self, night: str | None = None) -> int:
        """How many tokens are staging or archiving (work that will come back)."""
        return sum(
            states.get(s, {}).get("count", 0)
            for states in self.counts(night).values()
            for s in ("staging", "archiving")
        )

    # -- one token ----------------------------------------------------------------
    def save(self, doc: dict[str, Any]) -> bool:
        """Save a token changed by a poll; False if someone else changed it first (409)."""
        try:
            self.couch.put(doc)
        except Conflict:
            return False
        return True

    def get(self, token_id: str) -> dict[str, Any]:
        """One token; on a cluster, the branch that is the token if it has several."""
        if self.couch.replicated:
            doc = current_tokens(self.couch, [token_id], self.clock()).get(token_id)
            if doc is None:
                raise NotFound(f"no token {token_id!r}")
            return doc
        try:
            return self.couch.get(token_id)
        except NotFound:
            raise NotFound(f"no token {token_id!r}") from None

    def require_night(self, night: str) -> None:
        if night not in self.counts(night):
            raise NotFound(f"unknown night {night!r}: no tokens in database {self.couch.db!r}")

    def _delete_leaves(self, doc_id: str, revs: list[str]) -> bool:
        """Delete leaf revisions; False if one of them changed meanwhile."""
        clean = True
        for rev in revs:
            try:
                self.couch.delete(doc_id, rev)
            except (Conflict, NotFound):
                clean = False
        return clean


def current_tokens(couch: Couch, ids: list[str], now: float) -> dict[str, dict[str, Any]]:
    """Tokens as a quorum of copies has them; a conflicted one as the branch that
    is the token (:func:`branches.preferred`), not whichever CouchDB shows."""
    out: dict[str, dict[str, Any]] = {}
    for doc_id, doc in couch.docs(list(dict.fromkeys(ids)), conflicts=True).items():
        if doc and doc.get("_conflicts"):
            doc = branches.preferred(couch.leaves(doc_id), now)
        if doc:
            out[doc_id] = adopt(doc)
    return out
