"""What every command shares: the application object, JSON output, option sets."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from GRID_XFER.app import TASKS, App, WorkerOptions
from GRID_XFER.urls import RedactingFormatter

F = TypeVar("F", bound=Callable[..., Any])

pass_app = click.make_pass_decorator(App)


def text_formatter() -> RedactingFormatter:
    """The one text form of our log lines (stderr, the service's log file): redacted,
    so a message quoting a URL never shows a credential."""
    return RedactingFormatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
    )


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def json_option(help: str | None = None) -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help)


def worker_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of one worker (`worker`, `node run`), handed on as one ``opts``.

    ``launch`` has its own wording of them.
    """

    @functools.wraps(f)
    def command(
        *args: Any,
        night: str | None,
        max_tokens: int | None,
        max_time: float | None,
        idle_exit: bool,
        task_kind: str | None,
        command: str | None,
        stream: str | None,
        **kwargs: Any,
    ) -> Any:
        opts = WorkerOptions(night, max_tokens, max_time, idle_exit, task_kind, command, stream)
        return f(*args, opts=opts, **kwargs)

    for opt in reversed(
        (
            click.option("--night", help="Only this night's tokens (default: any night)."),
            click.option("--max-tokens", type=click.IntRange(min=1), help="Stop after K tokens."),
            click.option(
                "--max-time", type=click.FloatRange(min=0), help="Stop claiming after S seconds."
            ),
            click.option("--idle-exit", is_flag=True, help="Exit when nothing is claimable."),
            click.option(
                "--task",
                "task_kind",
                type=click.Choice(TASKS),
                help="Task to run per token (default: worker.task).",
            ),
            click.option(
                "--command", help="Command for the command task (default: worker.command)."
            ),
            click.option(
                "--stream",
                metavar="NAME",
                envvar="GRIDXFER_STREAM",
                help="The stream this worker serves: `gridxfer pause NAME` stops it too.",
            ),
        )
    ):
        command = opt(command)
    return command
