"""Keeping a stream's workers sized to its backlog, through a launch backend.

Workers are the ordinary ones `gridxfer launch` starts (``launch.sh`` with
``--idle-exit``), one job directory per stream and night, so they hand their
tokens back on SIGTERM and leave when nothing is left. The service counts the
workers that are *there* before starting any, not the ones it remembers
starting: local workers by the job id in their environment (``/proc``), Slurm
jobs by name (``squeue``). So a service that restarts, or a standby that takes
over on the same machine or cluster, adopts the running workers instead of
starting a second set.
"""

from __future__ import annotations

import getpass
import logging
import math
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from GRID_XFER.config import Config
from GRID_XFER.errors import GridXferError
from GRID_XFER.launch import JobDir, LaunchSpec, get_backend, local_environment, prepare
from GRID_XFER.launch.spec import parse_duration
from GRID_XFER.launch.submit import run_submit
from GRID_XFER.nightly_config import StreamConfig

log = logging.getLogger(__name__)


def wanted(stream: StreamConfig, backlogs: dict[str, int]) -> dict[str, int]:
    """Workers per night: one per ``tokens_per_worker`` of its backlog, oldest night
    first, at most ``max_workers`` in all and at least ``min_workers`` while any work
    remains (the extra ones go to the oldest night with work)."""
    out: dict[str, int] = {}
    left = stream.max_workers
    for night, backlog in sorted(backlogs.items()):
        n = min(left, math.ceil(backlog / stream.tokens_per_worker)) if backlog > 0 else 0
        out[night] = n
        left -= n
    total = sum(out.values())
    busy = [n for n, b in sorted(backlogs.items()) if b > 0]
    if busy and total < stream.min_workers:
        out[busy[0]] += stream.min_workers - total
    return out


@dataclass
class Started:
    night: str
    count: int
    job_id: str | None = None  # Slurm's

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Staffing:
    running: dict[str, int] = field(default_factory=dict)
    wanted: dict[str, int] = field(default_factory=dict)
    started: list[Started] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "wanted": self.wanted,
            "started": [s.as_dict() for s in self.started],
        }


class Workforce:
    """One stream's workers: counted where they run, started to make up the difference."""

    def __init__(self, config: Config, stream: StreamConfig, *, dry_run: bool = False) -> None:
        self.config = _stream_config(config, stream)
        self.stream = stream
        self.dry_run = dry_run
        self.workdir = (
            stream.workdir or Path("gridxfer-jobs") / f"nightly-{stream.name}"
        ).absolute()
        self._procs: list[subprocess.Popen[bytes]] = []
        self._jobs: dict[str, JobDir] = {}

    @property
    def name(self) -> str:
        return f"gridxfer-{self.stream.name}"

    def job_prefix(self, night: str) -> str:
        return f"nightly-{self.stream.name}-{night}-"

    # -- counting ----------------------------------------------------------------
    def _listed(self) -> list[str]:
        """One listing of the stream's running workers: local job ids (one per worker)
        or Slurm job names (one per array task)."""
        if self.stream.backend == "slurm":
            return [n for _, n, _ in _slurm_jobs(f"{self.name}-")]
        return list(_local_workers(f"nightly-{self.stream.name}-"))

    def _per_night(self, listed: list[str], nights: list[str]) -> dict[str, int]:
        if self.stream.backend == "slurm":
            return {n: listed.count(f"{self.name}-{n}") for n in nights}
        return {n: sum(j.startswith(self.job_prefix(n)) for j in listed) for n in nights}

    def running(self, nights: list[str]) -> dict[str, int]:
        return self._per_night(self._listed(), nights)

    def total(self) -> int:
        """Every running worker of the stream, whatever its night."""
        return len(self._listed())

    # -- staffing ----------------------------------------------------------------
    def staff(self, backlogs: dict[str, int]) -> Staffing:
        """Start what is missing; never stop a worker (they leave when idle)."""
        self._reap()
        listed = self._listed()
        out = Staffing(self._per_night(listed, list(backlogs)), wanted(self.stream, backlogs))
        # Workers of other nights (one left the window, say) count against the maximum.
        room = self.stream.max_workers - len(listed)
        for night, want in out.wanted.items():
            missing = min(room, want - out.running.get(night, 0))
            if missing > 0:
                out.started.append(self._start(night, missing))
                room -= missing
        return out

    def _spec(self, night: str, count: int) -> LaunchSpec:
        s = self.stream
        return LaunchSpec(
            backend=s.backend,
            workers=count,
            night=night,
            workdir=self.workdir / night,
            time_limit=parse_duration(s.time_limit),
            grace=min(120, parse_duration(s.time_limit) // 2),
            partition=s.partition,
            account=s.account,
            sandbox="none",
            name=self.name,
            stream=s.name,
        )

    def _start(self, night: str, count: int) -> Started:
        spec = self._spec(night, count)
        if self.dry_run:
            log.info("would start %d %s worker(s) for night %s", count, spec.backend, night)
            return Started(night, count)
        job = self._jobs.get(night) or prepare(self.config, spec)
        self._jobs[night] = job
        if spec.backend == "slurm":
            backend = get_backend("slurm")
            backend.render(spec, job)
            job_id = backend.submit(spec, job)
            log.info("submitted %d Slurm worker(s) for night %s: job %s", count, night, job_id)
            return Started(night, count, job_id)
        env = local_environment(job)
        for _ in range(count):
            job_id = f"{self.job_prefix(night)}{time.time_ns()}"
            with open(job.logs / f"{job_id}.log", "ab") as out:
                proc = subprocess.Popen(
                    ["/bin/bash", str(job.launch), *spec.worker_args()],
                    cwd=job.path,
                    env={**env, "GRIDXFER_JOB_ID": job_id},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            self._procs.append(proc)
            log.info("started worker %s (pid %d) for night %s", job_id, proc.pid, night)
        return Started(night, count)

    def _reap(self) -> None:
        """Collect the exit status of our local workers that ended (no zombies)."""
        self._procs = [p for p in self._procs if p.poll() is None]

    # -- stopping ----------------------------------------------------------------
    def signal_all(self) -> None:
        """SIGTERM every worker of the stream, whatever its night: they hand their
        tokens back and leave."""
        if self.dry_run:
            return
        if self.stream.backend == "slurm":
            _slurm_stop(f"{self.name}-")
            return
        for pid in _local_pids(f"nightly-{self.stream.name}-"):
            _signal(pid, signal.SIGTERM)

    def wait_all(self, grace: float) -> int:
        """Wait up to ``grace`` for the stream's workers to leave; how many are left."""
        deadline = time.monotonic() + grace
        while True:
            self._reap()
            left = 0 if self.dry_run else self.total()
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.2 if self.stream.backend == "local" else 1.0)


def _stream_config(config: Config, stream: StreamConfig) -> Config:
    """The config the stream's workers get: its own tape settings over the shared ones."""
    update: dict[str, Any] = {}
    if stream.tape_destination is not None:
        update["tape_destination"] = stream.tape_destination
    if stream.staging_check is not None:
        update["check"] = stream.staging_check
    if not update:
        return config
    return config.model_copy(update={"staging": config.staging.model_copy(update=update)})


def _local_workers(prefix: str) -> dict[str, int]:
    """Job id -> pid of each worker of ours whose GRIDXFER_JOB_ID starts with ``prefix``.

    A worker's task runs as its child with the same environment, so processes are
    grouped by job id and the one whose parent is not in its group is the worker.
    """
    wanted_var = b"GRIDXFER_JOB_ID=" + prefix.encode()
    groups: dict[bytes, dict[int, int]] = {}  # job id -> {pid: parent pid}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone, or not ours
        job = next((v for v in env if v.startswith(wanted_var)), None)
        if job is not None and fields[0] != b"Z":
            groups.setdefault(job, {})[pid] = int(fields[1])
    return {
        job.partition(b"=")[2].decode(errors="replace"): min(
            (p for p, parent in members.items() if parent not in members), default=min(members)
        )
        for job, members in groups.items()
    }


def _local_pids(prefix: str) -> list[int]:
    """One pid per worker of ours whose job id starts with ``prefix``."""
    return sorted(_local_workers(prefix).values())


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _slurm_jobs(prefix: str) -> list[tuple[str, str, str]]:
    """(job id, name, state) of our pending and running array tasks named ``prefix``..."""
    out = run_submit(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i %j %T"], "Slurm")
    rows = [tuple(line.split()[:3]) for line in out.splitlines() if len(line.split()) >= 3]
    return [(i, n, t) for i, n, t in rows if n.startswith(prefix)]


def _slurm_stop(prefix: str) -> None:
    """Pending tasks cancelled; running ones get SIGTERM in their batch step, which is
    the worker itself (``launch.sh`` exec'd it), so they hand their tokens back."""
    jobs = _slurm_jobs(prefix)
    for states, argv in (
        (("PENDING",), ["scancel"]),
        (("RUNNING", "CONFIGURING"), ["scancel", "--batch", "--signal=TERM"]),
    ):
        ids = [i for i, _, t in jobs if t in states]
        if not ids:
            continue
        try:
            run_submit([*argv, *ids], "Slurm")
        except GridXferError as exc:
            log.warning("%s %s: %s", " ".join(argv), " ".join(ids), exc)
