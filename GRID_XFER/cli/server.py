"""`server start|stop|status` (the embedded pouchdb-server) and `init`."""

from __future__ import annotations

import sys

import click

from GRID_XFER.app import App
from GRID_XFER.cli import exits
from GRID_XFER.cli.base import emit_json, json_option, pass_app
from GRID_XFER.server import state_dict


@click.group()
def server() -> None:
    """The embedded CouchDB-API server (pouchdb-server) for a single machine."""


@server.command("start")
@json_option()
@pass_app
def server_start(app: App, as_json: bool) -> None:
    """Start the server and wait until it answers."""
    state, started = app.embedded_server().start()
    if as_json:
        emit_json({**state_dict(state), "started_now": started})
    else:
        verb = "started" if started else "already running"
        click.echo(f"pouchdb-server {verb} at {state.url} (pid {state.pid}, log {state.log})")


@server.command("stop")
@json_option()
@pass_app
def server_stop(app: App, as_json: bool) -> None:
    """Stop the server this machine started (by its recorded PID)."""
    stopped = app.embedded_server().stop()
    if as_json:
        emit_json({"stopped": stopped})
    else:
        click.echo("stopped" if stopped else "not running")


@server.command("status")
@json_option()
@pass_app
def server_status(app: App, as_json: bool) -> None:
    """Is the embedded server running? Exit 0 if so, 7 if not."""
    state = app.embedded_server().status()
    if as_json:
        emit_json(state_dict(state))
    else:
        click.echo(
            f"running at {state.url} (pid {state.pid})"
            if state.running
            else f"not running ({state.url})"
        )
    if not state.running:
        sys.exit(exits.SERVER_NOT_RUNNING)


@click.command()
@json_option()
@pass_app
def init(app: App, as_json: bool) -> None:
    """Create the database and install or update the design documents (idempotent)."""
    result = app.init()
    if as_json:
        emit_json(result.as_dict())
        return
    click.echo(
        f"database {result.database} {'created' if result.created else 'exists'} at {result.url}"
    )
    for name, what in result.design_docs.items():
        click.echo(f"  _design/{name}: {what}")
    if result.members is not None:
        click.echo(
            f"  _security: members {result.members['names']} roles {result.members['roles']}"
        )
