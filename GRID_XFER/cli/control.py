"""`pause` and `resume`: stop and restart claiming by every worker of a database."""

from __future__ import annotations

from typing import Any

import click

from GRID_XFER import pause as pz
from GRID_XFER.app import App
from GRID_XFER.cli.base import emit_json, json_option, pass_app


def describe(state: dict[str, Any]) -> str:
    if state["all"]:
        return "paused: every stream"
    if state["streams"]:
        return "paused: " + ", ".join(state["streams"])
    return "not paused"


def _change(app: App, stream: str | None, resume: bool, as_json: bool) -> None:
    if stream is not None:
        app.config.nightly.stream(stream)  # InvalidInput for a stream the config does not know
    couch = app.couch()
    couch.require_db()
    state = pz.resume(couch, stream) if resume else pz.pause(couch, stream)
    if as_json:
        emit_json(state)
        return
    click.echo(describe(state))
    if state.get("note"):
        click.echo(f"note: {state['note']}", err=True)


@click.command()
@click.argument("stream", required=False)
@json_option("Print the pause as JSON: {all, streams, updated, by}.")
@pass_app
def pause(app: App, stream: str | None, as_json: bool) -> None:
    """Stop every worker (or those of STREAM) claiming; tokens in progress finish."""
    _change(app, stream, False, as_json)


@click.command()
@click.argument("stream", required=False)
@json_option("Print the pause as JSON: {all, streams, updated, by} (and a note).")
@pass_app
def resume(app: App, stream: str | None, as_json: bool) -> None:
    """Let workers claim again: every stream, or STREAM only."""
    _change(app, stream, True, as_json)
