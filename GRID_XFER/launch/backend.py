"""What every batch system offers `gridxfer launch`, and the backends by name.

A backend turns a prepared job directory into its job file and hands that to
its batch system; adding a batch system is one module with these two methods
and one line in :data:`REGISTRY`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from GRID_XFER.errors import InvalidInput
from GRID_XFER.launch import condor, jdl, slurm
from GRID_XFER.launch.local import LocalBackend
from GRID_XFER.launch.spec import JobDir, LaunchSpec


class Backend(Protocol):
    name: str
    # The command a person runs to submit the job file where it is not installed here.
    tool: str | None

    def render(self, spec: LaunchSpec, job: JobDir) -> Path | None:
        """Write the job file into ``job`` and return it (None: the backend has none)."""
        ...

    def submit(self, spec: LaunchSpec, job: JobDir) -> str | None:
        """The batch system's job id; None when its submit tool is not installed here."""
        ...


REGISTRY: dict[str, Backend] = {
    b.name: b
    for b in (LocalBackend(), slurm.SlurmBackend(), condor.CondorBackend(), jdl.JdlBackend())
}
JOB_FILES = {"slurm": slurm.JOB_FILE, "condor": condor.JOB_FILE, "jdl": jdl.JOB_FILE}


def get_backend(name: str) -> Backend:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InvalidInput(
            f"unknown backend {name!r} (choose from {', '.join(REGISTRY)})"
        ) from None


def write_job_file(spec: LaunchSpec, job: JobDir) -> Path | None:
    """The job file of ``spec.backend`` (None for local workers)."""
    return get_backend(spec.backend).render(spec, job)


def submit(spec: LaunchSpec, job: JobDir) -> str | None:
    return get_backend(spec.backend).submit(spec, job)
