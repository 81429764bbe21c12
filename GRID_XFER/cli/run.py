"""`worker`: claim tokens and process them."""

from __future__ import annotations

import logging
import sys

import click

from GRID_XFER.app import App
from GRID_XFER.cli.base import emit_json, json_option, pass_app, to_worker_options, worker_options

log = logging.getLogger("GRID_XFER.cli")


@click.command()
@worker_options
@json_option("Print a summary as JSON at the end.")
@pass_app
def worker(
    app: App,
    night: str | None,
    max_tokens: int | None,
    max_time: float | None,
    idle_exit: bool,
    task_kind: str | None,
    command: str | None,
    as_json: bool,
) -> None:
    """Claim tokens and process them until done, stopped or out of time."""
    opts = to_worker_options(night, max_tokens, max_time, idle_exit, task_kind, command)
    runner, report = app.run_worker(opts)
    if as_json:
        emit_json({"worker": runner.pool.worker, **report.as_dict()})
    if report.signal is not None:
        log.warning("stopped by signal %d", report.signal)
        sys.exit(128 + report.signal)
