"""Launching workers: a job directory, a job file per backend, submission, a local supervisor.

``gridxfer launch`` prepares one job directory (mode 0700) holding

    job.yaml            the worker configuration: the launching config without any password
    couchdb.password    the database password (0600), only when there is one and it is not
                        already in a file the nodes can read (``couchdb.password_file``)
    launch.sh           the node-side starter (a copy of GRID_XFER/sandbox/files/launch.sh)
    job.env             the job's GRIDXFER_* settings (grid jobs read them from here)
    logs/               the workers' output
    gridxfer.sbatch | gridxfer.sub | gridxfer.jdl     the backend's job file

and then submits (slurm: ``sbatch``; condor: ``condor_submit`` when present;
jdl: ``dirac-wms-job-submit`` / ``glite-wms-job-submit`` when present) or, for
``local``, runs N workers under a :class:`Supervisor`. The password never
appears in a job file, an argument list or the batch system's copy of the
submitting environment: jobs get the *name* of the password file in
``GRIDXFER_COUCHDB_PASSWORD_FILE``.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from GRID_XFER.config import Config
from GRID_XFER.errors import ConfigError, GridXferError, InvalidInput, LaunchError
from GRID_XFER.sandbox import LAUNCH_NAME, default_source_dir

log = logging.getLogger(__name__)

BACKENDS = ("local", "slurm", "condor", "jdl")
JOB_FILES = {"slurm": "gridxfer.sbatch", "condor": "gridxfer.sub", "jdl": "gridxfer.jdl"}
CONFIG_NAME = "job.yaml"
SECRET_NAME = "couchdb.password"
ENV_NAME = "job.env"
# Variables that must never reach a batch system's copy of our environment.
SECRET_ENV = ("GRIDXFER_COUCHDB_PASSWORD",)
SUBMIT_TIMEOUT = 120.0


# --------------------------------------------------------------------------- spec


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


def slurm_time(seconds: int) -> str:
    """``D-HH:MM:SS`` (Slurm rounds the limit up to whole minutes)."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    hms = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{hms}" if days else hms


@dataclass
class LaunchSpec:
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

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InvalidInput(
                f"unknown backend {self.backend!r} (choose from {', '.join(BACKENDS)})"
            )
        if self.workers < 1:
            raise InvalidInput("--workers must be at least 1")
        if self.night is not None:
            from GRID_XFER.token import check_id_part

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

    @property
    def job_name(self) -> str:
        return f"{self.name}-{self.night}" if self.night else self.name

    def node_python(self) -> str:
        if self.python:
            return self.python
        # A shared file system (Slurm, local): the interpreter we run under.
        return sys.executable if self.backend in ("local", "slurm") else "python3"

    def worker_args(self) -> list[str]:
        args: list[str] = []
        if self.max_tokens is not None:
            args += ["--max-tokens", str(self.max_tokens)]
        if self.max_time is not None:
            args += ["--max-time", f"{self.max_time:g}"]
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "workdir": str(self.path),
            "config": str(self.config),
            "launch": str(self.launch),
            "logs": str(self.logs),
            "password_file": str(self.password_file) if self.password_file else None,
            "job_file": str(self.job_file) if self.job_file else None,
        }


# --------------------------------------------------------------------------- job directory


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
    worker = data.setdefault("worker", {})
    if spec.task:
        worker["task"] = spec.task
    if spec.command:
        worker["command"] = spec.command
    if not worker:
        data.pop("worker")
    return data


def _write_private(path: Path, text: str) -> None:
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
    _write_private(dest, (secret or "") + "\n")
    return dest


def _launch_source() -> Path:
    src = default_source_dir() / LAUNCH_NAME
    if not src.is_file():
        raise ConfigError(
            f"cannot find {LAUNCH_NAME} in {src.parent}: this GRID_XFER installation "
            "is incomplete; reinstall it"
        )
    return src


def prepare(cfg: Config, spec: LaunchSpec) -> JobDir:
    """Write the job directory (re-using ``spec.workdir`` if it exists)."""
    workdir = (spec.workdir or default_workdir(spec)).expanduser().absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    shipped = spec.backend in ("condor", "jdl")  # files travel with the job, not a shared FS
    password = stage_password(cfg, workdir, copy=shipped)
    config = workdir / CONFIG_NAME
    _write_private(
        config,
        "# written by gridxfer launch; no credentials in here\n"
        + yaml.safe_dump(job_config_data(cfg, spec), sort_keys=False),
    )
    launch = workdir / LAUNCH_NAME
    shutil.copyfile(_launch_source(), launch)
    launch.chmod(0o755)

    def ref(path: Path) -> str:
        return path.name if shipped else str(path)

    env = {
        "GRIDXFER_CONFIG": ref(config),
        "GRIDXFER_SANDBOX": spec.sandbox,
        "GRIDXFER_PYTHON": spec.node_python(),
    }
    if password is not None:
        env["GRIDXFER_COUCHDB_PASSWORD_FILE"] = ref(password)
    if spec.night:
        env["GRIDXFER_NIGHT"] = spec.night
    env_file = workdir / ENV_NAME
    _write_private(
        env_file,
        "# GRIDXFER_* settings of this job (read by launch.sh --env)\n"
        + "".join(f"{k}={v}\n" for k, v in env.items()),
    )
    return JobDir(workdir, config, launch, env_file, logs, password, env)


# --------------------------------------------------------------------------- job files


def _q(value: str) -> str:
    return shlex.quote(value)


def render_sbatch(spec: LaunchSpec, job: JobDir) -> str:
    """A Slurm batch script: an array of ``spec.workers`` single-core tasks.

    ``--signal=B:TERM@grace`` sends SIGTERM to the batch shell ``grace`` seconds
    before the time limit; the shell ``exec``s launch.sh which ``exec``s the
    worker, so the worker itself gets it, hands its token back and exits 143.
    """
    lines = [
        "#!/bin/bash",
        f"# Written by `gridxfer launch --backend slurm` at {time.strftime('%Y-%m-%dT%H:%M:%S')}.",
        f"# Submit: sbatch {job.path / JOB_FILES['slurm']}",
        "# No password in here: the worker reads the file named by GRIDXFER_COUCHDB_PASSWORD_FILE.",
        f"#SBATCH --job-name={spec.job_name}",
        f"#SBATCH --array=0-{spec.workers - 1}",
        f"#SBATCH --time={slurm_time(spec.time_limit)}",
        f"#SBATCH --signal=B:TERM@{spec.grace}",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=1",
        f"#SBATCH --output={job.logs}/slurm-%A_%a.out",
        "#SBATCH --open-mode=append",
    ]
    if spec.memory_mb:
        lines.append(f"#SBATCH --mem={spec.memory_mb}M")
    if spec.partition:
        lines.append(f"#SBATCH --partition={spec.partition}")
    if spec.account:
        lines.append(f"#SBATCH --account={spec.account}")
    lines += ["", "unset GRIDXFER_COUCHDB_PASSWORD"]
    lines += [f"export {k}={_q(v)}" for k, v in job.env.items()]
    argv = " ".join(_q(a) for a in spec.worker_args())
    lines += [f"exec /bin/bash {_q(str(job.launch))}{' ' + argv if argv else ''}", ""]
    return "\n".join(lines)


def _condor_args(args: list[str]) -> str:
    """HTCondor's new argument syntax: double-quoted, single quotes group, '' and "" escape."""
    out = []
    for a in args:
        if re.search(r"[\s'\"]", a) or not a:
            a = "'" + a.replace("'", "''").replace('"', '""') + "'"
        out.append(a)
    return '"' + " ".join(out) + '"'


def _condor_env(env: dict[str, str]) -> str:
    parts = []
    for k, v in env.items():
        v = v.replace('"', '""')
        if re.search(r"[\s']", v):
            v = "'" + v.replace("'", "''") + "'"
        parts.append(f"{k}={v}")
    return '"' + " ".join(parts) + '"'


def render_condor(spec: LaunchSpec, job: JobDir) -> str:
    """An HTCondor submit description queueing ``spec.workers`` vanilla jobs.

    HTCondor stops a job with ``kill_sig`` (SIGTERM) and waits
    ``job_max_vacate_time`` before SIGKILL: the worker's grace. Files travel with
    the job (``transfer_input_files``); ``getenv = false`` keeps the submitting
    environment, and any password in it, out of the job.
    """
    inputs = [job.config.name, job.env_file.name]
    if job.password_file is not None:
        inputs.append(job.password_file.name)
    env = {**job.env, "GRIDXFER_JOB_ID": "$(Cluster).$(Process)"}
    items = [
        ("universe", "vanilla"),
        ("batch_name", spec.job_name),
        ("initialdir", str(job.path)),
        ("executable", job.launch.name),
        ("arguments", _condor_args(spec.worker_args())),
        ("transfer_executable", "true"),
        ("should_transfer_files", "YES"),
        ("when_to_transfer_output", "ON_EXIT_OR_EVICT"),
        ("transfer_input_files", ", ".join(inputs)),
        ("transfer_output_files", '""'),
        ("getenv", "false"),
        ("environment", _condor_env(env)),
        ("kill_sig", "SIGTERM"),
        ("job_max_vacate_time", str(spec.grace)),
        ("allowed_execute_duration", str(spec.time_limit)),
        ("request_cpus", "1"),
        ("output", "logs/worker-$(Cluster).$(Process).out"),
        ("error", "logs/worker-$(Cluster).$(Process).err"),
        ("log", "logs/condor-$(Cluster).log"),
        ("+GridXferNight", f'"{spec.night or ""}"'),
    ]
    if spec.memory_mb:
        items.insert(
            items.index(("request_cpus", "1")) + 1, ("request_memory", str(spec.memory_mb))
        )
    width = max(len(k) for k, _ in items)
    head = [
        f"# Written by `gridxfer launch --backend condor` at {time.strftime('%Y-%m-%dT%H:%M:%S')}.",
        f"# Submit: condor_submit {job.path / JOB_FILES['condor']}",
        "# No password in here: it travels as a 0600 file named by GRIDXFER_COUCHDB_PASSWORD_FILE.",
    ]
    body = [f"{k.ljust(width)} = {v}" for k, v in items]
    return "\n".join(head + body + [f"queue {spec.workers}", ""])


def _jdl_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_jdl(spec: LaunchSpec, job: JobDir) -> str:
    """A gLite/DIRAC parametric JDL: ``spec.workers`` jobs from one description.

    As GRID_LRT's launcher does, the job runs a launch script from the input
    sandbox; unlike it, the database password is never an argument: it travels
    as a file in the input sandbox, named in job.env.
    """
    inputs = [job.launch.name, job.config.name, job.env_file.name]
    if job.password_file is not None:
        inputs.append(job.password_file.name)
    args = ["launch.sh", "--env", job.env_file.name, *spec.worker_args()]
    attrs: list[tuple[str, str]] = [
        ("JobName", _jdl_str(spec.job_name)),
        ("JobType", _jdl_str("Parametric")),
        ("Parameters", str(spec.workers)),
        ("ParameterStart", "0"),
        ("ParameterStep", "1"),
        ("Executable", _jdl_str("/bin/bash")),
        ("Arguments", _jdl_str(" ".join(shlex.quote(a) for a in args))),
        ("StdOutput", _jdl_str("worker__PARAM_.out")),
        ("StdError", _jdl_str("worker__PARAM_.err")),
        ("InputSandbox", "{" + ", ".join(_jdl_str(i) for i in inputs) + "}"),
        (
            "OutputSandbox",
            "{"
            + ", ".join(_jdl_str(o) for o in ("worker__PARAM_.out", "worker__PARAM_.err"))
            + "}",
        ),
        ("CPUTime", str(spec.time_limit)),
    ]
    if spec.night:
        attrs.append(("GridXferNight", _jdl_str(spec.night)))
    if spec.partition:
        attrs.append(("Site", _jdl_str(spec.partition)))
    head = [
        f"# Written by `gridxfer launch --backend jdl` at {time.strftime('%Y-%m-%dT%H:%M:%S')}.",
        f"# Submit: dirac-wms-job-submit {JOB_FILES['jdl']}   (or glite-wms-job-submit -a)",
        "# No password in here: it travels as a file in the InputSandbox, named in job.env.",
    ]
    width = max(len(k) for k, _ in attrs)
    body = [f"{k.ljust(width)} = {v};" for k, v in attrs]
    return "\n".join(head + body + [""])


RENDERERS = {"slurm": render_sbatch, "condor": render_condor, "jdl": render_jdl}


def write_job_file(spec: LaunchSpec, job: JobDir) -> Path | None:
    if spec.backend == "local":
        return None
    path = job.path / JOB_FILES[spec.backend]
    _write_private(path, RENDERERS[spec.backend](spec, job))
    if spec.backend == "slurm":
        path.chmod(0o700)
    job.job_file = path
    return path


# --------------------------------------------------------------------------- submission


def submit_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment for the submit command, without GRIDXFER_* (the job sets its own)."""
    base = dict(os.environ) if base is None else base
    return {k: v for k, v in base.items() if not k.startswith("GRIDXFER_")}


def _run_submit(argv: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=SUBMIT_TIMEOUT,
            env=submit_environment(),
            stdin=subprocess.DEVNULL,
            cwd=cwd,
        )
    except FileNotFoundError:
        raise ConfigError(f"{argv[0]} not found: is the {what} client installed?") from None
    except subprocess.TimeoutExpired:
        raise LaunchError(f"{argv[0]} did not answer within {SUBMIT_TIMEOUT:g}s") from None
    if proc.returncode != 0:
        detail = " ".join((proc.stderr or proc.stdout).split())[:500] or "no output"
        raise LaunchError(f"{argv[0]} failed with status {proc.returncode}: {detail}")
    return proc.stdout


def submit_slurm(job_file: Path) -> str:
    """``sbatch --parsable``; the job id (array tasks are then JOBID_TASKID)."""
    out = _run_submit(["sbatch", "--parsable", str(job_file)], "Slurm")
    m = re.match(r"\s*(\d+)", out)
    if not m:
        raise LaunchError(f"sbatch printed no job id: {out.strip()[:200]!r}")
    return m[1]


def submit_condor(job_file: Path) -> str | None:
    """``condor_submit -terse`` when it is installed; the cluster id, else None."""
    if shutil.which("condor_submit") is None:
        return None
    out = _run_submit(["condor_submit", "-terse", str(job_file)], "HTCondor")
    m = re.match(r"\s*(\d+)\.\d+", out)
    if not m:
        raise LaunchError(f"condor_submit printed no cluster id: {out.strip()[:200]!r}")
    return m[1]


def submit_jdl(job_file: Path) -> str | None:
    """DIRAC (``dirac-wms-job-submit``) or gLite (``glite-wms-job-submit -a``) when installed.

    Run in the job directory: the JDL's sandbox names are relative to it.
    """
    if shutil.which("dirac-wms-job-submit"):
        out = _run_submit(["dirac-wms-job-submit", job_file.name], "DIRAC", cwd=job_file.parent)
        ids = re.findall(r"\b\d+\b", out)
        return ",".join(ids) if ids else out.strip()[:200]
    if shutil.which("glite-wms-job-submit"):
        out = _run_submit(
            ["glite-wms-job-submit", "-a", job_file.name], "gLite", cwd=job_file.parent
        )
        m = re.search(r"https://\S+", out)
        return m[0] if m else out.strip()[:200]
    return None


def submit(spec: LaunchSpec, job: JobDir) -> str | None:
    assert job.job_file is not None
    if spec.backend == "slurm":
        return submit_slurm(job.job_file)
    if spec.backend == "condor":
        return submit_condor(job.job_file)
    return submit_jdl(job.job_file)


# --------------------------------------------------------------------------- local


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

    def _forward(self, signum: int, frame: Any) -> None:
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

    def run(self) -> SupervisorReport:
        sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        old = {s: signal.signal(s, self._forward) for s in sigs}
        try:
            for i, argv in enumerate(self.commands):
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
                log.info(
                    "worker %d started: pid %d, job id %s, log %s", i, proc.pid, job_id, logfile
                )
                if (
                    self.report.signal is not None
                ):  # stopped while starting: forward to this one too
                    proc.send_signal(self.report.signal)
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
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return self.report


def local_environment(job: JobDir, base: dict[str, str] | None = None) -> dict[str, str]:
    env = submit_environment(base)
    env.update(job.env)
    return env


# --------------------------------------------------------------------------- sandbox mode


def resolve_sandbox_mode(mode: str, lookup: Any, *, dry_run: bool) -> str:
    """``auto`` becomes ``fetch`` when a sandbox is recorded for the night, else ``none``."""
    if mode != "auto":
        return mode
    try:
        found = lookup() is not None
    except GridXferError as exc:
        if not dry_run:
            raise
        log.warning("cannot look up the sandbox record (%s); the job will fetch one", exc)
        return "fetch"
    if not found:
        log.info(
            "no sandbox recorded for this night: workers run without one "
            "(`gridxfer sandbox upload` records one)"
        )
    return "fetch" if found else "none"
