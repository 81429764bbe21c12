"""The two ways to recall files from tape, behind one :class:`Method` interface.

gfal2's bring_online / bring_online_poll (at most ``batch`` files per call) and
the LTA stager (:mod:`GRID_XFER.lta`, one request id for all the URLs). A method
hands back *parts* ``[{key, urls, t}]``: a part is one gfal2 bring-online token
(or the stager's request id) with its URLs, so one night-wide request can serve
many tokens, and a poll asks once per part, not once per token.
"""

from __future__ import annotations

import errno as E
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from GRID_XFER.errors import ConfigError, GridXferError, StagerError, StorageError
from GRID_XFER.lta import PENDING, SUCCESS, LtaClient
from GRID_XFER.staging.locality import chunks
from GRID_XFER.storage import Storage
from GRID_XFER.urls import redact

log = logging.getLogger(__name__)

# A recall requested this long ago that the storage does not know about is re-requested.
REREQUEST_AFTER = 30.0
_PENDING_ERRNOS = frozenset({E.EAGAIN, E.EINPROGRESS, E.EBUSY})


@dataclass
class Outcome:
    state: str  # "online", "pending" or "failed"
    message: str = ""


class Method(Protocol):
    name: str

    def request(self, urls: list[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Parts ``[{key, urls, t}]`` and the URLs refused at once (url -> reason)."""

    def poll(
        self, parts: dict[str, list[str]], ages: dict[str, float]
    ) -> dict[tuple[str, str], Outcome]:
        """Outcome per (part key, url) for every URL of ``parts`` (key -> urls)."""

    def abort(self, parts: list[dict[str, Any]]) -> None: ...

    def release(self, parts: list[dict[str, Any]]) -> None: ...


def gfal2_outcome(err: StorageError | None) -> Outcome:
    """What bring_online_poll's answer for one file means.

    ENOMSG (the storage has no request for it: not yet, or lost) and busy answers
    are pending; ENOENT is a file missing on tape; any other error a failed recall.
    """
    if err is None:
        return Outcome("online")
    if err.errno == E.ENOENT:
        return Outcome("failed", "missing on tape")
    if err.errno == E.ENOMSG or err.errno in _PENDING_ERRNOS or err.transient:
        return Outcome("pending", _reason(err))
    return Outcome("failed", _reason(err))


class Gfal2Method:
    """bring_online (asynchronous) and bring_online_poll, ``batch`` files per call."""

    name = "gfal2"

    def __init__(
        self,
        storage: Storage,
        *,
        pin: int,
        timeout: float,
        batch: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.pin = pin
        self.timeout = int(min(timeout, 2**31 - 1))
        self.batch = batch
        self.clock = clock

    def request(self, urls: list[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
        parts: list[dict[str, Any]] = []
        refused: dict[str, str] = {}
        for chunk in chunks(urls, self.batch):
            token, errors = self.storage.bring_online(chunk, pin=self.pin, timeout=self.timeout)
            for url, err in zip(chunk, errors, strict=False):
                if err is not None and err.errno not in _PENDING_ERRNOS:
                    refused[url] = _reason(err)
            parts.append({"key": token, "urls": chunk, "t": self.clock()})
        return parts, refused

    def poll(
        self, parts: dict[str, list[str]], ages: dict[str, float]
    ) -> dict[tuple[str, str], Outcome]:
        out: dict[tuple[str, str], Outcome] = {}
        for key, urls in parts.items():
            for chunk in chunks(sorted(set(urls)), self.batch):
                try:
                    errors = self.storage.bring_online_poll(chunk, key)
                except StorageError as err:  # the storage is away: ask again next time
                    log.warning("staging poll of %s failed: %s", redact(chunk[0]), err)
                    out.update({(key, u): Outcome("pending", str(err)) for u in chunk})
                    continue
                lost: list[str] = []
                for url, answer in zip(chunk, errors, strict=False):
                    out[(key, url)] = gfal2_outcome(answer)
                    if answer is not None and answer.errno == E.ENOMSG:
                        if ages.get(key, 0) > REREQUEST_AFTER:
                            lost.append(url)
                if lost:  # a recall that completes answers any later poll as online
                    self._rerequest(lost)
        return out

    def _rerequest(self, urls: list[str]) -> None:
        try:
            self.storage.bring_online(urls, pin=self.pin, timeout=self.timeout)
        except StorageError as err:
            log.warning("re-requesting staging of %s failed: %s", redact(urls[0]), err)

    def abort(self, parts: list[dict[str, Any]]) -> None:
        for p in parts:
            self.storage.abort_bring_online(p["urls"], p["key"])

    def release(self, parts: list[dict[str, Any]]) -> None:
        for p in parts:
            for url, err in zip(p["urls"], self.storage.release(p["urls"], p["key"]), strict=False):
                if err is not None:
                    log.info("release of %s: %s", redact(url), err)


def stager_outcome(rid: str, status: str, staged: bool) -> Outcome:
    """One file of stager request ``rid``, whose status is ``status``."""
    if staged:
        return Outcome("online")
    if status in PENDING:
        return Outcome("pending", status)
    if status in SUCCESS:
        return Outcome("failed", f"stager request {rid} succeeded without this file")
    return Outcome("failed", f"stager request {rid}: {status}")


class StagerMethod:
    """An LTA-style stager: one request id for all the URLs."""

    name = "stager"

    def __init__(self, client: LtaClient, *, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.clock = clock

    def request(self, urls: list[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
        rid = self.client.stage(urls)
        return [{"key": rid, "urls": list(urls), "t": self.clock()}], {}

    def poll(
        self, parts: dict[str, list[str]], ages: dict[str, float]
    ) -> dict[tuple[str, str], Outcome]:
        out: dict[tuple[str, str], Outcome] = {}
        for rid, urls in parts.items():
            try:
                status = self.client.status(rid)
                staged = set(self.client.staged_urls(rid))
            except (StagerError, ConfigError) as err:  # away, or credentials to fix: wait
                log.warning("staging poll of request %s failed: %s", rid, err)
                out.update({(rid, u): Outcome("pending", str(err)) for u in urls})
                continue
            for url in urls:
                out[(rid, url)] = stager_outcome(rid, status, url in staged)
        return out

    def abort(self, parts: list[dict[str, Any]]) -> None:
        for p in parts:
            try:
                self.client.abort(p["key"])
            except GridXferError as err:
                log.info("abort of stager request %s: %s", p["key"], err)

    def release(self, parts: list[dict[str, Any]]) -> None:
        pass  # the stager's pins expire on their own


def _reason(err: StorageError) -> str:
    return f"{err} [{E.errorcode.get(err.errno, err.errno)}]" if err.errno else str(err)
