"""What to launch, and the job directory every backend starts from.

The job directory (mode 0700) holds the worker configuration without any
password, the password as a 0600 file when one must be written, a copy of
``launch.sh``, and ``job.env`` with the job's ``GRIDXFER_*`` settings. Jobs get
the *name* of the password file, never the password, so it cannot reach a job
file, an argument list or the batch system's copy of the environment.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from GRID_XFER.config import Config
from GRID_XFER.errors import ConfigError, InvalidInput
from GRID_XFER.sandbox.build import LAUNCH_NAME, default_source_dir
from GRID_XFER.token import check_id_part

log = logging.getLogger(__name__)

BACKENDS = ("local", "slurm", "condor", "jdl")
# Backends whose nodes see the submitting machine's files; the others ship them with the job.
SHARED_FILESYSTEM = frozenset({"local", "slurm"})
CONFIG_NAME = "job.yaml"
SECRET_NAME = "couchdb.password"
ENV_NAME = "job.env"
# Variables that must never reach a batch system's copy of our environment.
SECRET_ENV = ("GRIDXFER_COUCHDB_PASSWORD",)


def parse_duration(text: str | int | float) -> int:
    """Seconds from ``3600``, ``90m``, ``4h``, ``2d``, ``MM:SS``, ``HH:MM:SS`` or ``D-HH:MM:SS``."""
    if isinstance(text, (int, float)):
        value = int(text)
    else:
        s = text.strip().lower()
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", s)
        d = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
        if m:
            value = int(float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]])
        elif d and ":" in s:
            parts = [int(p) for p in (d[2], d[3], d[4]) if p is not None]
            if len(parts) == 2:
                parts = [0, *parts]
            hours, minutes, seconds = parts
            value = int(d[1] or 0) * 86400 + hours * 3600 + minutes * 60 + seconds
        else:
            raise InvalidInput(
                f"invalid duration {text!r} (e.g. 3600, 90m, 4h, 04:00:00, 1-00:00:00)"
            )
    if value <= 0:
        raise InvalidInput(f"duration {text!r} must be positive")
    return value


@dataclass
class LaunchSpec:
    """Checked on creation, so a bad value fails before anything is written or asked."""

    backend: str
    workers: int
    night: str | None = None
    workdir: Path | None = None
    time_limit: int = 4 * 3600
    grace: int = 120
    partition: str | None = None
    account: str | None = None
    memory_mb: int = 1024  # 0: ask for nothing (the site's default)
    task: str | None = None
    command: str | None = None
    max_tokens: int | None = None
    max_time: float | None = None
    sandbox: str = "fetch"  # fetch | none
    python: str | None = None  # the interpreter on the node (default: ours for slurm/local)
    name: str = "gridxfer"
    stream: str | None = None  # the nightly service's stream: `gridxfer pause STREAM` applies

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InvalidInput(
                f"unknown backend {self.backend!r} (choose from {', '.join(BACKENDS)})"
            )
        if self.workers < 1:
            raise InvalidInput("--workers must be at least 1")
        if self.night is not None:
            check_id_part(self.night, "night")
        if self.sandbox not in ("fetch", "none"):
            raise InvalidInput(f"sandbox mode {self.sandbox!r}: fetch or none")
        if self.grace < 0 or self.grace >= self.time_limit:
            raise InvalidInput(
                f"grace {self.grace}s must be shorter than the time limit {self.time_limit}s"
            )
        if not re.fullmatch(r"[A-Za-z0-9_.+-]{1,64}", self.name):
            raise InvalidInput(f"job name {self.name!r}: 1-64 letters, digits and ._+-")
        for what, value in (("partition", self.partition), ("account", self.account)):
            if value is not None and not re.fullmatch(r"[A-Za-z0-9_.,+-]{1,128}", value):
                raise InvalidInput(f"--{what} {value!r}: letters, digits and ._,+- only")

    @classmethod
    def from_options(
        cls,
        backend: str,
        workers: int,
        *,
        night: str | None = None,
        workdir: Path | None = None,
        time_limit: str | int = "4h",
        grace: str | int = "120",
        partition: str | None = None,
        account: str | None = None,
        memory_mb: int = 1024,
        task: str | None = None,
        command: str | None = None,
        max_tokens: int | None = None,
        max_time: float | None = None,
        python: str | None = None,
    ) -> LaunchSpec:
        """A spec from what a person types: durations as text (``4h``, ``04:00:00``)."""
        return cls(
            backend=backend,
            workers=workers,
            night=night,
            workdir=workdir,
            time_limit=parse_duration(time_limit),
            grace=parse_duration(grace),
            partition=partition,
            account=account,
            memory_mb=memory_mb,
            task=task,
            command=command,
            max_tokens=max_tokens,
            max_time=max_time,
            python=python,
        )

    @property
    def job_name(self) -> str:
        return f"{self.name}-{self.night}" if self.night else self.name

    @property
    def ships_files(self) -> bool:
        """True when the job's files travel with it (condor, jdl) instead of a shared FS."""
        return self.backend not in SHARED_FILESYSTEM

    def node_python(self) -> str:
        if self.python:
            return self.python
        # A shared file system (Slurm, local): the interpreter we run under.
        return "python3" if self.ships_files else sys.executable

    def worker_args(self) -> list[str]:
        args: list[str] = []
        if self.max_tokens is not None:
            args += ["--max-tokens", str(self.max_tokens)]
        if self.max_time is not None:
            args += ["--max-time", f"{self.max_time:g}"]
        if self.stream is not None:
            args += ["--stream", self.stream]
        return args


@dataclass
class JobDir:
    """What ``prepare`` wrote."""

    path: Path
    config: Path
    launch: Path
    env_file: Path
    logs: Path
    password_file: Path | None
    env: dict[str, str]
    job_file: Path | None = None

    def add_job_file(self, name: str, text: str, *, mode: int = 0o600) -> Path:
        """Write the backend's job file (private: it names the password file)."""
        path = self.path / name
        write_private(path, text)
        path.chmod(mode)
        self.job_file = path
        return path

    def as_dict(self) -> dict[str, Any]:
        return {
            "workdir": str(self.path),
            "config": str(self.config),
            "launch": str(self.launch),
            "logs": str(self.logs),
            "password_file": str(self.password_file) if self.password_file else None,
            "job_file": str(self.job_file) if self.job_file else None,
        }


def default_workdir(spec: LaunchSpec) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return Path("gridxfer-jobs") / f"{spec.backend}-{spec.night or 'all'}-{stamp}-{os.getpid()}"


def job_config_data(cfg: Config, spec: LaunchSpec) -> dict[str, Any]:
    """The launching configuration as the job needs it: no password, no embedded server."""
    data = cfg.model_dump(mode="json", exclude_unset=True, exclude={"path"})
    couch = data.setdefault("couchdb", {})
    couch.pop("password", None)
    couch.pop("password_file", None)
    couch["url"], couch["db"] = cfg.couchdb.url, cfg.couchdb.db
    data.pop("server", None)
    data.pop("nightly", None)  # the service's, not the workers'
    worker = data.setdefault("worker", {})
    if spec.task:
        worker["task"] = spec.task
    if spec.command:
        worker["command"] = spec.command
    if not worker:
        data.pop("worker")
    return data


def write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by the user only, refusing to follow a planted link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def stage_password(cfg: Config, workdir: Path, *, copy: bool) -> Path | None:
    """Where the job reads the password: the configured file, or a 0600 copy in ``workdir``."""
    c = cfg.couchdb
    if c.password is None and c.password_file is None:
        return None
    secret = c.secret()  # ConfigError (exit 3) when the file cannot be read
    if c.password is None and c.password_file is not None and not copy:
        path = c.password_file.expanduser().resolve()
        if path.stat().st_mode & 0o077:
            log.warning("%s can be read by others than you: chmod 600 it", path)
        return path
    dest = workdir / SECRET_NAME
    write_private(dest, (secret or "") + "\n")
    return dest


def _launch_source() -> Path:
    src = default_source_dir() / LAUNCH_NAME
    if not src.is_file():
        raise ConfigError(
            f"cannot find {LAUNCH_NAME} in {src.parent}: this GRID_XFER installation "
            "is incomplete; reinstall it"
        )
    return src


def env_file_text(env: dict[str, str]) -> str:
    """``job.env``: literal ``GRIDXFER_*=value`` lines, as ``launch.sh --env`` reads them."""
    return "# GRIDXFER_* settings of this job (read by launch.sh --env)\n" + "".join(
        f"{k}={v}\n" for k, v in env.items()
    )


def job_environment(spec: LaunchSpec, config: Path, password: Path | None) -> dict[str, str]:
    """The job's settings; shipped jobs name their files relative to their scratch directory."""

    def ref(path: Path) -> str:
        return path.name if spec.ships_files else str(path)

    env = {
        "GRIDXFER_CONFIG": ref(config),
        "GRIDXFER_SANDBOX": spec.sandbox,
        "GRIDXFER_PYTHON": spec.node_python(),
    }
    if password is not None:
        env["GRIDXFER_COUCHDB_PASSWORD_FILE"] = ref(password)
    if spec.night:
        env["GRIDXFER_NIGHT"] = spec.night
    return env


def prepare(cfg: Config, spec: LaunchSpec) -> JobDir:
    """Write the job directory (re-using ``spec.workdir`` if it exists)."""
    workdir = (spec.workdir or default_workdir(spec)).expanduser().absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    password = stage_password(cfg, workdir, copy=spec.ships_files)
    config = workdir / CONFIG_NAME
    write_private(
        config,
        "# written by gridxfer launch; no credentials in here\n"
        + yaml.safe_dump(job_config_data(cfg, spec), sort_keys=False),
    )
    launch = workdir / LAUNCH_NAME
    shutil.copyfile(_launch_source(), launch)
    launch.chmod(0o755)
    env = job_environment(spec, config, password)
    env_file = workdir / ENV_NAME
    write_private(env_file, env_file_text(env))
    return JobDir(workdir, config, launch, env_file, logs, password, env)
