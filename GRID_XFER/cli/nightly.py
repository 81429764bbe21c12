"""`nightly`: the unattended service (docs/operations.md)."""

from __future__ import annotations

import json
import logging
import logging.handlers
from typing import Any

import click

from GRID_XFER.app import App
from GRID_XFER.cli.base import emit_json, pass_app, text_formatter
from GRID_XFER.errors import DatabaseUnavailable
from GRID_XFER.nightly_config import NightlyConfig
from GRID_XFER.redact import redact

log = logging.getLogger("GRID_XFER.cli")


class JsonLines(logging.Formatter):
    """One JSON object per record, for log shippers; redacted like the text form."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, sort_keys=True)


def log_to_file(cfg: NightlyConfig) -> None:
    """The service's rotating log file, beside stderr (the CLI alone sets up logging)."""
    if cfg.log_file is None:
        return
    path = cfg.log_file.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=cfg.log_max_bytes, backupCount=cfg.log_backups
    )
    handler.setFormatter(JsonLines() if cfg.log_json else text_formatter())
    logging.getLogger("GRID_XFER").addHandler(handler)


@click.command()
@click.option("--once", is_flag=True, help="One cycle, then exit (for cron).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print what it would create, launch and send; change nothing.",
)
@click.option("--json", "as_json", is_flag=True, help="Print each cycle's report as JSON.")
@pass_app
def nightly(app: App, once: bool, dry_run: bool, as_json: bool) -> None:
    """Run the season: find ready exposures, make tokens, keep workers, alert, report.

    Configured by the `nightly` section of the config file. Stops cleanly (its
    workers hand their tokens back, the leader lease is released, exit 0) on
    SIGTERM, Ctrl-C or the kill file.
    """
    from GRID_XFER.nightly.cycle import CycleReport
    from GRID_XFER.nightly.service import Service

    log_to_file(app.config.nightly)

    def show(report: CycleReport) -> None:
        if as_json or dry_run:
            emit_json(report.as_dict())
        else:
            for name in report.streams:
                line = report.summary(name)
                if line:
                    log.info("%s", line)

    service = Service(app, dry_run=dry_run, on_cycle=show)
    service.install_signal_handlers()
    reason = service.run(once=once)
    if dry_run:
        sends = service.alerter.would_send
        if as_json:
            emit_json({"would_send": [{"subject": s, "body": b} for s, b in sends]})
        for subject, _body in [] if as_json else sends:
            click.echo(f"would send: {subject}")
    log.info("nightly service ended: %s", reason)
    if once and service.db_down is not None:  # a cron run that could do nothing says so
        raise DatabaseUnavailable(f"the database does not answer: {service.db_down}")
