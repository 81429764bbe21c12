"""`sandbox build|upload|show`: the worker sandbox shipped to batch nodes."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from GRID_XFER import sandbox as sb
from GRID_XFER.app import App
from GRID_XFER.cli.base import emit_json, json_option, pass_app
from GRID_XFER.errors import NotFound

log = logging.getLogger("GRID_XFER.cli")


@click.group()
def sandbox() -> None:
    """The worker sandbox shipped to batch nodes (docs/launch.md)."""


@sandbox.command("build")
@click.option(
    "--dir",
    "src",
    type=click.Path(path_type=Path, file_okay=False),
    help="The sandbox directory (default: the one shipped with GRID_XFER).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("gridxfer-sandbox.tar.gz"),
    show_default=True,
    help="The archive; its SHA-256 goes to OUTPUT.sha256.",
)
@json_option()
@pass_app
def sandbox_build(app: App, src: Path | None, output: Path, as_json: bool) -> None:
    """Pack the sandbox (launch script, worker defaults) into a reproducible tar.gz.

    Refuses anything that looks like a credential (exit 6).
    """
    built = sb.build(src or sb.default_source_dir(), output, secrets=app.known_secrets())
    if as_json:
        emit_json(built.as_dict())
    else:
        click.echo(
            f"{built.path}: {built.size} bytes, {len(built.files)} files, sha256 {built.sha256}"
        )


@sandbox.command("upload")
@click.argument("url")
@click.option(
    "--file",
    "archive",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("gridxfer-sandbox.tar.gz"),
    show_default=True,
    help="The archive made by `sandbox build`.",
)
@click.option(
    "--night", help="Record it for this night (default: for every night without one of its own)."
)
@click.option("--overwrite", is_flag=True, help="Replace a different file at URL.")
@json_option()
@pass_app
def sandbox_upload(
    app: App, url: str, archive: Path, night: str | None, overwrite: bool, as_json: bool
) -> None:
    """Copy the sandbox to URL (gfal2), verify it, and record {url, sha256} for the workers."""
    couch = app.couch()
    couch.require_db()
    doc = sb.upload(app.storage(), couch, archive, url, night=night, overwrite=overwrite)
    if as_json:
        emit_json(doc)
    else:
        click.echo(f"sandbox {doc['url']} (sha256 {doc['sha256']}) recorded as {doc['_id']}")


@sandbox.command("show")
@click.option("--night", help="The sandbox a worker of this night uses (default: the general one).")
@json_option()
@pass_app
def sandbox_show(app: App, night: str | None, as_json: bool) -> None:
    """Show the recorded sandbox (exit 5 if none)."""
    couch = app.couch()
    couch.require_db()
    doc = sb.lookup(couch, night)
    if doc is None:
        raise NotFound(
            f"no sandbox recorded{' for night ' + night if night else ''}; "
            "run `gridxfer sandbox upload`"
        )
    if as_json:
        emit_json(doc)
    else:
        click.echo(f"{doc['_id']}: {doc['url']} sha256 {doc['sha256']} ({doc.get('size')} bytes)")
