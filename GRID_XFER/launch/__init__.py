"""Launching workers: a job directory, a job file per backend, submission, a local supervisor.

``gridxfer launch`` prepares one job directory (:mod:`.spec`) holding

    job.yaml            the worker configuration: the launching config without any password
    couchdb.password    the database password (0600), only when there is one and it is not
                        already in a file the nodes can read (``couchdb.password_file``)
    launch.sh           the node-side starter (a copy of GRID_XFER/sandbox/files/launch.sh)
    job.env             the job's GRIDXFER_* settings (grid jobs read them from here)
    logs/               the workers' output
    gridxfer.sbatch | gridxfer.sub | gridxfer.jdl     the backend's job file

and then a :class:`~.backend.Backend` (:mod:`.slurm`, :mod:`.condor`, :mod:`.jdl`)
submits it, or :mod:`.local` runs N workers under a supervisor; :func:`.run.launch`
does all of it. The password never appears in a job file, an argument list or
the batch system's copy of the submitting environment: jobs get the *name* of
the password file in ``GRIDXFER_COUCHDB_PASSWORD_FILE``.
"""

from GRID_XFER.launch.backend import (
    JOB_FILES,
    REGISTRY,
    Backend,
    get_backend,
    submit,
    write_job_file,
)
from GRID_XFER.launch.condor import render_condor, submit_condor
from GRID_XFER.launch.jdl import render_jdl, submit_jdl
from GRID_XFER.launch.local import (
    Supervisor,
    SupervisorReport,
    WorkerExit,
    local_commands,
    local_environment,
    supervise,
)
from GRID_XFER.launch.run import LaunchResult, launch, resolve_sandbox_mode
from GRID_XFER.launch.slurm import render_sbatch, slurm_time, submit_slurm
from GRID_XFER.launch.spec import (
    BACKENDS,
    CONFIG_NAME,
    ENV_NAME,
    SECRET_ENV,
    SECRET_NAME,
    JobDir,
    LaunchSpec,
    job_config_data,
    parse_duration,
    prepare,
    stage_password,
)
from GRID_XFER.launch.submit import SUBMIT_TIMEOUT, submit_environment

__all__ = [
    "BACKENDS",
    "CONFIG_NAME",
    "ENV_NAME",
    "JOB_FILES",
    "REGISTRY",
    "SECRET_ENV",
    "SECRET_NAME",
    "SUBMIT_TIMEOUT",
    "Backend",
    "JobDir",
    "LaunchResult",
    "LaunchSpec",
    "Supervisor",
    "SupervisorReport",
    "WorkerExit",
    "get_backend",
    "job_config_data",
    "launch",
    "local_commands",
    "local_environment",
    "parse_duration",
    "prepare",
    "render_condor",
    "render_jdl",
    "render_sbatch",
    "resolve_sandbox_mode",
    "slurm_time",
    "stage_password",
    "submit",
    "submit_condor",
    "submit_environment",
    "submit_jdl",
    "submit_slurm",
    "supervise",
    "write_job_file",
]
