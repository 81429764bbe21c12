"""The application layer: one config in, the library objects a command needs out.

The CLI, the node runner on batch nodes and the tests all build pools, storage,
tasks, workers and tape services here, so a setting in the config file means the
same thing wherever a worker runs. Nothing here prints or configures logging.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from GRID_XFER.config import Config, load_config
from GRID_XFER.couch import Couch
from GRID_XFER.errors import ConfigError, DatabaseUnavailable, GridXferError
from GRID_XFER.pool import Pool, PoolSettings

if TYPE_CHECKING:  # the modules below pull in gfal2; commands that need none stay quick
    from GRID_XFER.server import EmbeddedServer
    from GRID_XFER.staging import Archive, Staging
    from GRID_XFER.storage import Storage
    from GRID_XFER.task import Task
    from GRID_XFER.worker import Worker, WorkerReport

log = logging.getLogger(__name__)

TASKS = ("command", "noop", "transfer")


@dataclass
class WorkerOptions:
    """What one worker is asked to do; ``None`` means the config's value."""

    night: str | None = None
    max_tokens: int | None = None
    max_time: float | None = None
    idle_exit: bool = False
    task: str | None = None
    command: str | None = None
    stream: str | None = None  # obeys `gridxfer pause STREAM` as well as a pause of all

    def as_args(self) -> list[str]:
        """The same options as `gridxfer worker` arguments (for job files)."""
        args = ["--night", self.night] if self.night else []
        args += ["--max-tokens", str(self.max_tokens)] if self.max_tokens else []
        args += ["--max-time", repr(self.max_time)] if self.max_time is not None else []
        args += ["--idle-exit"] if self.idle_exit else []
        args += ["--task", self.task] if self.task else []
        args += ["--command", self.command] if self.command else []
        args += ["--stream", self.stream] if self.stream else []
        return args


@dataclass
class InitResult:
    database: str
    url: str
    created: bool
    design_docs: dict[str, str]
    members: dict[str, list[str]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "created": self.created,
            "design_docs": self.design_docs,
            "members_updated": self.members is not None,
        }


class App:
    """Built once per process; the config is read on first use, not before."""

    def __init__(self, config_path: str | None = None, *, config: Config | None = None) -> None:
        self.config_path = config_path
        if config is not None:
            self.__dict__["config"] = config

    @cached_property
    def config(self) -> Config:
        return load_config(self.config_path)

    # -- the database ----------------------------------------------------------
    def couch(self, *, outage: float | None = None, retries: int | None = None) -> Couch:
        cfg = self.config.couchdb
        if retries is not None:
            cfg = cfg.model_copy(update={"retries": retries})
        return Couch(cfg, outage_seconds=outage)

    def pool(self, *, outage: float | None = None, job_id: str | None = None) -> Pool:
        w = self.config.worker
        settings = PoolSettings(
            lease=w.lease_seconds,
            max_attempts=w.max_attempts,
            backoff_base=w.backoff_base,
            backoff_max=w.backoff_max,
            window=w.claim_window,
        )
        return Pool(self.couch(outage=outage), settings, job_id=job_id)

    def init(self) -> InitResult:
        """Database, design documents and members (idempotent)."""
        from GRID_XFER import views

        couch = self.couch()
        created = couch.create_db()
        outcome = views.install(couch)
        c = self.config.couchdb
        secured = bool(c.member_names or c.member_roles) and views.secure(
            couch, c.member_names, c.member_roles
        )
        members = {"names": c.member_names or [], "roles": c.member_roles or []}
        return InitResult(couch.db, couch.url, created, outcome, members if secured else None)

    def embedded_server(self) -> EmbeddedServer:
        from GRID_XFER.server import EmbeddedServer

        return EmbeddedServer(self.config.server)

    def known_secrets(self) -> list[str]:
        """The configured database password, so that nothing we pack or write carries it."""
        try:
            secret = self.config.couchdb.secret()
        except GridXferError:
            return []
        return [secret] if secret else []

    # -- storage, tasks and tape -------------------------------------------------
    def storage(self) -> Storage:
        from GRID_XFER.storage import Storage
        from GRID_XFER.storage.protocols import settings_from

        tc = self.config.transfer
        return Storage(
            base_timeout=tc.base_timeout,
            min_rate=tc.min_rate,
            settings=settings_from(self.config.storage),
        )

    def task(self, kind: str | None = None, command: str | None = None) -> Task:
        from GRID_XFER.task import CommandTask, NoopTask

        w = self.config.worker
        kind = kind or w.task or ("command" if command or w.command else "transfer")
        if kind == "noop":
            return NoopTask()
        if kind == "command":
            cmd = command or w.command
            if not cmd:
                raise ConfigError("worker.command is not set (needed by the command task)")
            return CommandTask(cmd, timeout=w.task_timeout)
        if kind == "transfer":
            from GRID_XFER.transfer import TransferTask

            tc = self.config.transfer
            return TransferTask(
                self.storage(),
                verify=tc.verify,
                mismatch_retries=tc.mismatch_retries,
                third_party=tc.third_party,
                third_party_verify=tc.third_party_verify,
            )
        raise ConfigError(f"worker.task: {kind!r} is not available in this version")

    def staging(
        self,
        *,
        method: str | None = None,
        threads: int | None = None,
        storage: Storage | None = None,
    ) -> Staging:
        from GRID_XFER.staging import Staging

        sc = self.config.staging
        update: dict[str, Any] = {"method": method} if method else {}
        update |= {"threads": threads} if threads else {}
        return Staging(storage or self.storage(), sc.model_copy(update=update) if update else sc)

    def archive(self, storage: Storage | None = None) -> Archive:
        from GRID_XFER.staging import Archive

        return Archive(storage or self.storage(), self.config.staging)

    # -- workers -----------------------------------------------------------------
    def worker(self, opts: WorkerOptions) -> Worker:
        """A worker for this config; the transfer task gets the tape services too."""
        from GRID_XFER.transfer import TransferTask
        from GRID_XFER.worker import Worker, batch_job_id

        w = self.config.worker
        pool = self.pool(outage=w.outage_seconds, job_id=batch_job_id())
        task = self.task(opts.task, opts.command)
        tape: dict[str, Any] = {}
        if isinstance(task, TransferTask):
            tape = {
                "staging": self.staging(storage=task.storage),
                "archive": self.archive(task.storage),
                "poll_every": self.config.staging.poll_interval,
            }
        return Worker(
            pool,
            task,
            night=opts.night,
            max_tokens=opts.max_tokens,
            max_time=opts.max_time,
            idle_exit=opts.idle_exit,
            idle_sleep=w.idle_sleep,
            heartbeat=w.heartbeat,
            stream=opts.stream,
            **tape,
        )

    def run_worker(self, opts: WorkerOptions) -> tuple[Worker, WorkerReport]:
        """Run one worker to its end, with the batch systems' signal handling.

        A signal during a wait for the database ends the run (the report says
        which signal); any other outage propagates.
        """
        runner = self.worker(opts)
        runner.install_signal_handlers()
        pool = runner.pool
        try:
            pool.couch.require_db()
            if opts.night:
                pool.require_night(opts.night)
            log.info("worker %s starting (night %s)", pool.worker["id"], opts.night or "any")
            report = runner.run()
        except DatabaseUnavailable:
            if runner.signal is None:
                raise
            report = runner.report
            report.signal = runner.signal
        log.info("worker %s finished: %s", pool.worker["id"], report.as_dict())
        return runner, report
