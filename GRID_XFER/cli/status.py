"""`status`: progress per night from the views, as text, JSON, a live display or a page."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from GRID_XFER import page
from GRID_XFER import status as st
from GRID_XFER.app import App
from GRID_XFER.cli.base import emit_json, pass_app
from GRID_XFER.couch import Couch
from GRID_XFER.errors import GridXferError, InvalidInput
from GRID_XFER.status.prometheus import prometheus_text
from GRID_XFER.status.render import render
from GRID_XFER.status.reports import night_report, report_text

if TYPE_CHECKING:
    from rich.console import Console

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
    "--prometheus",
    is_flag=True,
    help="The report as Prometheus metrics (text format 0.0.4; names in docs/status.md).",
)
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
    prometheus: bool,
    serve: bool,
    host: str,
    port: int,
    html_file: Path | None,
) -> None:
    """Progress per night from the views: counts, bytes, rate and ETA.

    With NIGHT: that night's error codes (name, count, a sample message), the
    workers holding leases and its morning report. The same numbers as a page:
    --serve (which also answers GET /metrics), --html FILE, or
    /<db>/_design/gridxfer/status.html where the server lets its script run.
    """
    if sum((watch, as_json, prometheus, serve, html_file is not None)) > 1:
        raise click.UsageError(
            "--watch, --json, --prometheus, --serve and --html do not go together"
        )
    couch = app.couch()
    if serve or html_file:
        _status_page(couch, serve, host, port, html_file)
        return
    report = st.gather(couch, night)
    if prometheus:
        click.echo(prometheus_text(report), nl=False)
        return
    morning = None if night is None else night_report(couch, night)
    if as_json:
        data = report.as_dict()
        if night is not None:
            data["nights"][0]["report"] = morning
        emit_json(data)
        return
    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=160)
    text = None if morning is None else report_text(morning)
    if not watch:
        console.print(render(report, morning=text))
        return
    _watch(console, couch, night, interval, report, text)


def _watch(
    console: Console,
    couch: Couch,
    night: str | None,
    interval: float,
    report: st.StatusReport,
    text: str | None,
) -> None:
    """Redraw until Ctrl-C, keeping the last numbers on screen through an outage."""
    import time

    from rich.live import Live

    rows = max(3, console.size.height - 14)
    try:
        with Live(
            render(report, bars=True, limit=rows, morning=text),
            console=console,
            auto_refresh=False,
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
                    if night is not None:
                        morning = night_report(couch, night)
                        text = None if morning is None else report_text(morning)
                except GridXferError as exc:  # keep showing the last report
                    problem = f"{exc} (retrying)"
                took = time.monotonic() - started
                live.update(
                    render(report, bars=True, limit=rows, problem=problem, morning=text),
                    refresh=True,
                )
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
