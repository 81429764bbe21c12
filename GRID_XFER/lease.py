"""A claimed token: every save checks the token is still ours.

On a single copy (pouchdb-server, one CouchDB node) a save against our ``_rev``
is the whole check: a 409 means someone else wrote, and we re-read. On a
cluster a save can also be *accepted* by a minority of copies while another
writer's save from the same revision is accepted by others; so there the owner
also looks at every branch (:func:`GRID_XFER.branches.judge_owner`) before a
renewal that comes late, after every save that was only accepted, and with each
heartbeat, and removes the branches of claimants that lost. See docs/tokens.md.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from GRID_XFER import branches
from GRID_XFER import transitions as tr
from GRID_XFER.couch import Couch
from GRID_XFER.errors import Conflict, GridXferError, LeaseLost

log = logging.getLogger(__name__)

# Fields a read may carry that a write must not send back.
READ_ONLY = ("_revisions", "_conflicts", "_deleted_conflicts", "_revs_info")


def adopt(leaf: dict[str, Any]) -> dict[str, Any]:
    """A leaf as read from the server, made fit to save again."""
    return {k: v for k, v in leaf.items() if k not in READ_ONLY}


class LeaseSettings(Protocol):
    """The pool settings a lease works by (:class:`GRID_XFER.pool.PoolSettings`)."""

    @property
    def lease(self) -> float: ...

    @property
    def backoff_base(self) -> float: ...

    @property
    def backoff_max(self) -> float: ...

    @property
    def grace(self) -> float: ...


class Claimant(Protocol):
    """What a lease needs of the pool that claimed it: a protocol, so that this
    module does not import the pool (the pool imports it)."""

    @property
    def couch(self) -> Couch: ...

    @property
    def settings(self) -> LeaseSettings: ...

    @property
    def worker(self) -> dict[str, Any]: ...

    @property
    def clock(self) -> Callable[[], float]: ...


class Lease:
    """A claimed token; the work it stands for belongs to this worker until it ends."""

    def __init__(self, pool: Claimant, doc: dict[str, Any]) -> None:
        self.pool = pool
        self.doc = doc
        self.lock = threading.RLock()
        self.claim_id: str = doc.get("claim") or ""
        self.claim_rev: str = doc["_rev"]
        self.incarnation: str | None = doc.get("incarnation")
        # Revisions whose branches this owner deleted: their tombstones are its own.
        self._dropped: set[str] = set()
        self._pending: dict[str, dict[str, Any]] = {}

    @property
    def id(self) -> str:
        return str(self.doc["_id"])

    @property
    def _couch(self) -> Couch:
        return self.pool.couch

    def _ours(self, current: dict[str, Any]) -> bool:
        worker = current.get("worker")  # a hand-edited token may hold anything here
        return (
            current.get("state") in tr.HELD
            and isinstance(worker, dict)
            and worker.get("id") == self.pool.worker["id"]
            and current.get("claim") == self.claim_id
        )

    def _freed(self, current: dict[str, Any]) -> bool:
        """Our claim reaped back to todo and claimed by nobody since: still the work we did.

        Not after a reset or a delete and re-create: those start a new
        incarnation, which must be done anew.
        """
        return (
            current.get("state") == "todo"
            and not current.get("claim")
            and current.get("incarnation") == self.incarnation
        )

    # -- branches (clusters only) --------------------------------------------
    def tidy(self) -> None:
        """Check every branch: LeaseLost if someone took the token; delete the losers'."""
        if not self._couch.replicated:
            return
        with self.lock:
            verdict = branches.judge_owner(
                self._couch.leaves(self.id),
                self.claim_id,
                self.claim_rev,
                self.doc["_rev"],
                self._dropped,
            )
            if verdict.outcome == "overridden":
                raise LeaseLost(
                    f"token {self.id} was changed by someone else "
                    "(reset, reaped or deleted) while we held it"
                )
            assert verdict.current is not None
            if verdict.current["_rev"] != self.doc["_rev"]:
                # Our last write reached no copy we can reach: go on from our newest.
                self.doc = adopt(verdict.current)
            for rev in verdict.delete:
                self._delete(rev)

    def _delete(self, rev: str) -> None:
        try:
            self._couch.delete(self.id, rev)
            self._dropped.add(rev)
        except GridXferError as exc:  # a 409 included: that branch moved on
            log.debug("could not delete branch %s of %s: %s", rev, self.id, exc)

    def abandon(self) -> None:
        """After losing the token (its task stopped): take our branch out of the way.

        The branch that took the token from us stays, so the token stays; if that
        was a deletion (`tokens delete`), ours goes too, as the person meant.
        """
        if not self._couch.replicated:
            return
        try:
            leaves = self._couch.leaves(self.id)
        except GridXferError as exc:
            log.warning("could not look at %s after losing it: %s", self.id, exc)
            return
        alive = branches.live(leaves)
        ours = [leaf for leaf in alive if leaf.get("claim") == self.claim_id]
        if len(alive) > len(ours) or branches.deleted_under(leaves, self.claim_rev, self._dropped):
            for leaf in ours:
                self._delete(leaf["_rev"])

    # -- saving ------------------------------------------------------------------
    def _save(self, change: Callable[[dict[str, Any]], None], *, finishing: bool = False) -> None:
        """Apply ``change`` and save; on 409 re-read and re-apply if still ours.

        A finishing save (done/fail) also lands when the token was reaped back to
        todo meanwhile and nobody took it: the work is done, so keep it.
        """
        with self.lock:
            late = self.doc.get("lease_expires", 0) - self.pool.settings.grace < self.pool.clock()
            if late and not finishing and self.doc.get("state") in tr.HELD:
                self.tidy()  # a reaper may be at work: make sure the token is still ours
            doc = dict(self.doc)
            change(doc)
            self._attach_pending(doc)
            for _ in range(5):
                try:
                    write = self._couch.put(doc)
                except Conflict:
                    doc = self._current_for(finishing)
                    change(doc)
                    self._attach_pending(doc)
                    continue
                self._saved(doc)
                if not write.quorum and self._couch.replicated:
                    self._check_accepted(write.rev)
                return
            raise LeaseLost(f"token {self.id}: too many concurrent updates")

    def _current_for(self, finishing: bool) -> dict[str, Any]:
        """After a 409: the revision to apply our change to, or LeaseLost.

        Ours if the token is still ours; for a result (done, fail), also a todo
        the reaper made of it that nobody claimed since: the work is done, keep it.
        """
        if not self._couch.replicated:
            current = self._couch.get_or_none(self.id)
            if current is None:
                raise LeaseLost(f"token {self.id} was deleted") from None
            if not (self._ours(current) or (finishing and self._freed(current))):
                raise LeaseLost(
                    f"token {self.id} is no longer ours (now {current.get('state')})"
                ) from None
            return adopt(current)
        leaves = self._couch.leaves(self.id)
        verdict = branches.judge_owner(
            leaves, self.claim_id, self.claim_rev, self.doc["_rev"], self._dropped
        )
        if verdict.outcome == "own" and verdict.current is not None:
            for rev in verdict.delete:
                self._delete(rev)
            return adopt(verdict.current)
        alive = branches.live(leaves)
        ours = [leaf for leaf in alive if leaf.get("claim") == self.claim_id]
        freed = [
            leaf for leaf in alive if self._freed(leaf) and branches.descends(leaf, self.claim_rev)
        ]
        if finishing and freed and len(ours) + len(freed) == len(alive):
            for leaf in ours:
                self._delete(leaf["_rev"])
            return adopt(max(freed, key=lambda leaf: branches.rank(leaf["_rev"])))
        raise LeaseLost(f"token {self.id} is no longer ours (changed by someone else)")

    def _check_accepted(self, rev: str) -> None:
        """A save only some copies took: did someone else write from the same revision?"""
        verdict = branches.judge_owner(
            self._couch.leaves(self.id), self.claim_id, self.claim_rev, rev, self._dropped
        )
        if verdict.outcome == "overridden":
            self._delete(rev)
            raise LeaseLost(f"token {self.id} was changed by someone else while we saved")

    def _attach_pending(self, doc: dict[str, Any]) -> None:
        if self._pending:
            doc["_attachments"] = {**(doc.get("_attachments") or {}), **self._pending}

    def _saved(self, doc: dict[str, Any]) -> None:
        if self._pending:  # sent inline once; later saves carry stubs
            doc["_attachments"] = {
                name: (
                    {"stub": True, "content_type": att["content_type"]} if "data" in att else att
                )
                for name, att in doc["_attachments"].items()
            }
            self._pending.clear()
        self.doc = doc

    def heartbeat(self) -> None:
        self.tidy()
        self._save(lambda d: tr.renew(d, self.pool.clock(), self.pool.settings.lease))

    def update(self, **fields: Any) -> None:
        """Save progress (per-file results) and renew the lease with it."""

        def change(d: dict[str, Any]) -> None:
            d.update(fields)
            tr.renew(d, self.pool.clock(), self.pool.settings.lease)

        self._save(change)

    def done(self, **fields: Any) -> None:
        self._save(lambda d: tr.finish(d, self.pool.clock(), **fields), finishing=True)

    def fail(
        self,
        code: int,
        message: str,
        *,
        file: str | None = None,
        transient: bool = False,
        **fields: Any,
    ) -> None:
        s = self.pool.settings

        def change(d: dict[str, Any]) -> None:
            d.update(fields)
            tr.fail(
                d,
                code,
                message,
                self.pool.clock(),
                file=file,
                transient=transient,
                backoff_base=s.backoff_base,
                backoff_max=s.backoff_max,
            )

        self._save(change, finishing=True)

    def stage(self, request: dict[str, Any]) -> None:
        """Hand the token to the staging poll (state ``staging``) and give up the lease."""
        self._save(lambda d: tr.to_staging(d, request, self.pool.clock()))

    def archive(self, hold: float, **fields: Any) -> None:
        """Copied; wait for the tape-backed destination to migrate the files."""
        self._save(lambda d: tr.to_archiving(d, self.pool.clock(), hold, **fields), finishing=True)

    def release(self, reason: str) -> None:
        self._save(lambda d: tr.release(d, self.pool.clock(), reason))

    def attach(self, name: str, data: bytes, content_type: str = "text/plain") -> None:
        """Store a log with the next save (inline: one request, and a log never costs a result)."""
        with self.lock:
            self._pending[name] = {
                "content_type": content_type,
                "data": base64.b64encode(data).decode(),
            }
