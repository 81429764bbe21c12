"""`worker`: claim tokens and process them."""

from __future__ import annotations

import logging
import sys

import click

from GRID_XFER.app import App, WorkerOptions
from GRID_XFER.cli.base import emit_json, json_option, pass_app, worker_options

log = logging.getLogger("GRID_XFER.cli")


@click.command()
@worker_options
@json_option("Print a summary as JSON at the end.")
@pass_app
def worker(app: App, opts: WorkerOptions, as_json: bool) -> None:
    """Claim tokens and process them until done, stopped or out of time."""
    runner, report = app.run_worker(opts)
    if as_json:
        emit_json({"worker": runner.pool.worker, **report.as_dict()})
    if report.signal is not None:
        log.warning("stopped by signal %d", report.signal)
        sys.exit(128 + report.signal)
