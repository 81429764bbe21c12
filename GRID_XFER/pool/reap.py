"""The pool's upkeep: reaping lost leases, settling conflicts, resets and deletes.

Any worker, and ``gridxfer tokens reap``, does this; none of it needs the
worker that held a token to be alive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from GRID_XFER import branches
from GRID_XFER import token as tk
from GRID_XFER.couch import chunked
from GRID_XFER.errors import Code
from GRID_XFER.lease import adopt
from GRID_XFER.pool.base import BATCH, PoolBase
from GRID_XFER.views import DDOC

log = logging.getLogger(__name__)


class Maintenance(PoolBase):
    """The pool's ``reap``, ``sweep``, ``reset`` and ``delete``."""

    def reap(self, night: str | None = None) -> list[str]:
        """Return tokens whose lease expired to todo (or to error 90 after max_attempts),
        and quarantine (error 2) held or staging tokens that are malformed: held
        without a lease, in no known state, or failing validation once expired.

        Not within a lease of this process riding out a database outage: live
        workers cut off by the same outage could not renew meanwhile, and need
        that long to heartbeat again before their tokens count as lost.
        """
        recovered = self.couch.recovered_at
        if recovered is not None and time.monotonic() - recovered < self.settings.lease:
            log.info(
                "not reaping yet: the database was unreachable until %.0f s ago",
                time.monotonic() - recovered,
            )
            return []
        now = self.clock()
        docs, invalid = self._expired(night, now)
        staging, bad_staging = self._overdue_staging(night, now)
        return self._save_reaped(docs + staging, invalid + bad_staging)

    def _expired(
        self, night: str | None, now: float
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Held tokens whose lease ran out, expired; and malformed ones, quarantined."""
        grace = self.settings.grace
        # Key 0: held without a lease, or in no known state (the view's map): malformed.
        rows = self.couch.view(DDOC, "leases", startkey=0, endkey=now - grace)["rows"]
        ids = [r["id"] for r in rows if night is None or (r.get("value") or [None])[0] == night]
        # The view answers from one copy per shard range, which can lag: act on what a
        # quorum of copies says. Conflicted tokens are the sweeper's (sweep) first.
        current = self.couch.docs(ids, conflicts=True) if ids else {}
        docs: list[dict[str, Any]] = []
        invalid: list[dict[str, Any]] = []
        for d in current.values():
            if not d or d.get("_conflicts") or not tk.is_token(d):
                continue
            problem = tk.problem(d)
            if problem is not None:  # quarantined, not reaped: a retry would fail the same way
                d = adopt(d)
                tk.quarantine(d, problem, now)
                invalid.append(d)
            elif tk.is_expired(d, now, grace):
                d = adopt(d)
                tk.expire(d, now)
                docs.append(d)
        return docs, invalid

    def _save_reaped(self, docs: list[dict[str, Any]], invalid: list[dict[str, Any]]) -> list[str]:
        quarantined = {d["_id"] for d in invalid}
        reaped = []
        for chunk in chunked(docs + invalid, BATCH):
            for result, doc in zip(self.couch.bulk_docs(chunk), chunk, strict=False):
                if result.get("error"):
                    continue
                reaped.append(doc["_id"])
                if doc["_id"] in quarantined:
                    log.error(
                        "%s: set to error %d, never run until it is fixed and reset",
                        doc["error"]["message"],
                        Code.INVALID_TOKEN,
                    )
                else:
                    log.warning(
                        "reaped %s (lease of %s expired) -> %s",
                        doc["_id"],
                        doc["history"][-1].get("worker", "?"),
                        doc["state"],
                    )
        return reaped

    def sweep(self, night: str | None = None) -> list[str]:
        """Settle conflicted tokens that no claimant or owner is settling.

        Only a cluster makes conflicts (docs/tokens.md); the branch that is the
        token stays and the others go, by :func:`branches.judge_conflict`'s rule.
        """
        span: dict[str, Any] = {} if night is None else {"startkey": [night], "endkey": [night, {}]}
        rows = self.couch.view(DDOC, "conflicts", **span)["rows"]
        swept = []
        for doc_id in sorted({r["id"] for r in rows}):
            verdict = branches.judge_conflict(self.couch.leaves(doc_id), self.clock())
            if verdict.outcome == "skip" or not verdict.delete:
                continue
            if self._delete_leaves(doc_id, verdict.delete):
                swept.append(doc_id)
                log.info(
                    "settled conflicted token %s: kept %s, deleted %d branch(es)",
                    doc_id,
                    verdict.current["_rev"] if verdict.current else "?",
                    len(verdict.delete),
                )
        return swept

    def _overdue_staging(
        self, night: str | None, now: float
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Staging tokens a lease past their deadline: no poller ran (no transfer
        workers left, no `stage --poll`), so time them out here (23) rather than
        let them wait forever; pollers normally do this first, and abort the request.
        Also the malformed ones, quarantined (pollers skip them): (timed out, invalid)."""
        span: dict[str, Any] = {} if night is None else {"startkey": [night], "endkey": [night, {}]}
        rows = self.couch.view(DDOC, "staging", include_docs=True, **span)["rows"]
        out, invalid = [], []
        for r in rows:
            d = r.get("doc")
            if not d or d.get("state") != "staging" or not tk.is_token(d):
                continue
            problem = tk.problem(d)
            if problem is not None:
                tk.quarantine(d, problem, now)
                invalid.append(d)
                continue
            deadline = (d.get("stage_request") or {}).get("deadline")
            if deadline and now > deadline + self.settings.lease:
                tk.staging_failed(
                    d,
                    Code.STAGING_TIMEOUT,
                    f"staging request "
                    f"{d['stage_request'].get('id')} not online "
                    f"{now - deadline:.0f} s after its deadline, and no poller "
                    "settled it",
                    now,
                )
                out.append(d)
        return out, invalid

    def reset(
        self,
        night: str,
        states: Iterable[str] | None = None,
        codes: Iterable[int] | None = None,
        *,
        force: bool = False,
    ) -> list[str]:
        """Give tokens a fresh start. Default: every errored token of the night.

        A token a live worker holds (lease not expired) is left alone unless
        ``force``: resetting it would let a second worker run it alongside.
        """
        states = list(states) if states else (["error"] if not codes else ["error", "todo"])
        now = self.clock()
        docs = self.select(night, states, codes)
        live = [d["_id"] for d in docs if d.get("state") in tk.HELD and not tk.is_expired(d, now)]
        if live and not force:
            log.warning(
                "left %d token(s) alone that live workers hold (e.g. %s); "
                "--force resets them anyway",
                len(live),
                live[0],
            )
            docs = [d for d in docs if d["_id"] not in live]
        for d in docs:
            problem = tk.problem(d)
            if problem is not None:  # quarantine first: a reset then has the fields it needs
                tk.quarantine(d, problem, now)
            tk.reset(d, now)
        return self._bulk_save(docs)

    def reopen(self, ids: list[str]) -> list[str]:
        """Done tokens whose source gained late files start again (todo), so the new
        files move; files already at the destination are skipped by the transfer."""
        now = self.clock()
        docs = [
            d
            for d in self.couch.docs(ids).values()
            if d is not None and tk.is_token(d) and d.get("state") == "done"
        ]
        for d in docs:
            tk.reset(d, now)
        return self._bulk_save(docs)

    def delete(self, night: str) -> list[str]:
        docs = self.select(night)
        for d in docs:
            d["_deleted"] = True
        return self._bulk_save(docs)

    def _bulk_save(self, docs: list[dict[str, Any]]) -> list[str]:
        ok: list[str] = []
        for chunk in chunked(docs, BATCH):
            for result, doc in zip(self.couch.bulk_docs(chunk), chunk, strict=False):
                if result.get("error") == "forbidden":  # the write check: still malformed
                    log.warning(
                        "%s: refused by the database's write check: %s; fix the "
                        "document and run this again",
                        doc["_id"],
                        result.get("reason"),
                    )
                elif result.get("error"):
                    log.warning("%s changed meanwhile; left as it is", doc["_id"])
                else:
                    ok.append(doc["_id"])
        return ok
