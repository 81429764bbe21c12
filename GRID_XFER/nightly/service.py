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
from pathlib import Path
from types import FrameType

from GRID_XFER.app import App
from GRID_XFER.errors import ConfigError, DatabaseUnavailable, GridXferError
from GRID_XFER.nightly.alerts import Alert, Alerter, AlertStore
from GRID_XFER.nightly.cycle import Context, CycleReport, StreamCycle
from GRID_XFER.nightly.leader import Leadership
from GRID_XFER.nightly.sinks import make_sinks

log = logging.getLogger(__name__)

STOP_GRACE = 60.0  # seconds the workers get to hand their tokens back


class Stop(Exception):
    """Raised between steps once a stop was asked for."""


class LeadLost(Exception):
    """Raised between steps when the lease is no longer ours: stop acting at once."""


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
        ctx = Context(
            app, self.couch, self.pool, self.alerter, self.sinks, dry_run, clock, self._check_stop
        )
        self.streams = [StreamCycle(ctx, s) for s in self.cfg.streams]
        self._stop = threading.Event()
        self.stop_reason: str | None = None
        self.led = False  # do we act as the leader (then we stop our workers at the end)
        self._outage = False  # the last cycle met an unreachable database
        self.db_down: str | None = None  # why a standby could not read the lease

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
        held = self.leadership.renew() if self.led else self.leadership.acquire()
        if not held and self.led:
            log.warning("lost the leader lease; standing by")
            self.led = False
            held = self.leadership.acquire()
        if held and not self.led:
            log.info("acting as the leader (lease %gs)", self.cfg.leader_lease)
        elif not held:
            self._stand_by()
        self.led = held
        return held

    def _stand_by(self) -> None:
        """A standby only logs, except that the database does not answer: then nobody
        can lead, so each service says so (once per repeat) and, later, that it is back."""
        watch = self.streams[0].watch
        try:
            holder = (self.leadership.current() or {}).get("holder", "another service")
        except DatabaseUnavailable as exc:
            self.db_down = str(exc)
            log.warning("standing by: the database does not answer: %s", exc)
            watch.reachable("database", self.db_down)
            return
        except GridXferError as exc:
            holder = f"unknown ({exc})"
        if self.db_down is not None:
            self.db_down = None
            watch.reachable("database", None)
        log.info("standing by: %s leads", holder)

    def _shut_down(self) -> None:
        """Release the lease; on a stop (not at the end of --once) stop the workers too,
        every stream's at once, unless the lease is no longer ours (then the new
        leader has adopted them)."""
        if self.dry_run or not self.led:
            return
        if self.stop_reason and self.leadership.held:
            for st in self.streams:
                try:
                    st.workforce.signal_all()
                except GridXferError as exc:
                    log.warning("%s: stopping workers: %s", st.config.name, exc)
            for st in self.streams:
                try:
                    left = st.workforce.wait_all(STOP_GRACE)
                except GridXferError as exc:
                    log.warning("%s: stopping workers: %s", st.config.name, exc)
                    continue
                if left:
                    log.warning("%s: %d worker(s) still running", st.config.name, left)
        try:
            self.leadership.release()
        except GridXferError as exc:
            log.warning("releasing the leader lease: %s", exc)
        self.led = False

    # -- one cycle ---------------------------------------------------------------
    def cycle(self) -> CycleReport:
        """Every stream's steps. A failing step ends that stream's cycle, not the
        service: it is logged and alerted, and tried again next cycle."""
        report = CycleReport(self.clock(), leader=self.led or self.dry_run)
        for st in self.streams:
            key = f"{st.config.name}/cycle"
            try:
                if not self.dry_run and not self.leadership.renew():
                    raise LeadLost
                report.streams[st.config.name] = st.run()
            except DatabaseUnavailable as exc:
                log.warning("database unreachable: %s", exc)
                self._outage = True
                st.watch.reachable("database", str(exc))
                return report
            except (GridXferError, OSError) as exc:
                log.warning("%s: cycle failed: %s", st.config.name, exc)
                report.streams[st.config.name] = {"failed": str(exc)}
                self.alerter.raise_alert(
                    Alert(key, f"stream {st.config.name}: a cycle failed", str(exc), "critical")
                )
                continue
            self.alerter.resolve(key, f"stream {st.config.name} cycles again", "")
        if self._outage:
            # Workers could not renew their leases during the outage: reap none for
            # a lease from now (Pool.reap), as a worker's pool does after riding one out.
            self._outage = False
            self.pool.couch.recovered_at = time.monotonic()
        self.streams[0].watch.reachable("database", None)
        return report
