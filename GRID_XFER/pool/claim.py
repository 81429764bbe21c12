"""Claiming: one claimable token under a lease, saved against the revision read.

Safety rests on one CouchDB guarantee: a PUT carrying ``_rev`` succeeds only if
nobody changed the document since that revision. A claim therefore checks the
very revision it read (from the view with ``include_docs``) and saves against
it; a 409 means another worker won, and we try another row. PiCaS re-reads
the document after the view, so it can overwrite a fresh lock: we never do.
On a cluster a saved claim is confirmed from every copy's branches before it
counts (:meth:`Claiming._confirm`).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from GRID_XFER import branches
from GRID_XFER import token as tk
from GRID_XFER.errors import Code, Conflict
from GRID_XFER.lease import Lease, adopt
from GRID_XFER.pool.base import PoolBase
from GRID_XFER.views import DDOC

log = logging.getLogger(__name__)

# How long a claimant on a cluster waits for lower claims of the same token to step aside.
CONFIRM_SECONDS = 5.0


class Claiming(PoolBase):
    """The pool's ``claim`` (and ``claimable_now``), with the candidates it draws from."""

    def _refill(self, night: str | None, now: float) -> None:
        # Start at a random point of the fresh tokens, wrapping to the front when
        # the tail is short: workers then hold mostly disjoint windows.
        start = round(random.random(), 6)
        if night is None:
            ranges = [([0, start], [now, {}]), ([0], [now, {}])]
            name = "todo_any"
        else:
            ranges = [([night, 0, start], [night, now, {}]), ([night], [night, now, {}])]
            name = "todo"
        rows: list[dict[str, Any]] = []
        for startkey, endkey in ranges:
            rows += self.couch.view(
                DDOC,
                name,
                startkey=startkey,
                endkey=endkey,
                limit=self.settings.window - len(rows),
                include_docs=True,
            )["rows"]
            if len(rows) >= self.settings.window:
                break
        unique = {r["id"]: r["doc"] for r in rows if r.get("doc")}
        self._candidates = list(unique.values())
        self._candidates_night = night

    def claim(self, night: str | None = None) -> Lease | None:
        """Take one claimable token under a lease, or None when the night has none."""
        if self._candidates_night != night:
            self._candidates = []
        while True:
            now = self.clock()
            if not self._candidates:
                self._refill(night, now)
                if not self._candidates:
                    return None
            doc = self._candidates.pop(random.randrange(len(self._candidates)))
            if not tk.ready(doc, now):
                continue
            problem = tk.problem(doc)
            if problem is not None:  # before anything reads its fields
                self._quarantine(doc, problem, now)
                continue
            tk.claim(doc, self.worker, now, self.settings.lease)
            if self._take(doc):
                return Lease(self, doc)

    def _take(self, doc: dict[str, Any]) -> bool:
        """Save a claim and make sure it is ours alone (docs/tokens.md, claiming).

        One copy: its ``_rev`` check decides; a 409 after a resent PUT may be our
        own unseen success, so look. A cluster: no answer settles it (a 201 can
        race a claim from another branch, a 202 or even a 409 can leave our claim
        on some copies), so every claim is judged from every reachable copy's
        branches (:func:`branches.judge_claim`).
        """
        try:
            write = self.couch.put(doc)
        except Conflict as exc:
            if not self.couch.replicated:
                return exc.retried and self._won_anyway(doc)
            self.stats["claims_409"] += 1
            log.debug(
                "claim %s of %s: 409%s",
                doc["claim"],
                doc["_id"],
                " after a resent PUT" if exc.retried else "",
            )
            # Others are taking our candidates: on a cluster a lost race costs a look
            # at the branches too, so read a fresh window rather than race on.
            self._candidates = []
        else:
            if not self.couch.replicated:
                return True
            self.stats["claims_201" if write.quorum else "claims_202"] += 1
            log.debug(
                "claim %s of %s: %s %s",
                doc["claim"],
                doc["_id"],
                201 if write.quorum else 202,
                write.rev,
            )
        return self._confirm(doc)

    def claimable_count(self, night: str, limit: int) -> int:
        """How many of the night's todo tokens may be claimed now (up to ``limit``): what
        workers can start on, without those waiting out a retry's back-off."""
        now = self.clock()
        rows = self.couch.view(
            DDOC, "todo", startkey=[night], endkey=[night, now, {}], limit=limit
        )["rows"]
        return len(rows)

    def claimable_now(self, night: str | None = None) -> list[dict[str, Any]]:
        """Todo tokens a quorum read finds claimable, for a worker about to go idle.

        On a cluster the todo view answers from one copy per shard range, which can
        lag: a token released or retried a moment ago may be missing there. So the
        night's tokens (every night with open tokens, without one) are read from a
        quorum of copies, and the claimable ones become the next claim candidates.
        """
        nights = (
            [night]
            if night is not None
            else sorted(
                n
                for n, states in self.counts().items()
                if any(states.get(s, {}).get("count") for s in ("todo", "locked", "staging"))
            )
        )
        now = self.clock()
        found = [d for n in nights for d in self._night_tokens(n) if tk.ready(d, now)]
        if found:
            self._candidates, self._candidates_night = found, night
        return found

    def _won_anyway(self, doc: dict[str, Any]) -> bool:
        # A PUT resent after a lost answer sees its own success as a 409.
        current = self.couch.get_or_none(doc["_id"])
        if current and current.get("claim") == doc["claim"] and current.get("state") == "locked":
            doc.clear()
            doc.update(current)
            return True
        return False

    def _confirm(self, doc: dict[str, Any]) -> bool:
        """Look at every branch until ours is the only live one, or we step aside."""
        delay, waited = 0.05, 0.0
        while True:
            verdict = branches.judge_claim(
                self.couch.leaves(doc["_id"]), doc["claim"], self.clock()
            )
            clean = self._delete_leaves(doc["_id"], verdict.delete)
            log.debug(
                "claim %s of %s: %s, deleted %s%s",
                doc["claim"],
                doc["_id"],
                verdict.outcome,
                verdict.delete,
                "" if clean else " (not all)",
            )
            if verdict.outcome == "own" and clean:
                assert verdict.current is not None
                doc.clear()
                doc.update(adopt(verdict.current))
                return True
            if verdict.outcome == "lost":
                self.stats["claims_lost"] += 1
                return False
            if waited >= CONFIRM_SECONDS:
                # A lower live claim never stepped aside: an owner that went ahead
                # first. Our branch stays (deleting it could race that owner's
                # cleanup); the owner or the sweeper removes it.
                self.stats["claims_gave_up"] += 1
                log.info(
                    "claim of %s not confirmed within %.0fs; leaving it",
                    doc["_id"],
                    CONFIRM_SECONDS,
                )
                return False
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.8)

    def _quarantine(self, doc: dict[str, Any], message: str, now: float) -> bool:
        """Save a malformed token as error 2 (:func:`token.quarantine`); False if it
        changed meanwhile (whoever changed it, or the next look, deals with it)."""
        tk.quarantine(doc, message, now)
        try:
            self.couch.put(doc)
        except Conflict:
            return False
        log.error(
            "%s: set to error %d, never run until it is fixed and reset",
            message,
            Code.INVALID_TOKEN,
        )
        return True
