"""The service loop: lead or stand by, run a cycle per stream, stop cleanly.

A cycle is a list of steps (discover, reap, tape, staff, watch, report); a stop
request (SIGTERM, SIGINT, the kill file) is honoured between steps, so the step
under way finishes. Stopping then SIGTERMs the workers of the stream's nights
(they hand their tokens back) and releases the leader lease, so a standby takes
over at once rather than after a lease.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from GRID_XFER import pause
from GRID_XFER.app import App
from GRID_XFER.errors import ConfigError, DatabaseUnavailable, GridXferError, StorageError
from GRID_XFER.nightly import report as rp
from GRID_XFER.nightly.alerts import Alerter, AlertStore
from GRID_XFER.nightly.discover import Discovery, Found
from GRID_XFER.nightly.leader import Leadership
from GRID_XFER.nightly.nights import Night, window
from GRID_XFER.nightly.sinks import make_sinks
from GRID_XFER.nightly.watch import Counts, Watch, remaining
from GRID_XFER.nightly.workforce import Workforce
from GRID_XFER.nightly_config import StreamConfig

log = logging.getLogger(__name__)


class Stop(Exception):
    """Raised between steps once a stop was asked for."""


class LeadLost(Exception):
    """Raised between steps when the lease is no longer ours: stop acting at once."""


@dataclass
class StreamState:
    config: StreamConfig
    discovery: Discovery
    workforce: Workforce
    watch: Watch


@dataclass
class CycleReport:
    time: float
    leader: bool
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self, stream: str) -> str | None:
        """One line of what changed for ``stream`` in this cycle; None if nothing did."""
        s = self.streams.get(stream) or {}
        parts = []
        for night, found in (s.get("nights") or {}).items():
            done = {k: found.get(k) for k in ("created", "updated", "reopened")}
            said = [f"{len(v) if isinstance(v, list) else v} {k}" for k, v in done.items() if v]
            if said:
                parts.append(f"{night}: " + ", ".join(said))
        started = sum(x["count"] for x in (s.get("staffing") or {}).get("started", []))
        for what, n in (
            ("worker(s) started", started),
            ("token(s) reaped", s.get("reaped", 0)),
            ("tape token(s) moved on", sum((s.get("tape") or {}).values())),
            ("report(s) sent", len(s.get("reports") or [])),
        ):
            if n:
                parts.append(f"{n} {what}")
        return f"{stream}: " + "; ".join(parts) if parts else None


class Service:
    """`gridxfer nightly`: built from an App, run until stopped (or once)."""

    def __init__(
        self,
        app: App,
        *,
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
        on_cycle: Callable[[CycleReport], None] | None = None,
    ) -> None:
        self.app = app
        self.cfg = app.config.nightly
        if not self.cfg.streams:
            raise ConfigError("nightly.streams is empty: configure at least one stream")
        self.dry_run = dry_run
        self.clock = clock
        self.on_cycle = on_cycle
        self.couch = app.couch()
        self.pool = app.pool()
        self.leadership = Leadership(self.couch, lease=self.cfg.leader_lease, clock=clock)
        a = self.cfg.alerts
        self.sinks = make_sinks(a)
        self.alerter = Alerter(
            self.sinks,
            AlertStore(self.couch),  # a dry run reads it (what was sent), writes nothing
            repeat_seconds=a.repeat_hours * 3600,
            max_per_hour=a.max_per_hour,
            clock=clock,
            dry_run=dry_run,
        )
        storage = app.storage()
        self.streams = [
            StreamState(
                s,
                Discovery(
                    s,
                    storage,
                    algo=app.config.transfer.manifest,
                    rescan_seconds=self.cfg.rescan_seconds,
                    clock=clock,
                ),
                Workforce(app.config, s, dry_run=dry_run),
                Watch(s.name, self.alerter, a.stall_minutes * 60, a.samples),
            )
            for s in self.cfg.streams
        ]
        self._stop = threading.Event()
        self.stop_reason: str | None = None
        self.led = False  # do we act as the leader (then we stop our workers at the end)
        self._error_counts: dict[str, int] = {}  # night -> errors when codes were last read

    # -- stopping ----------------------------------------------------------------
    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            log.warning("stopping: %s; finishing the current step", reason)
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.stop(f"signal {signal.Signals(signum).name}")

        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, handler)

    def _check_stop(self, *, lead: bool = True) -> None:
        """Between steps: Stop once asked to stop; LeadLost once the lease is not ours
        (a step that overran it must not be followed by another)."""
        kill = self.cfg.kill_file
        if kill is not None and Path(kill).expanduser().exists():
            self.stop(f"kill file {kill} exists")
        if self._stop.is_set():
            raise Stop
        if lead and self.led and not self.dry_run and not self.leadership.held:
            raise LeadLost

    def _sleep(self, seconds: float) -> None:
        """Wait, waking for a stop (signal or kill file) within a second."""
        end = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < end:
            self._stop.wait(min(1.0, max(0.0, end - time.monotonic())))
            try:
                self._check_stop(lead=False)
            except Stop:
                return

    # -- running -----------------------------------------------------------------
    def run(self, *, once: bool = False) -> str:
        """Until stopped (or one cycle); the reason it ended."""
        try:
            while True:
                self._check_stop(lead=False)
                lead = self._lead()
                if lead:
                    try:
                        report = self.cycle()
                    except LeadLost:
                        log.warning("the leader lease ran out mid-cycle; standing by")
                        lead = self.led = False
                    else:
                        if self.on_cycle is not None:
                            self.on_cycle(report)
                if once:
                    break
                self._sleep(self.cfg.interval if lead else self._standby_wait())
        except Stop:
            pass
        finally:
            self._shut_down()
        return self.stop_reason or ("one cycle" if once else "finished")

    def _standby_wait(self) -> float:
        return min(self.cfg.interval, max(1.0, self.cfg.leader_lease / 4))

    def _lead(self) -> bool:
        """Hold the lease (nothing to hold in a dry run); a standby logs who leads."""
        if self.dry_run:
            return True
        try:
            held = self.leadership.renew() if self.led else self.leadership.acquire()
            if not held and self.led:
                log.warning("lost the leader lease; standing by")
                self.led = False
                held = self.leadership.acquire()
        except DatabaseUnavailable as exc:
            self._unreachable(str(exc))
            return False
        if held and not self.led:
            log.info("acting as the leader (lease %gs)", self.cfg.leader_lease)
        elif not held:
            try:
                current = self.leadership.current() or {}
            except DatabaseUnavailable as exc:
                self._unreachable(str(exc))
                return False
            log.info("standing by: %s leads", current.get("holder", "another service"))
        self.led = held
        return held

    def _unreachable(self, problem: str) -> None:
        self.streams[0].watch.reachable("database", problem)  # one database for all

    def _shut_down(self) -> None:
        """Release the lease; on a stop (not at the end of --once) stop the workers too."""
        if self.dry_run or not self.led:
            return
        for st in self.streams if self.stop_reason else ():
            nights = [n.name for n in window(st.config, self.clock())]
            try:
                left = st.workforce.stop(nights)
                if left:
                    log.warning("%s: %d worker(s) still running", st.config.name, left)
            except GridXferError as exc:
                log.warning("%s: stopping workers: %s", st.config.name, exc)
        try:
            self.leadership.release()
        except GridXferError as exc:
            log.warning("releasing the leader lease: %s", exc)
        self.led = False

    # -- one cycle ---------------------------------------------------------------
    def cycle(self) -> CycleReport:
        report = CycleReport(self.clock(), leader=self.led or self.dry_run)
        try:
            for st in self.streams:
                report.streams[st.config.name] = self._stream_cycle(st)
            self.streams[0].watch.reachable("database", None)
        except DatabaseUnavailable as exc:
            log.warning("database unreachable: %s", exc)
            self._unreachable(str(exc))
        return report

    def _stream_cycle(self, st: StreamState) -> dict[str, Any]:
        if not self.dry_run and not self.leadership.renew():
            raise LeadLost
        nights = window(st.config, self.clock())
        out: dict[str, Any] = {"nights": {}}
        waiting = self._discover(st, nights, out)
        self._check_stop()
        if not self.dry_run:
            out["reaped"] = sum(len(self._reap(n.name)) for n in nights)
            self._check_stop()
            out["tape"] = self._tape(nights)
            self._check_stop()
        counts = self.pool.counts()
        mine: dict[str, Counts] = {n.name: counts.get(n.name, {}) for n in nights}
        out["staffing"] = self._staff(st, mine)
        self._check_stop()
        for n in nights:
            errors = mine[n.name].get("error", {}).get("count", 0)
            if errors and self._error_counts.get(n.name) != errors:
                st.watch.errors(self.pool, n.name, self._codes(n.name))
                self._error_counts[n.name] = errors
            st.watch.deadline(n, mine[n.name], waiting.get(n.name, 0), self.clock())
        st.watch.progress(mine, self.clock())
        self._check_stop()
        out["reports"] = [
            n.name for n in nights if self._report(n, mine[n.name], waiting.get(n.name, 0))
        ]
        return out

    def _discover(
        self, st: StreamState, nights: list[Night], out: dict[str, Any]
    ) -> dict[str, int]:
        waiting: dict[str, int] = {}
        try:
            for n in nights:
                found = st.discovery.look(n)
                if not self.dry_run:
                    st.discovery.make_tokens(self.pool, n, found)
                else:
                    self._would_create(found)
                waiting[n.name] = len(found.waiting)
                out["nights"][n.name] = found.as_dict()
            st.watch.reachable("source", None)
        except StorageError as exc:
            log.warning("%s: source: %s", st.config.name, exc)
            st.watch.reachable("source", str(exc))
        return waiting

    def _would_create(self, found: Found) -> None:
        ids = [f"{found.night}_{r.spec.exposure}" for r in found.ready]
        existing = self.couch.docs(ids) if ids else {}
        for token_id in ids:
            verb = "update if changed" if existing.get(token_id) else "create"
            log.info("would %s token %s", verb, token_id)

    def _reap(self, night: str) -> list[str]:
        if self.couch.replicated:
            self.pool.sweep(night)
        return self.pool.reap(night)

    def _tape(self, nights: list[Night]) -> dict[str, int]:
        """Move staging and archiving tokens on (workers do it too; either may)."""
        out = {"staging": 0, "archiving": 0}
        waiting = [
            n.name for n in nights if self.pool.staging(n.name) or self.pool.archiving(n.name)
        ]
        if not waiting:
            return out
        staging, archive = self.app.staging(), self.app.archive()
        for night in waiting:
            out["staging"] += sum(staging.poll(self.pool, night).as_dict().values())
            out["archiving"] += sum(archive.poll(self.pool, night).as_dict().values())
        return out

    def _staff(self, st: StreamState, mine: dict[str, Counts]) -> dict[str, Any]:
        if pause.paused(self.couch, st.config.name):
            log.info("%s is paused: no workers started", st.config.name)
            return {"paused": True}
        # Work a worker can start on now: claimable tokens and the ones being worked.
        # Tokens waiting out a retry's back-off or a tape recall would only make idle
        # workers start and leave again each cycle.
        cap = st.config.max_workers * st.config.tokens_per_worker + 1
        backlogs = {
            night: self.pool.claimable_count(night, cap) + c.get("locked", {}).get("count", 0)
            if remaining(c)
            else 0
            for night, c in mine.items()
        }
        return st.workforce.staff(backlogs).as_dict()

    def _codes(self, night: str) -> dict[int, int]:
        by_code: dict[int, int] = {}
        for doc in self.pool.select(night, ["error"]):
            code = int((doc.get("error") or {}).get("code") or doc.get("exit_code") or 99)
            by_code[code] = by_code.get(code, 0) + 1
        return by_code

    def _report(self, night: Night, counts: Counts, waiting: int) -> bool:
        """Write the night's report when it is due, and send it if not yet sent."""
        now = self.clock()
        if not rp.due(counts, night, waiting, now):
            return False
        if self.dry_run:
            if self.couch.get_or_none(rp.report_id(night.name)) is None:
                doc = rp.build(self.pool, night, samples=self.cfg.alerts.samples, now=now)
                self.alerter.notify(f"morning report: night {night.name}", doc["text"])
            return False
        if self.couch.get_or_none(rp.report_id(night.name)) is None:
            doc = rp.build(self.pool, night, samples=self.cfg.alerts.samples, now=now)
            if rp.store(self.couch, doc):
                log.info("morning report for night %s written", night.name)
        doc_unsent = rp.unsent(self.couch, night.name)
        if doc_unsent is None:
            return False
        if not self.sinks:  # nowhere to send it: stored (and on the status page) only
            rp.mark_sent(self.couch, doc_unsent, now, "stored only")
            return True
        if self.alerter.notify(f"morning report: night {night.name}", doc_unsent["text"]):
            rp.mark_sent(self.couch, doc_unsent, now, ", ".join(s.name for s in self.sinks))
            return True
        return False
