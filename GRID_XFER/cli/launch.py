"""`launch`: start N workers locally or through a batch system (the work is ``launch.launch``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from GRID_XFER import launch as ln
from GRID_XFER.app import App
from GRID_XFER.cli.base import emit_json, json_option, pass_app

log = logging.getLogger("GRID_XFER.cli")


@click.command()
@click.option("--backend", type=click.Choice(ln.BACKENDS), required=True)
@click.option("--workers", type=click.IntRange(min=1), required=True, help="How many workers.")
@click.option("--night", help="Only this night's tokens (default: any night).")
@click.option("--dry-run", is_flag=True, help="Write the job files and print them; submit nothing.")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Job directory (default: ./gridxfer-jobs/<backend>-<night>-<time>-<pid>); "
    "batch nodes must see it for slurm.",
)
@click.option(
    "--time-limit",
    default="4h",
    show_default=True,
    help="Wall-time limit per worker (3600, 90m, 4h, 04:00:00).",
)
@click.option(
    "--grace",
    default="120",
    show_default=True,
    help="Seconds between SIGTERM and the kill: the worker hands its token back.",
)
@click.option("--partition", help="Slurm partition (jdl: the Site).")
@click.option("--account", help="Slurm account.")
@click.option(
    "--memory",
    type=click.IntRange(min=0),
    default=1024,
    show_default=True,
    help="Memory per worker, MB (0: the site's default).",
)
@click.option(
    "--task",
    "task_kind",
    type=click.Choice(["command", "noop", "transfer"]),
    help="Task for the workers (default: worker.task).",
)
@click.option("--command", help="Command for the command task.")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Each worker stops after K tokens.")
@click.option(
    "--max-time", type=click.FloatRange(min=0), help="Each worker stops claiming after S s."
)
@click.option(
    "--sandbox",
    "sandbox_mode",
    type=click.Choice(["auto", "fetch", "none"]),
    default="auto",
    show_default=True,
    help="Fetch the recorded sandbox on the node (auto: if one is recorded).",
)
@click.option(
    "--python",
    "node_python",
    help="Python with GRID_XFER on the nodes "
    "(default: this one for local/slurm, python3 for condor/jdl).",
)
@json_option()
@pass_app
def launch(
    app: App,
    backend: str,
    workers: int,
    night: str | None,
    dry_run: bool,
    workdir: Path | None,
    time_limit: str,
    grace: str,
    partition: str | None,
    account: str | None,
    memory: int,
    task_kind: str | None,
    command: str | None,
    max_tokens: int | None,
    max_time: float | None,
    sandbox_mode: str,
    node_python: str | None,
    as_json: bool,
) -> None:
    """Start N workers: locally, as a Slurm job array, an HTCondor cluster or a grid JDL.

    The database password reaches the jobs as a file (GRIDXFER_COUCHDB_PASSWORD_FILE),
    never in a job file or on a command line. See docs/launch.md.
    """
    result = ln.launch(
        app,
        ln.LaunchSpec.from_options(
            backend,
            workers,
            night=night,
            workdir=workdir,
            time_limit=time_limit,
            grace=grace,
            partition=partition,
            account=account,
            memory_mb=memory,
            task=task_kind,
            command=command,
            max_tokens=max_tokens,
            max_time=max_time,
            python=node_python,
        ),
        sandbox_mode,
        dry_run,
    )
    if as_json:
        emit_json(result.as_dict())
    else:
        _show(result)
    if result.status:
        sys.exit(result.status)


def _show(result: ln.LaunchResult) -> None:
    """The result for people: what runs, or where the job went."""
    job, spec = result.job, result.spec
    if result.commands is not None:  # local, dry run
        for k, v in job.env.items():
            click.echo(f"{k}={v}")
        for argv in result.commands:
            click.echo(" ".join(argv))
    elif result.report is not None:  # local workers, all exited
        for w in result.report.workers:
            click.echo(
                f"worker {w.index} (job id {w.job_id}, pid {w.pid}): exit {w.status}, log {w.log}"
            )
    elif result.text is not None:  # batch, dry run
        click.echo(result.text.rstrip())
        log.info("dry run: wrote %s; nothing submitted", job.job_file)
    elif result.job_id is None:
        assert job.job_file is not None
        tool = ln.get_backend(spec.backend).tool
        click.echo(
            f"wrote {job.job_file}; {tool} is not installed here: submit it from a "
            f"submit node (cd {job.path} && {tool} {job.job_file.name})"
        )
    else:
        click.echo(
            f"{spec.backend} job {result.job_id} submitted: {spec.workers} workers; "
            f"job file {job.job_file}; logs {job.logs}"
        )
