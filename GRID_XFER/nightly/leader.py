"""The leader's lease: one active `gridxfer nightly` per database.

The lease is one document in the database. On a single copy its ``_rev`` check
settles every race. On a cluster two writes from the same revision can both be
kept (docs/tokens.md, "Exactly once on a cluster"), so, as with token claims,
a write is never taken as a won race: the writer reads every leaf from every
reachable copy (``Couch.leaves``) and :func:`judge` decides, the same way for
every contender, who holds it; a loser removes its own branch. The guarantee and
its argument are in docs/leadership.md.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from GRID_XFER import branches
from GRID_XFER.couch import Couch
from GRID_XFER.errors import (
    Conflict,
    DatabaseError,
    DatabaseUnavailable,
    GridXferError,
    InvalidInput,
)
from GRID_XFER.lease import adopt

log = logging.getLogger(__name__)

DOC_ID = "gridxfer-leader"
DOC_TYPE = "gridxfer-leader"
# What current() reports of the lease.
FIELDS = ("holder", "host", "pid", "expires", "acquired", "renewed")

Leaf = dict[str, Any]


def default_margin(lease: float) -> float:
    """How far clocks may disagree: a standby takes over only this long after expiry."""
    return min(30.0, lease / 10)


def _number(value: Any) -> float | None:
    """``value`` if it is a number (a hand-edited lease may hold anything), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def active(leaf: Leaf, now: float, margin: float) -> bool:
    """A lease whose holder may still be acting: not released, and not expired by
    more than ``margin`` (the holder's clock may lag ours by that much)."""
    expires = _number(leaf.get("expires"))
    return not leaf.get("released") and expires is not None and now < expires + margin


def went_ahead(leaf: Leaf) -> bool:
    """A holder that renewed: only one that had decided it held the lease does."""
    renewals = _number(leaf.get("renewals"))
    return renewals is not None and renewals > 0


def _seniority(leaf: Leaf) -> tuple[float, str]:
    return (_number(leaf.get("acquired")) or 0.0, str(leaf.get("holder")))


def _rank(leaf: Leaf) -> tuple[int, str]:
    return branches.rank(leaf["_rev"])


def judge(
    leaves: list[Leaf],
    holder: str,
    now: float,
    margin: float,
    *,
    owner_rev: str | None = None,
    dropped: Iterable[str] = (),
) -> branches.Verdict:
    """Who holds the lease, from every leaf of the document, for ``holder`` who just wrote.

    A *claimant* (``owner_rev`` None) holds it once its leaf is the only active one:
    it steps aside (deleting its leaf) for an active leaf of someone else that went
    ahead (renewed) or ranks higher in CouchDB's order, and waits for lower ones to
    step aside. An *owner* renewing a lease it held (``owner_rev``: its last
    confirmed revision) lost it if anyone else wrote on top of that revision or
    deleted it; active leaves of claimants are garbage to it. Leaves that are not
    active (expired by more than ``margin``, released) are garbage to everyone.
    """
    alive = branches.live(leaves)
    mine = [leaf for leaf in alive if leaf.get("holder") == holder and not leaf.get("released")]
    if not mine:
        return branches.Verdict("lost")
    me = max(mine, key=_rank)
    others = [leaf for leaf in alive if leaf is not me]
    rivals = [leaf for leaf in others if leaf.get("holder") != holder and active(leaf, now, margin)]
    garbage = [leaf["_rev"] for leaf in others if not any(leaf is r for r in rivals)]
    if owner_rev is not None:
        taken = any(
            leaf.get("holder") != holder and branches.descends(leaf, owner_rev) for leaf in others
        )
        if taken or branches.deleted_under(leaves, owner_rev, dropped):
            return branches.Verdict("lost", [me["_rev"]])
        # Two holders that both went ahead break the assumptions (clocks out of
        # step): the senior stays, the other steps aside; neither deletes the other.
        ahead = [r for r in rivals if went_ahead(r)]
        if any(_seniority(r) < _seniority(me) for r in ahead):
            return branches.Verdict("lost", [me["_rev"]])
        claims = [r["_rev"] for r in rivals if not went_ahead(r)]
        return branches.Verdict("own", garbage + claims, current=me)
    if any(went_ahead(r) or _rank(r) > _rank(me) for r in rivals):
        return branches.Verdict("lost", [me["_rev"]])
    return branches.Verdict("wait" if rivals else "own", garbage, current=me)


class Leadership:
    """This process's claim to be the one active service of a database."""

    def __init__(
        self,
        couch: Couch,
        *,
        lease: float,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
        doc_id: str = DOC_ID,
        margin: float | None = None,
    ) -> None:
        if not lease > 0:
            raise InvalidInput(f"leader lease must be positive, not {lease!r}")
        self.couch = couch
        self.lease = float(lease)
        self.margin = default_margin(self.lease) if margin is None else float(margin)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.doc_id = doc_id
        # How long a claimant on a cluster waits for lower claims to step aside.
        self.confirm = min(5.0, self.lease / 4)
        self._doc: Leaf | None = None  # our lease as last confirmed
        self._expires = 0.0
        self._dropped: set[str] = set()  # leaves we deleted: their tombstones are ours
        self._lock = threading.RLock()

    @property
    def held(self) -> bool:
        """We hold it and it has not expired by our clock: act only while this is True."""
        return self._doc is not None and self.clock() < self._expires

    @property
    def expires(self) -> float:
        """When our lease runs out by our clock (0 when we hold none)."""
        return self._expires if self._doc is not None else 0.0

    def acquire(self) -> bool:
        """Take the lease if it is free, expired or ours; True iff we hold it afterwards.

        A database that cannot be reached counts as not taking it (logged):
        the caller tries again at its next cycle.
        """
        with self._lock:
            try:
                return self._renew() if self.held else self._claim()
            except (DatabaseError, DatabaseUnavailable) as exc:
                log.warning("leader lease %s: %s", self.doc_id, exc)
                return self.held

    def renew(self) -> bool:
        """Extend our lease; False when we no longer hold it: stop acting at once.

        One that ran out by our clock is taken anew if nobody took it meanwhile.
        If the database cannot be reached we hold it until it runs out (:attr:`held`).
        """
        with self._lock:
            if self._doc is None:
                return False
            try:
                return self._renew() if self.held else self._claim()
            except (DatabaseError, DatabaseUnavailable) as exc:
                log.warning("could not renew leader lease %s: %s", self.doc_id, exc)
                return self.held

    def release(self) -> None:
        """Give the lease up, so a standby need not wait for it to run out. Never raises."""
        with self._lock:
            doc, self._doc, self._expires = self._doc, None, 0.0
            if doc is None:
                return
            now = self.clock()
            try:
                self.couch.put({**doc, "released": now, "expires": now})
                log.info("leader lease %s released by %s", self.doc_id, self.holder)
            except Conflict:
                log.info("leader lease %s was no longer ours to release", self.doc_id)
            except Exception as exc:  # it runs out on its own
                log.warning("could not release leader lease %s: %s", self.doc_id, exc)

    def current(self) -> dict[str, Any] | None:
        """The lease as the database has it (an expired one too); None if free or released."""
        if self.couch.replicated:
            leaves = [
                leaf for leaf in branches.live(self.couch.leaves(self.doc_id)) if _shown(leaf)
            ]
            now = self.clock()
            doc = max(
                leaves,
                key=lambda leaf: (active(leaf, now, self.margin), went_ahead(leaf), _rank(leaf)),
                default=None,
            )
        else:
            doc = self.couch.get_or_none(self.doc_id)
        if doc is None or not _shown(doc):
            return None
        return {k: doc.get(k) for k in FIELDS}

    # -- taking it -------------------------------------------------------------------
    def _fresh(self, now: float) -> Leaf:
        return {
            "_id": self.doc_id,
            "type": DOC_TYPE,
            "holder": self.holder,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired": now,
            "renewed": now,
            "renewals": 0,
            "expires": now + self.lease,
        }

    def _claim(self) -> bool:
        """Write a claim on top of a lease nobody may be acting under, then settle it."""
        now = self.clock()
        replicated = self.couch.replicated
        if replicated:
            alive = branches.live(self.couch.leaves(self.doc_id))
        else:
            doc = self.couch.get_or_none(self.doc_id)
            alive = [] if doc is None else [doc]
        if any(
            leaf.get("holder") != self.holder and active(leaf, now, self.margin) for leaf in alive
        ):
            return self._settled(False, None)
        claim = self._fresh(now)
        base = branches.winner(alive)
        if base is not None:
            claim["_rev"] = base["_rev"]
        try:
            self.couch.put(claim)
        except Conflict as exc:
            if not replicated:  # a resent PUT sees its own success as a 409
                current = self.couch.get_or_none(self.doc_id) if exc.retried else None
                return self._settled(current is not None and _same(current, claim), current)
        else:
            if not replicated:
                return self._settled(True, claim)
        return self._confirm()

    def _confirm(self) -> bool:
        """On a cluster: look at every leaf until ours is the only active one, or we lose."""
        delay, waited = 0.05, 0.0
        while True:
            verdict = judge(self.couch.leaves(self.doc_id), self.holder, self.clock(), self.margin)
            clean = self._delete(verdict.delete)
            if verdict.outcome == "own" and clean:
                return self._settled(True, verdict.current)
            if verdict.outcome == "lost":
                return self._settled(False, None)
            if waited >= self.confirm:
                # A lower claim that never stepped aside: a holder that went ahead first.
                if verdict.current is not None:
                    self._delete([verdict.current["_rev"]])
                log.info("leader lease %s: another claim stayed; standing by", self.doc_id)
                return self._settled(False, None)
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.8)

    # -- keeping it ------------------------------------------------------------------
    def _renew(self) -> bool:
        assert self._doc is not None
        now = self.clock()
        owner_rev = self._doc["_rev"]
        doc = {
            **self._doc,
            "renewed": now,
            "renewals": int(self._doc.get("renewals") or 0) + 1,
            "expires": now + self.lease,
        }
        try:
            self.couch.put(doc)
        except Conflict as exc:
            if not self.couch.replicated:
                current = self.couch.get_or_none(self.doc_id) if exc.retried else None
                return self._settled(current is not None and _same(current, doc), current)
        else:
            if not self.couch.replicated:
                return self._settled(True, doc)
        verdict = judge(
            self.couch.leaves(self.doc_id),
            self.holder,
            self.clock(),
            self.margin,
            owner_rev=owner_rev,
            dropped=self._dropped,
        )
        self._delete(verdict.delete)
        return self._settled(verdict.outcome == "own", verdict.current)

    def _settled(self, ours: bool, doc: Leaf | None) -> bool:
        if ours and doc is not None:
            was_held = self._doc is not None
            self._doc, self._expires = adopt(doc), float(doc["expires"])
            if not was_held:
                log.info("leader lease %s acquired by %s", self.doc_id, self.holder)
            return True
        if self._doc is not None:
            log.warning("leader lease %s lost by %s", self.doc_id, self.holder)
        self._drop()
        return False

    def _drop(self) -> None:
        self._doc, self._expires = None, 0.0

    def _delete(self, revs: list[str]) -> bool:
        """Delete leaves; False if any could not be (it moved on, or the database failed)."""
        clean = True
        for rev in revs:
            try:
                self.couch.delete(self.doc_id, rev)
                self._dropped.add(rev)
            except GridXferError as exc:  # a 409 included: that branch moved on
                log.debug("could not delete leaf %s of %s: %s", rev, self.doc_id, exc)
                clean = False
        return clean


def _same(current: Leaf, written: Leaf) -> bool:
    """Is ``current`` the write we sent (its answer lost and the PUT resent)?"""
    return all(current.get(k) == written.get(k) for k in ("holder", "acquired", "renewed"))


def _shown(leaf: Leaf) -> bool:
    return leaf.get("type") == DOC_TYPE and not leaf.get("released")
