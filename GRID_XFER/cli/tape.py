"""`state-all` and `stage`: tape locality, staging requests and their polls."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from GRID_XFER import staging as st
from GRID_XFER.app import App
from GRID_XFER.cli import exits
from GRID_XFER.cli.base import emit_json, json_option, pass_app
from GRID_XFER.errors import NotFound
from GRID_XFER.urls import redact

log = logging.getLogger("GRID_XFER.cli")


@click.command("state-all")
@click.argument("target", metavar="NIGHT|FILE")
@click.option(
    "--threads", type=click.IntRange(1, 256), help="Parallel queries (default: staging.threads)."
)
@click.option("--summary", is_flag=True, help="Only the summary, not every file.")
@json_option()
@pass_app
def state_all(app: App, target: str, threads: int | None, summary: bool, as_json: bool) -> None:
    """Locality of every source file of NIGHT's tokens (or of a file of URLs).

    ONLINE (disk), NEARLINE (tape only), ONLINE_AND_NEARLINE, UNAVAILABLE, LOST;
    with the percentages on disk and on tape. Exit 8 if any file is LOST or UNAVAILABLE.
    """

    report = st.state_report(app.staging(threads=threads), target, app.pool)
    data = report.as_dict()
    if as_json:
        if summary:
            data.pop("files")
        emit_json({"target": target, **data})
    else:
        if not summary:
            for f in report.files:
                extra = f"  ({f.message})" if f.message else ""
                click.echo(f"{f.state:<20} {f.as_dict()['url']}{extra}")
        counts = ", ".join(f"{n} {s}" for s, n in data["counts"].items() if n)
        click.echo(
            f"{target}: {data['total']} files: {counts or 'none'}; "
            f"{data['percent_online']:.1f}% on disk, {data['percent_on_tape']:.1f}% on tape "
            f"({data['seconds']:.2f} s)"
        )
    if report.problems:
        sys.exit(exits.TAPE_PROBLEM)


@click.command()
@click.argument("target", metavar="NIGHT|FILE", required=False)
@click.option(
    "--method",
    type=click.Choice(["gfal2", "stager"]),
    help="Staging method (default: staging.method).",
)
@click.option("--status", "status_id", metavar="ID", help="Show the state of staging request ID.")
@click.option(
    "--poll",
    is_flag=True,
    help="Poll open requests once: staged tokens back to todo, "
    "failures to error 22/23, archived tokens to done (50/51).",
)
@json_option()
@pass_app
def stage(
    app: App,
    target: str | None,
    method: str | None,
    status_id: str | None,
    poll: bool,
    as_json: bool,
) -> None:
    """Request staging of NIGHT's files on tape (or of a file of URLs), or follow requests.

    For a night, the todo tokens with files on tape only move to `staging` under one
    request; workers (or `stage --poll`) return them to todo once the files are online.
    """
    if sum(bool(x) for x in (status_id, poll)) > 1 or (status_id and target):
        raise click.UsageError("give NIGHT|FILE, --status ID or --poll [NIGHT]")
    staging = app.staging(method=method)
    if poll:
        result = st.poll_once(staging, app.archive(staging.storage), app.pool(), target)
        if as_json:
            emit_json(result)
        else:
            s, a = result["staging"], result["archive"]
            click.echo(
                f"staging: {s['staged']} back to todo, {s['failed']} failed (22), "
                f"{s['timed_out']} timed out (23), {s['pending']} waiting; archive: "
                f"{a['done']} done, {a['failed']} failed (50), {a['timed_out']} timed out "
                f"(51), {a['pending']} waiting"
            )
        return
    if status_id:
        _print_status(st.request_status(staging, app.pool(), status_id, method), as_json)
        return
    if not target:
        raise click.UsageError("give NIGHT|FILE, --status ID or --poll [NIGHT]")
    _print_request(st.stage_target(staging, target, app.pool), as_json)


def _print_request(result: st.StageResult, as_json: bool) -> None:
    if as_json:
        emit_json(result.as_dict())
        return
    if not result.urls:
        click.echo(f"{result.target}: nothing to stage (no file on tape only)")
        return
    req = result.request or {}
    click.echo(
        f"staging request {req['id']} ({req['method']}): {len(result.urls)} file(s)"
        + (f", {len(result.tokens)} token(s) now staging" if result.night else "")
    )
    for url, reason in list(result.refused.items())[:10]:
        log.warning("refused: %s: %s", redact(url), reason)


def _print_status(out: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(out)
        return
    line = f"request {out['id']}: {len(out['tokens'])} token(s) staging"
    if "stager_status" in out:
        line += f"; stager: {out['stager_status']}, {out['staged_urls']} file(s) online"
    click.echo(line)
    if not out["tokens"] and "stager_status" not in out:
        raise NotFound(f"no staging token with request {out['id']}")
