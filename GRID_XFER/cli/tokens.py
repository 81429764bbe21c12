"""`tokens create|list|show|reset|reap|delete|attach|get-attachment`: a night's tokens."""

from __future__ import annotations

import logging
import mimetypes
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import yaml

from GRID_XFER import token as tk
from GRID_XFER.app import App
from GRID_XFER.cli.base import emit_json, json_option, pass_app
from GRID_XFER.create import CreateRequest, create_tokens
from GRID_XFER.errors import InvalidInput
from GRID_XFER.pool import attachments

log = logging.getLogger("GRID_XFER.cli")


@click.group()
def tokens() -> None:
    """Create, inspect and repair a night's tokens."""


@tokens.command("create")
@click.argument("night")
@click.option(
    "--source",
    help="Source URL: <source>/<NIGHT>/<EXPOSURE>/ is scanned "
    "(default: template, then config `source`).",
)
@click.option(
    "--dest",
    "destination",
    help="Destination URL; files go to <dest>/<NIGHT>/... "
    "(default: template, then config `destination`).",
)
@click.option(
    "--template", type=click.Path(path_type=Path), help="Token-set template (tokens/*.yaml)."
)
@click.option(
    "--from",
    "from_file",
    type=click.Path(path_type=Path),
    help="YAML/JSON list of exposures instead of scanning a source.",
)
@click.option(
    "--surls",
    type=click.Path(path_type=Path),
    help="File of URLs, one per line, grouped --group per token (ADLER32 from storage).",
)
@click.option("--group", type=click.IntRange(min=1), help="Files per token for --surls.")
@click.option(
    "--manifest",
    "manifest_algo",
    type=click.Choice(["sha256", "adler32"]),
    help="Manifest kind: checksum-<EXPOSURE>.sha256sum or .adler32.",
)
@json_option()
@pass_app
def tokens_create(
    app: App,
    night: str,
    source: str | None,
    destination: str | None,
    template: Path | None,
    from_file: Path | None,
    surls: Path | None,
    group: int | None,
    manifest_algo: str | None,
    as_json: bool,
) -> None:
    """Create NIGHT's tokens from its source; re-running catches up, adding only what is new."""
    req = CreateRequest(
        night, source, destination, template, from_file, surls, group, manifest_algo
    )
    out = create_tokens(app.config, app.pool(), req, app.storage)
    if out.report.outdated:
        log.warning(
            "%d done token(s) have new or changed files at the source (e.g. %s); "
            "they are left alone: `gridxfer tokens reset %s --state done` moves them again",
            len(out.report.outdated),
            out.report.outdated[0],
            night,
        )
    for code, problems in ((31, out.manifest_problems), (34, out.source_problems)):
        for exposure, message in sorted(problems.items()):
            log.warning(
                "%s: %s (the token will fail with %d unless it is fixed first)",
                exposure,
                message,
                code,
            )
    if as_json:
        emit_json(out.as_dict())
        return
    r = out.report.as_dict()
    click.echo(
        f"night {night}: {r['created']} created, {r['updated']} updated, "
        f"{r['unchanged']} unchanged, {r['skipped']} left alone (held or finished)"
    )


@tokens.command("list")
@click.argument("night")
@click.option("--state", "states", multiple=True, type=click.Choice(tk.STATES))
@click.option("--code", "codes", multiple=True, type=int, help="Only errors with this code.")
@json_option("An array of the token documents.")
@pass_app
def tokens_list(
    app: App, night: str, states: tuple[str, ...], codes: tuple[int, ...], as_json: bool
) -> None:
    """List NIGHT's tokens (optionally by state or error code)."""
    pool = app.pool()
    pool.require_night(night)
    docs = pool.select(night, states or None, codes or None)
    if as_json:
        emit_json(docs)
        return
    for d in docs:
        click.echo(token_line(d))


def token_line(doc: dict[str, Any]) -> str:
    """One token as `tokens list` shows it: a malformed one too (docs/tokens.md)."""
    state, problem = tk.shown_state(doc), tk.problem(doc)
    err = doc.get("error")
    message = err.get("message") if isinstance(err, dict) else None
    message = message if doc.get("state") == "error" else None
    extra = ""
    if state == "error":
        extra = f"  {tk.error_code(doc)} {message if isinstance(message, str) else problem or ''}"
    if problem is not None and problem not in extra:
        extra += f"  ({problem})"
    if isinstance(err, list) and err and isinstance(err[-1], dict):  # PiCaS's Task.error()
        extra += f"  (PiCaS error: {err[-1].get('message')})"
    return f"{doc['_id']:<40} {state:<9} attempts={doc.get('attempts', 0)!s}{extra}"


@tokens.command("show")
@click.argument("token_id")
@json_option()
@pass_app
def tokens_show(app: App, token_id: str, as_json: bool) -> None:
    """Show one token (as stored, even a malformed one)."""
    tk.check_token_id(token_id)  # `..`, `_all_docs`, `a/b` would ask the server for another thing
    doc = app.pool().get(token_id)
    if as_json:
        emit_json(doc)
    else:
        click.echo(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).rstrip())


@tokens.command("reset")
@click.argument("night")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(tk.STATES),
    help="States to reset (default: error).",
)
@click.option("--code", "codes", multiple=True, type=int, help="Only tokens with this error code.")
@click.option("--force", is_flag=True, help="Also tokens that live workers hold.")
@json_option()
@pass_app
def tokens_reset(
    app: App,
    night: str,
    states: tuple[str, ...],
    codes: tuple[int, ...],
    force: bool,
    as_json: bool,
) -> None:
    """Send tokens back to todo with a fresh attempt count."""
    pool = app.pool()
    pool.require_night(night)
    ids = pool.reset(night, states or None, codes or None, force=force)
    emit_json({"reset": ids}) if as_json else click.echo(f"{len(ids)} tokens reset")


@tokens.command("reap")
@click.option("--night", help="Only this night.")
@json_option()
@pass_app
def tokens_reap(app: App, night: str | None, as_json: bool) -> None:
    """Return tokens of lost workers (expired leases) to todo, or error 90; settle conflicts."""
    pool = app.pool()
    swept = pool.sweep(night)
    ids = pool.reap(night)
    if as_json:
        emit_json({"reaped": ids, "conflicts_settled": swept})
    else:
        click.echo(f"{len(ids)} expired leases reaped, {len(swept)} conflicted tokens settled")


@tokens.command("delete")
@click.argument("night")
@click.option("--yes", is_flag=True, help="Do not ask.")
@json_option()
@pass_app
def tokens_delete(app: App, night: str, yes: bool, as_json: bool) -> None:
    """Delete every token of NIGHT."""
    pool = app.pool()
    pool.require_night(night)
    if not yes:
        if not sys.stdin.isatty():
            raise InvalidInput("refusing to delete without --yes (no terminal to ask)")
        click.confirm(f"Delete every token of night {night}?", abort=True)
    ids = pool.delete(night)
    emit_json({"deleted": ids}) if as_json else click.echo(f"{len(ids)} tokens deleted")


@tokens.command("attach")
@click.argument("token_id")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--name", help="Attachment name (default: the file's name).")
@click.option(
    "--content-type",
    help="MIME type (default: guessed from the name, else application/octet-stream).",
)
@json_option("{token, name, bytes, content_type, rev}.")
@pass_app
def tokens_attach(
    app: App,
    token_id: str,
    file: Path,
    name: str | None,
    content_type: str | None,
    as_json: bool,
) -> None:
    """Attach FILE to a token (a parset, a script); a task reads it (docs/tokens.md)."""
    name = name or file.name
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {str(file)!r}: {exc.strerror}") from None
    kind = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    rev = attachments.attach(app.pool().couch, token_id, name, data, kind)
    if as_json:
        emit_json(
            {"token": token_id, "name": name, "bytes": len(data), "content_type": kind, "rev": rev}
        )
    else:
        click.echo(f"{token_id}: attached {name} ({len(data)} bytes, {kind})")


@tokens.command("get-attachment")
@click.argument("token_id")
@click.argument("name")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write to this file (atomically) instead of standard output.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing --output file.")
@pass_app
def tokens_get_attachment(
    app: App, token_id: str, name: str, output: Path | None, force: bool
) -> None:
    """Write a token's attachment NAME to standard output, or to a file with -o."""
    if output is not None and output.exists() and not force:
        raise InvalidInput(f"{str(output)!r} exists; use --force to overwrite it")
    data = attachments.read(app.pool().couch, token_id, name)
    if output is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)  # bytes as stored: a binary attachment too
        sys.stdout.buffer.flush()
        return
    write_atomically(output, data)


def write_atomically(path: Path, data: bytes) -> None:
    """Write beside ``path`` and rename, so nobody sees half a file."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    except OSError as exc:
        raise InvalidInput(f"cannot write into {str(path.parent)!r}: {exc.strerror}") from None
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as an ordinary new file, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InvalidInput(f"cannot write {str(path)!r}: {exc.strerror}") from None
