"""``gridxfer``: a thin click layer; each command parses, makes one library call, prints.

All output meant for programs goes to stdout (``--json``); messages for people go
to stderr through logging, which only this package configures. Any
:class:`GridXferError` becomes one line on stderr and its documented exit status
(:mod:`GRID_XFER.cli.exits`, docs/cli.md); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import logging
import sys

import click

from GRID_XFER import __version__
from GRID_XFER.app import App
from GRID_XFER.cli import (
    control,
    exits,
    launch,
    nightly,
    node,
    run,
    sandbox,
    server,
    status,
    tape,
    tokens,
)
from GRID_XFER.cli.base import text_formatter
from GRID_XFER.errors import GridXferError
from GRID_XFER.urls import redact

log = logging.getLogger("GRID_XFER.cli")


def setup_logging(debug: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    # Redacted: a message quoting a URL (ours, gfal2's, a library's) never shows a credential.
    handler.setFormatter(text_formatter())
    root = logging.getLogger("GRID_XFER")
    root.handlers[:] = [handler]
    root.setLevel(level)
    if not debug:
        logging.getLogger("urllib3").setLevel(logging.ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    envvar="GRIDXFER_CONFIG",
    help="YAML configuration (default: ./gridxfer.yaml, then the user config dir).",
)
@click.option("--debug", is_flag=True, help="Debug logging and tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.version_option(__version__, prog_name="gridxfer")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool, quiet: bool) -> None:
    """Nightly raw-data transfer over a CouchDB token pool."""
    setup_logging(debug, quiet)
    ctx.obj = App(config_path)


for command in (
    server.server,
    server.init,
    tokens.tokens,
    run.worker,
    status.status,
    sandbox.sandbox,
    launch.launch,
    tape.state_all,
    tape.stage,
    tape.srm,
    node.node,
    control.pause,
    control.resume,
    nightly.nightly,
):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line and a documented exit status for every known error."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="gridxfer", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("gridxfer: aborted", err=True)
        sys.exit(exits.INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except GridXferError as exc:
        if debug:
            log.exception("failed")
        click.echo(f"gridxfer: error: {redact(str(exc))}", err=True)
        sys.exit(exits.exit_status(exc))
    except KeyboardInterrupt:
        click.echo("gridxfer: interrupted", err=True)
        sys.exit(exits.INTERRUPTED)
    except Exception as exc:  # a bug: say so in one line, details with --debug
        if debug:
            raise
        click.echo(
            f"gridxfer: unexpected error: {type(exc).__name__}: {redact(str(exc))} "
            "(run with --debug for details)",
            err=True,
        )
        sys.exit(exits.FAILED)
