"""`node fetch|run`: the batch-node side of ``launch.sh``.

The node runs the same library calls as `gridxfer worker`, in a scratch directory
holding the verified sandbox and the job's configuration.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from GRID_XFER import sandbox as sb
from GRID_XFER.app import App, WorkerOptions
from GRID_XFER.cli.base import worker_options

log = logging.getLogger("GRID_XFER.cli")


@click.group()
def node() -> None:
    """On a batch node: fetch the sandbox, run one worker (what launch.sh calls)."""


@node.command("fetch")
@click.option("--night", envvar="GRIDXFER_NIGHT", help="The sandbox recorded for this night.")
@click.option(
    "--into", required=True, type=click.Path(path_type=Path, file_okay=False), metavar="DIR"
)
def node_fetch(night: str | None, into: Path) -> None:
    """Fetch, verify and unpack the recorded sandbox into DIR/sandbox (exit 10, 11)."""
    with sb.interruptible():
        where = sb.fetch_into(into, night or None)
    click.echo(where)


@node.command("run")
@click.option(
    "--sandbox",
    "fetch_mode",
    type=click.Choice(["fetch", "none"]),
    envvar="GRIDXFER_SANDBOX",
    default="fetch",
    show_default=True,
    help="Fetch the recorded sandbox first, or run without one.",
)
@click.option("--keep", is_flag=True, help="Keep the scratch directory.")
@worker_options
def node_run(fetch_mode: str, keep: bool, opts: WorkerOptions) -> None:
    """Sandbox, then one worker in a private scratch directory; the worker's exit status."""
    opts.night = opts.night or os.environ.get("GRIDXFER_NIGHT") or None
    status = sb.run(opts.night, _worker(opts), fetch_mode=fetch_mode, keep=keep)
    if status:
        sys.exit(status)


def _worker(opts: WorkerOptions) -> Callable[[Path], int]:
    def work(config_path: Path) -> int:
        _, report = App(str(config_path)).run_worker(opts)
        if report.signal is None:
            return 0
        log.warning("stopped by signal %d", report.signal)  # as `gridxfer worker` says it
        return 128 + report.signal

    return work
