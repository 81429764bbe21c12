"""The worker loop: claim, run the task under a renewed lease, record, repeat.

Shutdown follows the batch systems: the first SIGTERM/SIGINT cancels the task in
progress and hands its token back to todo without counting an attempt (the
work was not at fault); a second signal exits at once, leaving the lease to
expire and be reaped. The first signal also ends any wait for the database: a
worker riding out an outage stops at once (its token, if the database cannot
take it back, is reaped once its lease runs out).
"""

from __future__ import annotations

import io
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from GRID_XFER.errors import Code, DatabaseUnavailable, Interrupted, LeaseLost, TaskError
from GRID_XFER.lease import Lease
from GRID_XFER.pause import PauseWatch
from GRID_XFER.pool import Pool, attachments
from GRID_XFER.task import Task, TaskContext

if TYPE_CHECKING:
    from GRID_XFER.staging import Archive, Staging

log = logging.getLogger(__name__)


def batch_job_id(env: dict[str, str] | None = None) -> str | None:
    """The batch system's id for this worker (Slurm arrays as JOBID_TASKID)."""
    env = dict(os.environ) if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    for key in (
        "SLURM_JOB_ID",
        "GRIDXFER_JOB_ID",
        "CONDOR_JOB_ID",
        "DIRACJOBID",
        "GLITE_WMS_JOBID",
        "PBS_JOBID",
    ):
        if env.get(key):
            return env[key]
    return None


@dataclass
class WorkerReport:
    processed: int = 0
    done: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0
    staging: int = 0  # handed to the staging poll
    archiving: int = 0  # copied, waiting for tape migration
    signal: int | None = None
    paused: bool = False  # stopped claiming (and, with idle_exit, ended) on `gridxfer pause`
    tokens: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "tokens"}


class Worker:
    def __init__(
        self,
        pool: Pool,
        task: Task,
        *,
        night: str | None = None,
        max_tokens: int | None = None,
        max_time: float | None = None,
        idle_exit: bool = False,
        idle_sleep: float = 10.0,
        heartbeat: float = 60.0,
        reap_every: float = 60.0,
        staging: Staging | None = None,
        archive: Archive | None = None,
        poll_every: float = 60.0,
        stream: str | None = None,
    ) -> None:
        self.pool = pool
        self.task = task
        self.night = night
        self.max_tokens = max_tokens
        self.max_time = max_time
        self.idle_exit = idle_exit
        self.idle_sleep = idle_sleep
        self.heartbeat = heartbeat
        self.reap_every = reap_every
        self.staging = staging
        self.archive = archive if archive is not None and archive.enabled else None
        self.poll_every = poll_every
        self.stream = stream
        self.pause = PauseWatch(pool.couch, stream, min(idle_sleep, 5.0))
        self._stop = threading.Event()
        self._signal: int | None = None
        self._cancelled = threading.Event()
        self.report = WorkerReport()

    # -- signals -----------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT reach a relay thread at once, through the wakeup fd.

        Python runs handlers in the main thread between bytecodes: not while it
        blocks in a gfal2 call, and possibly while it holds a lock stop() needs.
        The C-level handler writes the signal number to a pipe whatever the main
        thread is doing, and the relay thread does the stopping.
        """
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)

        def relay() -> None:
            while data := os.read(read_end, 64):
                for signum in data:
                    if signum not in (signal.SIGTERM, signal.SIGINT):
                        continue
                    if self._signal is not None:
                        os._exit(128 + signum)  # second signal: now, as promised
                    self.stop(signum)

        threading.Thread(target=relay, name="signal-relay", daemon=True).start()
        signal.set_wakeup_fd(write_end)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Nothing to do here: the relay thread got the signal through the wakeup fd."""

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a warm shutdown (callable from any thread)."""
        self._signal = signum
        self._stop.set()
        self._cancelled.set()
        self.pool.couch.stopping.set()  # no more waiting for the database
        self.task.cancel()

    @property
    def signal(self) -> int | None:
        """The signal that stopped the worker, if one did."""
        return self._signal

    # -- loop --------------------------------------------------------------
    def run(self) -> WorkerReport:
        try:
            self._loop()
        except DatabaseUnavailable as exc:
            if not self._stop.is_set():
                raise
            log.warning("stopping on signal %s: %s", self._signal, exc)
        self.report.signal = self._signal
        return self.report

    def _loop(self) -> None:
        started = time.monotonic()
        last_reap = 0.0
        last_poll = 0.0
        while not self._stop.is_set():
            if self.max_tokens is not None and self.report.processed >= self.max_tokens:
                break
            if self.max_time is not None and time.monotonic() - started >= self.max_time:
                log.info("max time %gs reached", self.max_time)
                break
            if time.monotonic() - last_reap >= self.reap_every:
                last_reap = time.monotonic()
                self._maintain()
            if self._tape and time.monotonic() - last_poll >= self.poll_every:
                last_poll = time.monotonic()
                self._poll_tape()
            if self._paused():
                if self.idle_exit:
                    break
                self._stop.wait(self.pause.every)
                continue
            lease = self.pool.claim(self.night)
            if lease is None:
                waiting = self._tape and self.pool.waiting(self.night)
                if (
                    self.idle_exit
                    and not waiting
                    and self.pool.couch.replicated
                    and self.pool.claimable_now(self.night)
                ):
                    continue  # the view lagged behind: claim what the quorum says is there
                if self.idle_exit and not waiting:
                    log.info(
                        "no claimable tokens%s; exiting",
                        f" for night {self.night}" if self.night else "",
                    )
                    break
                # Tokens on their way back from tape: look again at the poll's pace.
                self._stop.wait(
                    min(self.idle_sleep, self.poll_every) if waiting else self.idle_sleep
                )
                last_reap = 0.0  # idle is a good moment to look for lost workers
                continue
            self._process(lease)

    def _paused(self) -> bool:
        """Does the central pause hold this worker? Logs each change once."""
        paused = self.pause.paused()
        if paused != self.report.paused:
            scope = f" (stream {self.stream})" if self.stream else ""
            if not paused:
                log.info("pause lifted%s; claiming again", scope)
            elif self.idle_exit:
                log.info("paused%s; exiting", scope)
            else:
                log.info("paused%s; claiming nothing until `gridxfer resume`", scope)
        self.report.paused = paused
        return paused

    def _maintain(self) -> None:
        """Settle conflicted tokens (clusters only make them), then reap lost leases."""
        if self.pool.couch.replicated:
            self.pool.sweep(self.night)
        self.pool.reap(self.night)

    @property
    def _tape(self) -> bool:
        return self.staging is not None or self.archive is not None

    def _poll_tape(self) -> None:
        """Between claims: move staging and archiving tokens on (any worker may)."""
        for what, poller in (("staging", self.staging), ("archive", self.archive)):
            if poller is None:
                continue
            try:
                report = poller.poll(self.pool, self.night)
                if any(report.as_dict().values()):
                    log.info("%s poll: %s", what, report.as_dict())
            except Exception as exc:  # a poll never stops the worker
                log.warning("%s poll failed: %s", what, exc)

    def _process(self, lease: Lease) -> None:
        self.report.processed += 1
        self.report.tokens.append(lease.id)
        tlog, handler, buffer = _token_log(lease.id)
        lost = threading.Event()
        beat_stop = threading.Event()
        beater = threading.Thread(
            target=self._beat,
            args=(lease, lost, beat_stop),
            name=f"heartbeat-{lease.id}",
            daemon=True,
        )
        beater.start()
        tlog.info(
            "worker %s claimed %s (attempt %s)",
            self.pool.worker["id"],
            lease.id,
            lease.doc.get("attempts"),
        )
        try:
            kind, value = self._run_task(lease, tlog)
        finally:
            beat_stop.set()
            beater.join()
            tlog.removeHandler(handler)
        if lost.is_set():
            kind, value = "lost", "lease lost during the task"
        elif self._stop.is_set() and kind != "done":
            kind, value = "release", f"signal {self._signal}"
        self._record(lease, kind, value, buffer.getvalue())

    def _beat(self, lease: Lease, lost: threading.Event, stop: threading.Event) -> None:
        """Keep the lease alive while the task runs; cancel the task if it was lost."""
        while not stop.wait(self.heartbeat):
            try:
                lease.heartbeat()
            except LeaseLost as exc:
                log.error("%s; cancelling its task", exc)
                lost.set()
                self.task.cancel()
                return
            except Exception as exc:  # keep beating through a bad moment
                log.warning("heartbeat for %s failed: %s", lease.id, exc)

    def _run_task(self, lease: Lease, tlog: logging.Logger) -> tuple[str, Any]:
        """What became of the token: ``(kind, value)`` for :meth:`_record`."""
        ctx = TaskContext(
            log=tlog,
            cancelled=self._cancelled,
            save_progress=lease.update,
            fetch=lambda name: attachments.read(self.pool.couch, lease.id, name),
        )
        try:
            request = self.staging.prepare(lease.doc, tlog) if self.staging is not None else None
            if request is not None:
                return ("staging", request)
            return ("done", self.task.run(lease.doc, ctx) or {})
        except Interrupted as exc:
            return ("release", f"signal {exc.signum}")
        except TaskError as exc:
            return ("fail", exc)
        except LeaseLost as exc:
            return ("lost", str(exc))
        except Exception as exc:
            log.exception("unexpected error in task for %s", lease.id)
            error = TaskError(Code.UNEXPECTED, f"{type(exc).__name__}: {exc}", transient=True)
            return ("fail", error)

    def _record(self, lease: Lease, kind: str, value: Any, text: str) -> None:
        try:
            if kind == "lost":
                self.report.lost += 1
                log.error("%s: %s; result dropped", lease.id, value)
                lease.abandon()
                return
            if text:
                lease.attach(
                    attachments.log_name(lease.doc.get("attempts", 0)), text.encode()[-512 * 1024 :]
                )
            if kind == "staging":
                lease.stage(value)
                self.report.staging += 1
                log.info("%s waits for staging request %s", lease.id, value["id"])
            elif kind == "done":
                if self.staging is not None:
                    self.staging.release(lease.doc)
                if self.archive is not None:
                    lease.archive(
                        self.archive.hold(self.pool.settings.lease),
                        **value,
                        **self.archive.fields(),
                    )
                    self.report.archiving += 1
                    log.info("%s copied; waiting for the archive to tape", lease.id)
                else:
                    lease.done(**value)
                    self.report.done += 1
                    log.info("%s done", lease.id)
            elif kind == "release":
                lease.release(value)
                self.report.released += 1
                log.warning("%s released back to todo (%s)", lease.id, value)
            else:
                err: TaskError = value
                lease.fail(err.code, str(err), file=err.file, transient=err.transient)
                self.report.failed += 1
                log.warning(
                    "%s failed with %d %s: %s (%s)",
                    lease.id,
                    err.code,
                    Code(err.code).name,
                    err,
                    "will retry" if lease.doc["state"] == "todo" else "final",
                )
        except LeaseLost as exc:
            self.report.lost += 1
            log.error("%s; result dropped", exc)
            lease.abandon()


def _token_log(token_id: str) -> tuple[logging.Logger, logging.Handler, io.StringIO]:
    """A logger whose lines are kept for the token's attachment, not the process log."""
    buffer = io.StringIO()
    tlog = logging.getLogger(f"GRID_XFER.token.{token_id}")
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    tlog.addHandler(handler)
    tlog.setLevel(logging.DEBUG)
    tlog.propagate = False
    return tlog, handler, buffer
