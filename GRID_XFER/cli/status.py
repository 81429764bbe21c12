"""`status`: progress per night from the views, as text, JSON, a live display or a page."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from GRID_XFER import page
from GRID_XFER import status as st
from GRID_XFER.app import App
from GRID_XFER.cli.base import emit_json, pass_app
from GRID_XFER.couch import Couch
from GRID_XFER.errors import GridXferError, InvalidInput
from GRID_XFER.status.render import render

log = logging.getLogger("GRID_XFER.cli")


@click.command()
@click.argument("night", required=False)
@click.option("--watch", is_flag=True, help="Keep a live display with progress bars until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.option("--json", "as_json", is_flag=True, help="The report as JSON (docs/status.md).")
@click.option(
    "--serve",
    is_flag=True,
    help="Serve the status page from a local web server "
    "that reads the views with your credentials (works under CouchDB 3's CSP).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address for --serve.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8484,
    show_default=True,
    help="Port for --serve (0: any free port).",
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write a static snapshot of the page (no script) to this file.",
)
@pass_app
def status(
    app: App,
    night: str | None,
    watch: bool,
    interval: float,
    as_json: bool,
    serve: bool,
    host: str,
    port: int,
    html_file: Path | None,
) -> None:
    """Progress per night from the views: counts, bytes, rate and ETA.

    With NIGHT: that night's error codes (name, count, a sample message) and the
    workers holding leases. The same numbers as a page: --serve, --html FILE, or
    /<db>/_design/gridxfer/status.html where the server lets its script run.
    """
    if sum((watch, as_json, serve, html_file is not None)) > 1:
        raise click.UsageError("--watch, --json, --serve and --html do not go together")
    couch = app.couch()
    if serve or html_file:
        _status_page(couch, serve, host, port, html_file)
        return
    report = st.gather(couch, night)
    if as_json:
        emit_json(report.as_dict())
        return
    import time

    from rich.console import Console
    from rich.live import Live

    console = Console() if sys.stdout.isatty() else Console(width=160)
    if not watch:
        console.print(render(report))
        return
    rows = max(3, console.size.height - 14)
    try:
        with Live(
            render(report, bars=True, limit=rows), console=console, auto_refresh=False
        ) as live:
            took = 0.0
            while True:
                # A slow answer (pouchdb-server reads a row per token) spaces the
                # refreshes out, so a watch takes a small share of the server.
                time.sleep(max(interval, st.SHARE * took))
                problem = None
                started = time.monotonic()
                try:
                    report = st.gather(couch, night)
                except GridXferError as exc:  # keep showing the last report
                    problem = f"{exc} (retrying)"
                took = time.monotonic() - started
                live.update(render(report, bars=True, limit=rows, problem=problem), refresh=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends a watch; Live has restored the terminal


def _status_page(couch: Couch, serve: bool, host: str, port: int, html_file: Path | None) -> None:
    couch.require_db()
    if html_file is not None:
        try:
            html_file.write_text(page.snapshot(couch))
        except OSError as exc:
            raise InvalidInput(f"cannot write {html_file}: {exc.strerror}") from None
        click.echo(f"wrote {html_file}")
        return
    try:
        server = page.PageServer(couch, host, port)
    except OSError as exc:
        raise InvalidInput(f"cannot serve on {host}:{port}: {exc.strerror}") from None
    click.echo(server.start(), nl=True)
    sys.stdout.flush()
    log.info("serving the status page at %s; Ctrl-C to stop", server.url)
    import signal
    import threading

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    server.stop()
