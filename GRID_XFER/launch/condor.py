"""HTCondor: a vanilla-universe submit description queueing N jobs.

Files travel with the job (``transfer_input_files``) and ``getenv = false``
keeps the submitting environment, and any password in it, out of the job.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from GRID_XFER.errors import LaunchError
from GRID_XFER.launch.spec import JobDir, LaunchSpec
from GRID_XFER.launch.submit import run_submit

JOB_FILE = "gridxfer.sub"


def condor_args(args: list[str]) -> str:
    """HTCondor's new argument syntax: double-quoted, single quotes group, '' and "" escape."""
    out = []
    for a in args:
        if re.search(r"[\s'\"]", a) or not a:
            a = "'" + a.replace("'", "''").replace('"', '""') + "'"
        out.append(a)
    return '"' + " ".join(out) + '"'


def condor_env(env: dict[str, str]) -> str:
    """The ``environment`` value in the same new syntax."""
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
    ``job_max_vacate_time`` before SIGKILL: the worker's grace.
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
        ("arguments", condor_args(spec.worker_args())),
        ("transfer_executable", "true"),
        ("should_transfer_files", "YES"),
        ("when_to_transfer_output", "ON_EXIT_OR_EVICT"),
        ("transfer_input_files", ", ".join(inputs)),
        ("transfer_output_files", '""'),
        ("getenv", "false"),
        ("environment", condor_env(env)),
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
        f"# Submit: condor_submit {job.path / JOB_FILE}",
        "# No password in here: it travels as a 0600 file named by GRIDXFER_COUCHDB_PASSWORD_FILE.",
    ]
    body = [f"{k.ljust(width)} = {v}" for k, v in items]
    return "\n".join(head + body + [f"queue {spec.workers}", ""])


def submit_condor(job_file: Path) -> str | None:
    """``condor_submit -terse`` when it is installed; the cluster id, else None."""
    if shutil.which("condor_submit") is None:
        return None
    out = run_submit(["condor_submit", "-terse", str(job_file)], "HTCondor")
    m = re.match(r"\s*(\d+)\.\d+", out)
    if not m:
        raise LaunchError(f"condor_submit printed no cluster id: {out.strip()[:200]!r}")
    return m[1]


class CondorBackend:
    name = "condor"
    tool: str | None = "condor_submit"

    def render(self, spec: LaunchSpec, job: JobDir) -> Path:
        return job.add_job_file(JOB_FILE, render_condor(spec, job))

    def submit(self, spec: LaunchSpec, job: JobDir) -> str | None:
        return submit_condor(job.job_file or self.render(spec, job))
