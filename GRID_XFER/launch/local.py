"""Local workers: N copies of ``launch.sh`` on this machine under a signal-forwarding supervisor.

Nothing is submitted: the supervisor stays in the foreground, so stopping it
is how a person stops the workers, and each worker gets the stop exactly once.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from GRID_XFER.errors import LaunchError
from GRID_XFER.launch.spec import JobDir, LaunchSpec
from GRID_XFER.launch.submit import submit_environment

log = logging.getLogger(__name__)


@dataclass
class WorkerExit:
    index: int
    pid: int
    job_id: str
    status: int | None
    log: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SupervisorReport:
    workers: list[WorkerExit] = field(default_factory=list)
    signal: int | None = None

    @property
    def status(self) -> int:
        """0 when every worker exited 0; 128+N when we were stopped by signal N; else the
        first worker's non-zero status."""
        if self.signal is not None:
            return 128 + self.signal
        for w in self.workers:
            if w.status:
                return w.status if w.status > 0 else 128 - w.status
        return 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "workers": [w.as_dict() for w in self.workers],
            "signal": self.signal,
            "status": self.status,
        }


def local_commands(spec: LaunchSpec, job: JobDir) -> list[list[str]]:
    return [["/bin/bash", str(job.launch), *spec.worker_args()] for _ in range(spec.workers)]


def local_environment(job: JobDir, base: dict[str, str] | None = None) -> dict[str, str]:
    """Ours without GRIDXFER_* (the password among them), plus the job's settings."""
    env = submit_environment(base)
    env.update(job.env)
    return env


class Supervisor:
    """Runs local workers, forwards SIGTERM/SIGINT/SIGHUP to them and reports their exits.

    Each worker runs in its own session, so a terminal's Ctrl-C reaches only the
    supervisor, which forwards each signal exactly once: the first one makes the
    workers hand their tokens back, a second one stops them at once.
    """

    POLL = 0.2

    def __init__(
        self,
        commands: list[list[str]],
        *,
        env: dict[str, str],
        cwd: Path,
        logs: Path,
        job_prefix: str | None = None,
    ) -> None:
        self.commands = commands
        self.env = env
        self.cwd = cwd
        self.logs = logs
        self.job_prefix = job_prefix or f"local-{os.getpid()}"
        self.procs: list[tuple[WorkerExit, subprocess.Popen[bytes]]] = []
        self.report = SupervisorReport()

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        if self.report.signal is None:
            self.report.signal = signum
        for _info, proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signum)
                except ProcessLookupError:
                    pass
        log.warning(
            "signal %d forwarded to %d worker(s)",
            signum,
            sum(p.poll() is None for _, p in self.procs),
        )

    def _start(self, i: int, argv: list[str]) -> None:
        job_id = f"{self.job_prefix}-{i}"
        logfile = self.logs / f"worker-{i}.log"
        env = {**self.env, "GRIDXFER_JOB_ID": job_id}
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        info = WorkerExit(i, proc.pid, job_id, None, str(logfile))
        self.procs.append((info, proc))
        self.report.workers.append(info)
        log.info("worker %d started: pid %d, job id %s, log %s", i, proc.pid, job_id, logfile)
        if self.report.signal is not None:  # stopped while starting: forward to this one too
            proc.send_signal(self.report.signal)

    def _wait(self) -> None:
        running = list(self.procs)
        while running:
            time.sleep(self.POLL)
            for item in list(running):
                info, proc = item
                status = proc.poll()
                if status is None:
                    continue
                info.status = status
                running.remove(item)
                level = logging.INFO if status == 0 else logging.WARNING
                log.log(
                    level,
                    "worker %d (pid %d) exited with status %d; log %s",
                    info.index,
                    info.pid,
                    status if status >= 0 else 128 - status,
                    info.log,
                )

    def run(self) -> SupervisorReport:
        sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        old = {s: signal.signal(s, self._forward) for s in sigs}
        try:
            for i, argv in enumerate(self.commands):
                self._start(i, argv)
            self._wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return self.report


class LocalBackend:
    """No job file and nothing to submit: :func:`supervise` runs the workers."""

    name = "local"
    tool: str | None = None

    def render(self, spec: LaunchSpec, job: JobDir) -> None:
        return None

    def submit(self, spec: LaunchSpec, job: JobDir) -> None:
        raise LaunchError("local workers are not submitted: they run under a Supervisor")


def supervise(spec: LaunchSpec, job: JobDir) -> SupervisorReport:
    """Run ``spec.workers`` workers here until they all exit."""
    commands = local_commands(spec, job)
    return Supervisor(commands, env=local_environment(job), cwd=job.path, logs=job.logs).run()
