"""Slurm: a job array of single-core tasks, submitted with ``sbatch``.

The job directory sits on a file system the nodes share, so the script names
files by absolute path and the worker reads the password file in place.
"""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

from GRID_XFER.errors import LaunchError
from GRID_XFER.launch.spec import JobDir, LaunchSpec
from GRID_XFER.launch.submit import run_submit

JOB_FILE = "gridxfer.sbatch"


def slurm_time(seconds: int) -> str:
    """``D-HH:MM:SS`` (Slurm rounds the limit up to whole minutes)."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    hms = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{hms}" if days else hms


def render_sbatch(spec: LaunchSpec, job: JobDir) -> str:
    """A Slurm batch script: an array of ``spec.workers`` single-core tasks.

    ``--signal=B:TERM@grace`` sends SIGTERM to the batch shell ``grace`` seconds
    before the time limit; the shell ``exec``s launch.sh which ``exec``s the
    worker, so the worker itself gets it, hands its token back and exits 143.
    """
    lines = [
        "#!/bin/bash",
        f"# Written by `gridxfer launch --backend slurm` at {time.strftime('%Y-%m-%dT%H:%M:%S')}.",
        f"# Submit: sbatch {job.path / JOB_FILE}",
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
    lines += [f"export {k}={shlex.quote(v)}" for k, v in job.env.items()]
    argv = " ".join(shlex.quote(a) for a in spec.worker_args())
    lines += [f"exec /bin/bash {shlex.quote(str(job.launch))}{' ' + argv if argv else ''}", ""]
    return "\n".join(lines)


def submit_slurm(job_file: Path) -> str:
    """``sbatch --parsable``; the job id (array tasks are then JOBID_TASKID)."""
    out = run_submit(["sbatch", "--parsable", str(job_file)], "Slurm")
    m = re.match(r"\s*(\d+)", out)
    if not m:
        raise LaunchError(f"sbatch printed no job id: {out.strip()[:200]!r}")
    return m[1]


class SlurmBackend:
    name = "slurm"
    tool: str | None = "sbatch"

    def render(self, spec: LaunchSpec, job: JobDir) -> Path:
        return job.add_job_file(JOB_FILE, render_sbatch(spec, job), mode=0o700)

    def submit(self, spec: LaunchSpec, job: JobDir) -> str:
        """Always a job id: without sbatch there is no Slurm to launch on (ConfigError)."""
        return submit_slurm(job.job_file or self.render(spec, job))
