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


def _read(couch: Couch) -> dict[str, Any] | None:
    """The pause document; of a conflicted one (two writers on a cluster), the latest."""
    try:
        doc = couch.get(DOC_ID, conflicts="true")
    except NotFound:
        return None
    if not doc.get("_conflicts"):
        return doc
    return _latest(branches.live(couch.leaves(DOC_ID))) or doc


def _latest(leaves: list[dict[str, Any]]) -> dict[str, Any] | None:
    def key(leaf: dict[str, Any]) -> tuple[float, tuple[int, str]]:
        updated = leaf.get("updated")
        when = float(updated) if isinstance(updated, (int, float)) else 0.0
        return (when, branches.rank(leaf["_rev"]))

    return max(leaves, key=key, default=None)


def state(couch: Couch) -> dict[str, Any]:
    """``{"all", "streams", "updated", "by"}``: what is paused now."""
    return _state(_read(couch))


def paused(couch: Couch, stream: str | None = None) -> bool:
    """Must a worker (of ``stream``, if it has one) stop claiming?"""
    now = state(couch)
    return now["all"] or (stream is not None and stream in now["streams"])


def _update(
    couch: Couch, change: Callable[[dict[str, Any]], None], clock: Callable[[], float]
) -> dict[str, Any]:
    """Apply ``change`` to the pause's fields and save; on a 409 read again and re-apply.

    On a cluster a write can branch; the latest ``updated`` is the pause (what
    readers take), and the other live branches are removed after the write.
    """
    for _ in range(10):
        current = _read(couch)
        fields = _state(current)
        change(fields)
        doc: dict[str, Any] = {
            **(adopt(current) if current else {"_id": DOC_ID}),
            "type": DOC_TYPE,
            "all": fields["all"],
            "streams": sorted(set(fields["streams"])),
            "updated": clock(),
            "by": f"{_user()}@{socket.gethostname()}",
        }
        try:
            couch.put(doc)
        except Conflict:
            continue
        if couch.replicated:
            _tidy(couch, doc["_rev"])
        return _state(doc)
    raise Conflict(f"{DOC_ID}: too many concurrent changes; try again")


def _tidy(couch: Couch, rev: str) -> None:
    for leaf in branches.live(couch.leaves(DOC_ID)):
        if leaf["_rev"] != rev:
            try:
                couch.delete(DOC_ID, leaf["_rev"])
            except GridXferError as exc:
                log.debug("could not delete branch %s of %s: %s", leaf["_rev"], DOC_ID, exc)


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
