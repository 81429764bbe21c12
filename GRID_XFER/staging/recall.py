"""Tape recall: a worker asks for staging and moves on; a poll brings the token back.

A worker that claims a token whose source files are only on tape (NEARLINE)
does not wait for the recall, which can take hours: it requests staging, stores
the request in the token (state ``staging``, no lease) and moves on. Any worker
between claims, or ``gridxfer stage --poll``, polls the open requests and
returns each token to ``todo`` once all its files are online, or ends it in
error 22 (a file missing on tape, a failed recall) or 23 (not online within
``staging.timeout_seconds``).

A stored request is ``{method, id, parts: [{key, urls, t}], requested,
deadline}`` (parts: :mod:`GRID_XFER.staging.methods`), so one night-wide
request can serve many tokens.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from GRID_XFER import token as tk
from GRID_XFER.config import StagingConfig
from GRID_XFER.errors import Code, ConfigError, GridXferError, StorageError, TaskError
from GRID_XFER.lta import LtaClient
from GRID_XFER.staging.locality import (
    LOST,
    NEARLINE,
    PROBE,
    PROCESSES_WORTH,
    StateReport,
    may_be_on_tape,
    name_of,
    state_all,
    state_all_processes,
    token_urls,
)
from GRID_XFER.staging.methods import Gfal2Method, Method, Outcome, StagerMethod
from GRID_XFER.staging.poll import PENDING, PollReport, Verdict, run_poll
from GRID_XFER.storage import Storage
from GRID_XFER.urls import redact

log = logging.getLogger(__name__)

MAX_ROUNDS = 3  # staged, then evicted again before the transfer ran: give up after this


class Staging:
    """What workers and the CLI need: check a token, request staging, poll requests."""

    def __init__(
        self,
        storage: Storage,
        cfg: StagingConfig,
        *,
        stager: LtaClient | None = None,
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
                file=name_of(token, nearline[0]),
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
                file=name_of(token, url),
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
        return run_poll(self, pool, night, self.clock)

    def waiting(self, pool: Any, night: str | None) -> list[dict[str, Any]]:
        return list(pool.staging(night))

    def verdicts(
        self, docs: list[dict[str, Any]], now: float
    ) -> Iterator[tuple[dict[str, Any], Verdict]]:
        """One poll per method for all the parts of its tokens, then a verdict per token."""
        by_method: dict[str, list[dict[str, Any]]] = {}
        for d in docs:
            by_method.setdefault((d.get("stage_request") or {}).get("method", "?"), []).append(d)
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
                yield d, decide_recall(d, outcomes, now)

    def settle(self, doc: dict[str, Any], verdict: Verdict, now: float) -> None:
        if verdict.bucket == "staged":
            tk.staged(doc, now)
            return
        request = doc["stage_request"]
        assert verdict.code is not None
        tk.staging_failed(doc, verdict.code, verdict.message, now, file=verdict.file)
        if verdict.bucket == "timed_out":  # the recall is not wanted any more
            self.method(request.get("method")).abort(request.get("parts", []))

    def release(self, token: dict[str, Any]) -> None:
        """Release the pins a finished token's staging took (best effort)."""
        request = token.get("stage_request") or {}
        if not self.cfg.release_pins or not request.get("parts"):
            return
        try:
            self.method(request.get("method")).release(request["parts"])
        except (GridXferError, StorageError) as err:
            log.info("%s: releasing pins failed: %s", token.get("_id"), err)


def decide_recall(
    doc: dict[str, Any], outcomes: dict[tuple[str, str], Outcome], now: float
) -> Verdict:
    """A staging token's verdict from its files' outcomes: any failed file fails it
    (22), all online returns it to todo, past its deadline it times out (23)."""
    request = doc["stage_request"]
    mine = [(p["key"], u) for p in request.get("parts", []) for u in p["urls"]]
    results = [(u, outcomes.get((k, u), Outcome("pending"))) for k, u in mine]
    failed = [(u, o) for u, o in results if o.state == "failed"]
    if failed:
        url, o = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return Verdict(
            "failed",
            Code.NOT_STAGED,
            f"staging failed: {redact(url)}: {o.message}{more}",
            name_of(doc, url),
        )
    if all(o.state == "online" for _, o in results):
        return Verdict("staged")
    if now > request.get("deadline", float("inf")):
        waiting = sum(1 for _, o in results if o.state != "online")
        return Verdict(
            "timed_out",
            Code.STAGING_TIMEOUT,
            f"staging request {request.get('id')} ({request.get('method')}): {waiting} of "
            f"{len(results)} file(s) not online after "
            f"{now - request.get('requested', now):.0f} s",
        )
    return Verdict(PENDING)
