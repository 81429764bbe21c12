"""Tape recall: file locality (state-all), stage requests, and the staging poll.

A worker that claims a token whose source files are only on tape (NEARLINE)
does not wait for the recall, which can take hours: it requests staging, stores
the request in the token (state ``staging``, no lease) and moves on. Any worker
between claims, or ``gridxfer stage --poll``, polls the open requests and
returns each token to ``todo`` once all its files are online, or ends it in
error 22 (a file missing on tape, a failed recall) or 23 (not online within
``staging.timeout_seconds``).

Two methods share one interface: gfal2's bring_online / bring_online_poll
(polled at most ``batch`` files per call) and an LTA-style XML-RPC stager
(:mod:`GRID_XFER.lta`). A stored request is
``{method, id, parts: [{key, urls, t}], requested, deadline}``: a part is one
gfal2 bring-online token (or the stager's request id) with the token's URLs
in it, so one night-wide request can serve many tokens.
"""

from __future__ import annotations

import errno as E
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from GRID_XFER import token as tk
from GRID_XFER.config import StagingConfig
from GRID_XFER.errors import Code, ConfigError, GridXferError, TaskError
from GRID_XFER.scan import join
from GRID_XFER.storage import Storage, StorageError, redact

log = logging.getLogger(__name__)

ONLINE, NEARLINE, BOTH = "ONLINE", "NEARLINE", "ONLINE_AND_NEARLINE"
UNAVAILABLE, LOST = "UNAVAILABLE", "LOST"
LOCALITIES = (ONLINE, NEARLINE, BOTH, UNAVAILABLE, LOST)
ON_DISK = frozenset({ONLINE, BOTH})
ON_TAPE = frozenset({NEARLINE, BOTH})
PROBLEMS = frozenset({UNAVAILABLE, LOST})
# Schemes that are never tape-backed: no question asked.
DISK_ONLY_SCHEMES = ("file://",)
# A recall requested this long ago that the storage does not know about is re-requested.
REREQUEST_AFTER = 30.0
MAX_ROUNDS = 3  # staged, then evicted again before the transfer ran: give up after this


# ----------------------------------------------------------------------------- locality


@dataclass(frozen=True)
class FileState:
    url: str
    state: str
    message: str = ""

    def as_dict(self) -> dict[str, str]:
        out = {"url": redact(self.url), "state": self.state}
        if self.message:
            out["message"] = self.message
        return out


def locality(storage: Storage, url: str) -> FileState:
    """One file's locality; a missing file is LOST, an unreachable one UNAVAILABLE."""
    try:
        value = storage.status(url).upper()
    except StorageError as err:
        if err.errno == E.ENOENT:
            return FileState(url, LOST, "no such file")
        return FileState(url, UNAVAILABLE, str(err))
    if value not in LOCALITIES:  # UNKNOWN, or a plugin's own word
        return FileState(url, UNAVAILABLE, f"storage says {value or 'nothing'}")
    return FileState(url, value)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def state_all(
    storage: Storage,
    urls: Iterable[str],
    *,
    threads: int = 16,
    batch: int = 50,
    executor: ThreadPoolExecutor | None = None,
) -> list[FileState]:
    """Locality of every URL, queried in parallel batches (one gfal2 context per thread).

    A long-lived ``executor`` keeps its threads, and so their gfal2 contexts and
    connections, from one call to the next.
    """
    urls = list(urls)
    if not urls:
        return []

    def run(chunk: list[str]) -> list[FileState]:
        return [locality(storage, u) for u in chunk]

    size = max(1, min(batch, -(-len(urls) // threads)))
    if len(urls) <= size:
        return run(urls)
    if executor is not None:
        return [fs for part in executor.map(run, _chunks(urls, size)) for fs in part]
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(urls)))) as ex:
        return [fs for part in ex.map(run, _chunks(urls, size)) for fs in part]


# Processes for a large state-all: an XRootD server answers the requests of one
# connection one after the other, and all threads of a process share one
# connection per server, so threads only help while the client's CPU is the limit.
# Each process has its own connection. Worth its start-up (~0.5 s) only when the
# answers are slow: decided from the first PROBE files.
PROBE = 32
PROCESSES_WORTH = 1.5  # seconds the rest would take in threads


def _chunk_states(urls: list[str], threads: int) -> list[tuple[str, str, str]]:
    """Run in a child process: its own gfal2 context(s) and XRootD connection."""
    global _CHILD_STORAGE
    if _CHILD_STORAGE is None:
        _CHILD_STORAGE = Storage()
    return [(f.url, f.state, f.message) for f in state_all(_CHILD_STORAGE, urls, threads=threads)]


_CHILD_STORAGE: Storage | None = None


def state_all_processes(urls: list[str], *, processes: int, threads: int) -> list[FileState]:
    """state_all spread over ``processes`` fresh processes (forkserver: none inherits
    this process's gfal2/XRootD threads)."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["GRID_XFER.staging"])  # children then import nothing
    size = -(-len(urls) // (processes * 4))  # a few chunks each, so none waits on a slow one
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=processes, mp_context=ctx) as ex:
        parts = ex.map(_chunk_states, _chunks(urls, size), [1] * len(urls))
        return [FileState(*t) for part in parts for t in part]


@dataclass
class StateReport:
    """GRID_LRT's state_all and percent_staged in one: states plus a summary."""

    files: list[FileState]
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in LOCALITIES}
        for f in self.files:
            out[f.state] = out.get(f.state, 0) + 1
        return out

    def percent(self, states: frozenset[str]) -> float:
        if not self.files:
            return 0.0
        return round(100.0 * sum(1 for f in self.files if f.state in states) / len(self.files), 2)

    @property
    def problems(self) -> list[FileState]:
        return [f for f in self.files if f.state in PROBLEMS]

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": len(self.files),
            "counts": self.counts,
            "percent_online": self.percent(ON_DISK),
            "percent_on_tape": self.percent(ON_TAPE),
            "seconds": round(self.seconds, 3),
            "files": [f.as_dict() for f in self.files],
        }


def token_urls(token: dict[str, Any]) -> list[tuple[str, str]]:
    """(file name, source URL) of each file of a token."""
    src = token.get("source") or ""
    return [(f["name"], f.get("url") or join(src, f["name"])) for f in token.get("files", [])]


def destination_urls(token: dict[str, Any]) -> list[tuple[str, str]]:
    dst = token.get("destination") or ""
    return [(f["name"], join(dst, f["name"])) for f in token.get("files", [])]


def may_be_on_tape(url: str) -> bool:
    return not url.startswith(DISK_ONLY_SCHEMES)


# ----------------------------------------------------------------------------- methods


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


_PENDING_ERRNOS = frozenset({E.EAGAIN, E.EINPROGRESS, E.EBUSY})


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
        for chunk in _chunks(urls, self.batch):
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
            for chunk in _chunks(sorted(set(urls)), self.batch):
                try:
                    errors = self.storage.bring_online_poll(chunk, key)
                except StorageError as err:  # the storage is away: ask again next time
                    log.warning("staging poll of %s failed: %s", redact(chunk[0]), err)
                    out.update({(key, u): Outcome("pending", str(err)) for u in chunk})
                    continue
                lost = []
                for url, err in zip(chunk, errors, strict=False):
                    if err is None:
                        out[(key, url)] = Outcome("online")
                    elif err.errno == E.ENOENT:
                        out[(key, url)] = Outcome("failed", "missing on tape")
                    elif err.errno == E.ENOMSG or err.errno in _PENDING_ERRNOS or err.transient:
                        # ENOMSG: the storage has no request for it (not yet, or lost).
                        out[(key, url)] = Outcome("pending", _reason(err))
                        if err.errno == E.ENOMSG and ages.get(key, 0) > REREQUEST_AFTER:
                            lost.append(url)
                    else:
                        out[(key, url)] = Outcome("failed", _reason(err))
                if lost:  # a recall that completes answers any later poll as online
                    try:
                        self.storage.bring_online(lost, pin=self.pin, timeout=self.timeout)
                    except StorageError as err:
                        log.warning("re-requesting staging of %s failed: %s", redact(lost[0]), err)
        return out

    def abort(self, parts: list[dict[str, Any]]) -> None:
        for p in parts:
            self.storage.abort_bring_online(p["urls"], p["key"])

    def release(self, parts: list[dict[str, Any]]) -> None:
        for p in parts:
            for url, err in zip(p["urls"], self.storage.release(p["urls"], p["key"]), strict=False):
                if err is not None:
                    log.info("release of %s: %s", redact(url), err)


class StagerMethod:
    """An LTA-style stager: one request id for all the URLs."""

    name = "stager"

    def __init__(self, client: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.client = client  # GRID_XFER.lta.LtaClient
        self.clock = clock

    def request(self, urls: list[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
        rid = self.client.stage(urls)
        return [{"key": rid, "urls": list(urls), "t": self.clock()}], {}

    def poll(
        self, parts: dict[str, list[str]], ages: dict[str, float]
    ) -> dict[tuple[str, str], Outcome]:
        from GRID_XFER.errors import StagerError
        from GRID_XFER.lta import PENDING, SUCCESS

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
                if url in staged:
                    out[(rid, url)] = Outcome("online")
                elif status in PENDING:
                    out[(rid, url)] = Outcome("pending", status)
                elif status in SUCCESS:
                    out[(rid, url)] = Outcome(
                        "failed", f"stager request {rid} succeeded without this file"
                    )
                else:
                    out[(rid, url)] = Outcome("failed", f"stager request {rid}: {status}")
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


# ----------------------------------------------------------------------------- service


@dataclass
class PollReport:
    staged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # archive confirmed
    conflicts: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: (len(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()}


class Staging:
    """What workers and the CLI need: check a token, request staging, poll requests."""

    def __init__(
        self,
        storage: Storage,
        cfg: StagingConfig,
        *,
        stager: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.cfg = cfg
        self.clock = clock
        self._stager = stager
        self._methods: dict[str, Method] = {}
        self._executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.cfg.threads, thread_name_prefix="state"
            )
        return self._executor

    def method(self, name: str | None = None) -> Method:
        name = name or self.cfg.method
        if name not in self._methods:
            if name == "gfal2":
                self._methods[name] = Gfal2Method(
                    self.storage,
                    pin=self.cfg.pin_seconds,
                    timeout=self.cfg.timeout_seconds,
                    batch=self.cfg.batch,
                    clock=self.clock,
                )
            elif name == "stager":
                if self._stager is None:
                    from GRID_XFER.lta import LtaClient

                    self._stager = LtaClient(
                        self.cfg.stager_url,
                        timeout=self.cfg.stager_timeout,
                        retries=self.cfg.stager_retries,
                    )
                self._methods[name] = StagerMethod(self._stager, clock=self.clock)
            else:
                raise ConfigError(f"staging.method: unknown method {name!r} (gfal2 or stager)")
        return self._methods[name]

    # -- locality ---------------------------------------------------------------
    def report(self, urls: Iterable[str], *, processes: int | None = None) -> StateReport:
        """Locality of every URL: threads, or processes when the storage answers slowly."""
        started = time.monotonic()
        urls = list(urls)
        processes = self.cfg.processes if processes is None else processes
        files = state_all(
            self.storage, urls[:PROBE], threads=self.cfg.threads, executor=self._pool()
        )
        rest = urls[PROBE:]
        per_file = (time.monotonic() - started) / max(1, len(files))
        if rest and processes > 1 and per_file * len(rest) > PROCESSES_WORTH:
            log.debug(
                "%d more files at %.1f ms each: %d processes", len(rest), per_file * 1e3, processes
            )
            files += state_all_processes(rest, processes=processes, threads=self.cfg.threads)
        elif rest:
            files += state_all(self.storage, rest, threads=self.cfg.threads, executor=self._pool())
        return StateReport(files, time.monotonic() - started)

    def needs_staging(self, token: dict[str, Any]) -> list[str]:
        """The token's source URLs to recall first (empty: copy now).

        Files only on tape, plus any file the storage says is gone (so the
        request fails as 22 naming it). Unreachable storage is left to the copy.
        """
        if not self.cfg.check:
            return []
        urls = [u for _, u in token_urls(token) if may_be_on_tape(u)]
        states = state_all(self.storage, urls, threads=self.cfg.threads, executor=self._pool())
        nearline = [s.url for s in states if s.state == NEARLINE]
        if not nearline:
            return []
        if token.get("stage_rounds", 0) >= MAX_ROUNDS:
            raise TaskError(
                Code.NOT_STAGED,
                f"staged {MAX_ROUNDS} times, but files were back on "
                f"tape only before the copy ran (pins too short?): "
                f"{redact(nearline[0])}",
                file=_name_of(token, nearline[0]),
                transient=False,
            )
        return nearline + [s.url for s in states if s.state == LOST]

    def prepare(
        self, token: dict[str, Any], tlog: logging.Logger | None = None
    ) -> dict[str, Any] | None:
        """For a claimed token: None to copy now, or the stage request it must wait for.

        Raises TaskError 22 when the storage or the stager refuses the request
        (a file missing on tape, rejected credentials), 1 for missing credentials.
        """
        urls = self.needs_staging(token)
        if not urls:
            return None
        try:
            request, refused = self.request(urls)
        except GridXferError as exc:
            code = Code.CONFIG if exc.code == Code.CONFIG else Code.NOT_STAGED
            raise TaskError(
                code,
                f"staging request failed: {exc}",
                transient=bool(getattr(exc, "transient", False)),
            ) from None
        if refused:
            url, reason = next(iter(refused.items()))
            self.method(request["method"]).abort(request["parts"])
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            raise TaskError(
                Code.NOT_STAGED,
                f"staging failed: {redact(url)}: {reason}{more}",
                file=_name_of(token, url),
                transient=False,
            )
        (tlog or log).info(
            "%d file(s) on tape only; staging request %s (%s)",
            len(urls),
            request["id"],
            request["method"],
        )
        return request

    def request(
        self, urls: list[str], method: str | None = None, request_id: str | None = None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Request staging: the request to store in tokens, and URLs refused at once."""
        m = self.method(method)
        parts, refused = m.request(urls)
        now = self.clock()
        rid = request_id or (
            parts[0]["key"] if m.name == "stager" else f"gfal2-{uuid.uuid4().hex[:12]}"
        )
        request = {
            "method": m.name,
            "id": str(rid),
            "parts": parts,
            "requested": now,
            "deadline": now + self.cfg.timeout_seconds,
            "files": len(urls),
        }
        return request, refused

    @staticmethod
    def for_token(request: dict[str, Any], urls: Iterable[str]) -> dict[str, Any]:
        """The share of a (night-wide) request that concerns one token's URLs."""
        mine = set(urls)
        parts = [{**p, "urls": [u for u in p["urls"] if u in mine]} for p in request["parts"]]
        parts = [p for p in parts if p["urls"]]
        return {**request, "parts": parts, "files": sum(len(p["urls"]) for p in parts)}

    # -- the poll ---------------------------------------------------------------
    def poll(self, pool: Any, night: str | None = None) -> PollReport:
        """Move staging tokens on: todo when online, error 22/23 when not to be."""
        report = PollReport()
        docs = pool.staging(night)
        if not docs:
            return report
        by_method: dict[str, list[dict[str, Any]]] = {}
        for d in docs:
            by_method.setdefault((d.get("stage_request") or {}).get("method", "?"), []).append(d)
        now = self.clock()
        for name, group in by_method.items():
            try:
                m = self.method(name)
            except ConfigError as err:
                log.error("cannot poll %d staging token(s): %s", len(group), err)
                continue
            parts: dict[str, list[str]] = {}
            ages: dict[str, float] = {}
            for d in group:
                for p in d["stage_request"].get("parts", []):
                    parts.setdefault(p["key"], []).extend(p["urls"])
                    ages[p["key"]] = now - p.get("t", now)
            outcomes = m.poll(parts, ages)
            for d in group:
                self._settle(pool, m, d, outcomes, now, report)
        return report

    def _settle(
        self,
        pool: Any,
        m: Method,
        doc: dict[str, Any],
        outcomes: dict[tuple[str, str], Outcome],
        now: float,
        report: PollReport,
    ) -> None:
        request = doc["stage_request"]
        mine = [(p["key"], u) for p in request.get("parts", []) for u in p["urls"]]
        results = [(u, outcomes.get((k, u), Outcome("pending"))) for k, u in mine]
        failed = [(u, o) for u, o in results if o.state == "failed"]
        if failed:
            url, o = failed[0]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            tk.staging_failed(
                doc,
                Code.NOT_STAGED,
                f"staging failed: {redact(url)}: {o.message}{more}",
                now,
                file=_name_of(doc, url),
            )
            bucket = report.failed
        elif all(o.state == "online" for _, o in results):
            tk.staged(doc, now)
            bucket = report.staged
        elif now > request.get("deadline", float("inf")):
            waiting = sum(1 for _, o in results if o.state != "online")
            tk.staging_failed(
                doc,
                Code.STAGING_TIMEOUT,
                f"staging request {request.get('id')} ({m.name}): {waiting} of "
                f"{len(results)} file(s) not online after "
                f"{now - request.get('requested', now):.0f} s",
                now,
            )
            m.abort(request.get("parts", []))
            bucket = report.timed_out
        else:
            report.pending.append(doc["_id"])
            return
        if pool.save(doc):
            bucket.append(doc["_id"])
            log.info(
                "%s: %s",
                doc["_id"],
                doc["history"][-1]["event"]
                if doc["state"] != "error"
                else f"error {doc['error']['code']}: {doc['error']['message']}",
            )
        else:
            report.conflicts += 1  # another poller got there first

    def release(self, token: dict[str, Any]) -> None:
        """Release the pins a finished token's staging took (best effort)."""
        request = token.get("stage_request") or {}
        if not self.cfg.release_pins or not request.get("parts"):
            return
        try:
            self.method(request.get("method")).release(request["parts"])
        except (GridXferError, StorageError) as err:
            log.info("%s: releasing pins failed: %s", token.get("_id"), err)


def _name_of(token: dict[str, Any], url: str) -> str | None:
    return next((name for name, u in token_urls(token) if u == url), None)
