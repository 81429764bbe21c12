"""A central pause: one document in the database that makes workers stop claiming.

``gridxfer pause`` writes it and every worker reads it before it claims (at most
every few seconds, :class:`PauseWatch`), so a whole site's workers stop taking
new tokens without anyone reaching the batch nodes. A pause holds either every
stream (``all``) or named streams; a worker started with ``--stream NAME`` obeys
both, one without a stream only ``all``. Tokens in progress are finished.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from GRID_XFER import branches
from GRID_XFER.couch import Couch
from GRID_XFER.errors import Conflict, DatabaseUnavailable, GridXferError, NotFound
from GRID_XFER.lease import adopt

log = logging.getLogger(__name__)

DOC_ID = "gridxfer-pause"
DOC_TYPE = "gridxfer-pause"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for our uid (containers)
        return str(os.getuid())


def _state(doc: dict[str, Any] | None) -> dict[str, Any]:
    """The pause as plain fields, whatever the document holds (a hand edit included)."""
    doc = doc or {}
    streams = doc.get("streams")
    return {
        "all": doc.get("all") is True,
        "streams": sorted({s for s in streams if isinstance(s, str)})
        if isinstance(streams, list)
        else [],
        "updated": doc.get("updated"),
        "by": doc.get("by"),
    }


def _latest(leaves: list[dict[str, Any]]) -> dict[str, Any] | None:
    def key(leaf: dict[str, Any]) -> tuple[float, tuple[int, str]]:
        updated = leaf.get("updated")
        when = float(updated) if isinstance(updated, (int, float)) else 0.0
        return (when, branches.rank(leaf["_rev"]))

    return max(leaves, key=key, default=None)


def _merge(couch: Couch, leaves: list[dict[str, Any]]) -> dict[str, Any]:
    """One pause from the branches two writers left on a cluster.

    What each branch changed since their common ancestor is applied to it, a
    pause winning where they disagree, so that neither writer's change is lost.
    Without the ancestor (compacted away) the branches' union: paused if any says so.
    """
    states = [_state(leaf) for leaf in leaves]
    paths = [branches.path(leaf) for leaf in leaves]
    common = next((rev for rev in paths[0] if all(rev in p for p in paths[1:])), None)
    base = None
    if common is not None:
        try:
            base = _state(couch.get(DOC_ID, rev=common))
        except GridXferError as exc:
            log.debug("no common ancestor %s of %s: %s", common, DOC_ID, exc)
    if base is None:
        paused_all = any(s["all"] for s in states)
        streams = set().union(*(s["streams"] for s in states))
    else:
        moved = [s["all"] for s in states if s["all"] != base["all"]]
        paused_all = any(moved) if moved else base["all"]
        before = set(base["streams"])
        added = set().union(*(set(s["streams"]) - before for s in states))
        removed = set().union(*(before - set(s["streams"]) for s in states))
        streams = (before - removed) | added
    latest = _state(_latest(leaves))
    return {**latest, "all": paused_all, "streams": sorted(streams)}


def _read(couch: Couch) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The revision to write on and the pause's fields (of a conflicted one, merged)."""
    try:
        doc = couch.get(DOC_ID, conflicts="true")
    except NotFound:
        return None, _state(None)
    if not doc.get("_conflicts"):
        return doc, _state(doc)
    leaves = branches.live(couch.leaves(DOC_ID))
    if len(leaves) < 2:
        return (leaves or [doc])[0], _state((leaves or [doc])[0])
    return _latest(leaves), _merge(couch, leaves)


def state(couch: Couch) -> dict[str, Any]:
    """``{"all", "streams", "updated", "by"}``: what is paused now."""
    return _read(couch)[1]


def paused(couch: Couch, stream: str | None = None) -> bool:
    """Must a worker (of ``stream``, if it has one) stop claiming?"""
    now = state(couch)
    return bool(now["all"] or (stream is not None and stream in now["streams"]))


def _document(base: dict[str, Any] | None, fields: dict[str, Any]) -> dict[str, Any]:
    return {
        **(adopt(base) if base else {"_id": DOC_ID}),
        "type": DOC_TYPE,
        "all": fields["all"],
        "streams": sorted(set(fields["streams"])),
        "updated": fields["updated"],
        "by": fields["by"],
    }


def _update(
    couch: Couch, change: Callable[[dict[str, Any]], None], clock: Callable[[], float]
) -> dict[str, Any]:
    """Apply ``change`` to the pause's fields and save; on a 409 read again and re-apply."""
    for _ in range(10):
        base, fields = _read(couch)
        change(fields)
        fields.update(updated=clock(), by=f"{_user()}@{socket.gethostname()}")
        doc = _document(base, fields)
        try:
            couch.put(doc)
        except Conflict:
            continue
        return _settle(couch) if couch.replicated else _state(doc)
    raise Conflict(f"{DOC_ID}: too many concurrent changes; try again")


def _settle(couch: Couch) -> dict[str, Any]:
    """On a cluster, after a write: merge whatever branches a race left into one.

    A writer that saw no other branch is done; a later one sees its branch and
    merges it (:func:`_merge`), so every writer's change is kept.
    """
    for _ in range(5):
        leaves = branches.live(couch.leaves(DOC_ID))
        if len(leaves) < 2:
            return _state(leaves[0] if leaves else None)
        latest = _latest(leaves)
        try:
            couch.put(_document(latest, _merge(couch, leaves)))
        except Conflict:
            continue
        for leaf in leaves:
            if leaf is not latest:
                try:
                    couch.delete(DOC_ID, leaf["_rev"])
                except GridXferError as exc:
                    log.debug("could not delete branch %s of %s: %s", leaf["_rev"], DOC_ID, exc)
    return state(couch)


def pause(
    couch: Couch, stream: str | None = None, *, clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """Pause every stream (``stream`` None) or one; the pause's state afterwards."""

    def change(fields: dict[str, Any]) -> None:
        if stream is None:
            fields["all"] = True
        else:
            fields["streams"] = [*fields["streams"], stream]

    result = _update(couch, change, clock)
    log.info("paused %s", "every stream" if stream is None else f"stream {stream}")
    return result


def resume(
    couch: Couch, stream: str | None = None, *, clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """Resume everything (``stream`` None: ``all`` and every stream) or one stream.

    Resuming one stream while every stream is paused leaves it paused: the
    result's ``note`` says so.
    """

    def change(fields: dict[str, Any]) -> None:
        if stream is None:
            fields["all"], fields["streams"] = False, []
        else:
            fields["streams"] = [s for s in fields["streams"] if s != stream]

    result = _update(couch, change, clock)
    if stream is not None and result["all"]:
        result["note"] = (
            f"every stream is paused, so {stream} stays paused; "
            "`gridxfer resume` without a stream resumes them all"
        )
        log.warning("%s", result["note"])
    else:
        log.info("resumed %s", "every stream" if stream is None else f"stream {stream}")
    return result


class PauseWatch:
    """A worker's view of the pause, read at most every ``every`` seconds.

    A pause document that cannot be read counts as no pause (logged): a
    database error must not stop a site's work. An outage is not such an
    error: it propagates as it would from the claim that follows.
    """

    def __init__(self, couch: Couch, stream: str | None, every: float) -> None:
        self.couch = couch
        self.stream = stream
        self.every = every
        self._checked: float | None = None
        self._paused = False

    def paused(self) -> bool:
        now = time.monotonic()
        if self._checked is not None and now - self._checked < self.every:
            return self._paused
        try:
            self._paused = paused(self.couch, self.stream)
        except DatabaseUnavailable:
            raise
        except GridXferError as exc:
            log.warning("could not read the pause (%s); going on as not paused", exc)
            self._paused = False
        self._checked = now
        return self._paused
