"""`gridxfer launch` as one library call: check, prepare, render, then submit or supervise.

A dry run writes everything and submits nothing, and works without the
database: the sandbox lookup is tried once and its failure only logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from GRID_XFER.app import App
from GRID_XFER.couch import Couch
from GRID_XFER.errors import GridXferError
from GRID_XFER.launch.backend import get_backend
from GRID_XFER.launch.local import SupervisorReport, local_commands, supervise
from GRID_XFER.launch.spec import JobDir, LaunchSpec, prepare
from GRID_XFER.sandbox.record import lookup

log = logging.getLogger(__name__)


@dataclass
class LaunchResult:
    """What was written and started; ``status`` is the process's exit status to report."""

    spec: LaunchSpec
    job: JobDir
    dry_run: bool
    job_id: str | None = None
    submitted: bool = False
    commands: list[list[str]] | None = None  # local, dry run: what would run
    report: SupervisorReport | None = None  # local: how the workers ended
    text: str | None = None  # batch, dry run: the job file

    @property
    def status(self) -> int:
        return self.report.status if self.report is not None else 0

    @property
    def job_file(self) -> Path | None:
        return self.job.job_file

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": self.spec.backend,
            "workers": self.spec.workers,
            "night": self.spec.night,
            "sandbox": self.spec.sandbox,
            "dry_run": self.dry_run,
            **self.job.as_dict(),
            "job_id": self.job_id,
            "submitted": self.submitted,
        }
        if self.commands is not None:
            out["commands"] = self.commands
        if self.report is not None:
            out.update(self.report.as_dict())  # "workers" becomes the list of their exits
        if self.text is not None:
            out["text"] = self.text
        return out


def resolve_sandbox_mode(
    mode: str, lookup: Callable[[], dict[str, Any] | None], *, dry_run: bool
) -> str:
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


def _database(app: App, night: str | None, dry_run: bool) -> Couch:
    """The database, checked unless this is a dry run (which must work without it)."""
    if dry_run:  # look the sandbox up once, quickly
        return app.couch(retries=0)
    couch = app.couch()
    couch.require_db()
    if night:
        app.pool().require_night(night)
    return couch


def launch(
    app: App, spec: LaunchSpec, sandbox_mode: str = "auto", dry_run: bool = False
) -> LaunchResult:
    """Write the job directory and job file; unless ``dry_run``, submit or run the workers.

    ``sandbox_mode`` is ``fetch``, ``none`` or ``auto`` (fetch if one is recorded).
    Local workers run in the foreground until they exit: the result's ``status``.
    """
    couch = _database(app, spec.night, dry_run)
    spec.sandbox = resolve_sandbox_mode(
        sandbox_mode, lambda: lookup(couch, spec.night), dry_run=dry_run
    )
    job = prepare(app.config, spec)
    backend = get_backend(spec.backend)
    job_file = backend.render(spec, job)
    result = LaunchResult(spec, job, dry_run)
    if job_file is None:  # local: nothing to submit, the workers run here
        if dry_run:
            result.commands = local_commands(spec, job)
        else:
            result.report = supervise(spec, job)
            result.submitted = True
        return result
    if dry_run:
        result.text = job_file.read_text()
        return result
    result.job_id = backend.submit(spec, job)
    result.submitted = result.job_id is not None
    return result
