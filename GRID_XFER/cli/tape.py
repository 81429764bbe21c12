"""`state-all`, `stage` and `srm convert`: tape locality, staging requests, LTA URL forms."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from GRID_XFER import srmlist
from GRID_XFER import staging as st
from GRID_XFER.app import App
from GRID_XFER.cli import exits
from GRID_XFER.cli.base import emit_json, json_option, pass_app
from GRID_XFER.errors import NotFound
from GRID_XFER.urls import redact

log = logging.getLogger("GRID_XFER.cli")


@click.command("state-all")
@click.argument("target", metavar="NIGHT|FILE|URL")
@click.option(
    "--threads", type=click.IntRange(1, 256), help="Parallel queries (default: staging.threads)."
)
@click.option("--summary", is_flag=True, help="Only the summary, not every file.")
@json_option()
@pass_app
def state_all(app: App, target: str, threads: int | None, summary: bool, as_json: bool) -> None:
    """Locality of every source file of NIGHT's tokens (or of a file of URLs, or of one URL).

    ONLINE (disk), NEARLINE (tape only), ONLINE_AND_NEARLINE, UNAVAILABLE, LOST;
    with the percentages on disk and on tape. Exit 8 if any file is LOST or UNAVAILABLE.
    """

    report = st.state_report(app.staging(threads=threads), target, app.pool)
    data = report.as_dict()
    if as_json:
        if summary:
            data.pop("files")
        emit_json({"target": redact(target), **data})
    else:
        if not summary:
            for f in report.files:
                extra = f"  ({f.message})" if f.message else ""
                click.echo(f"{f.state:<20} {f.as_dict()['url']}{extra}")
        counts = ", ".join(f"{n} {s}" for s, n in data["counts"].items() if n)
        click.echo(
            f"{redact(target)}: {data['total']} files: {counts or 'none'}; "
            f"{data['percent_online']:.1f}% on disk, {data['percent_on_tape']:.1f}% on tape "
            f"({data['seconds']:.2f} s)"
        )
    if report.problems:
        sys.exit(exits.TAPE_PROBLEM)


USAGE = (
    "give NIGHT|FILE|URL, --status ID, --abort ID, --reschedule ID, --progress or --poll [NIGHT]"
)


@click.command()
@click.argument("target", metavar="NIGHT|FILE|URL", required=False)
@click.option(
    "--method",
    type=click.Choice(["gfal2", "stager"]),
    help="Staging method (default: staging.method).",
)
@click.option("--status", "status_id", metavar="ID", help="Show the state of staging request ID.")
@click.option(
    "--abort",
    "abort_id",
    metavar="ID",
    help="Abort staging request ID; its staging tokens end in error 22.",
)
@click.option(
    "--reschedule",
    "reschedule_id",
    metavar="ID",
    help="Ask the stager to take up request ID again (after a hold).",
)
@click.option("--progress", is_flag=True, help="The stager's progress of all your requests.")
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
    abort_id: str | None,
    reschedule_id: str | None,
    progress: bool,
    poll: bool,
    as_json: bool,
) -> None:
    """Request staging of NIGHT's files on tape (or of a file of URLs, or one URL), or
    follow requests.

    For a night, the todo tokens with files on tape only move to `staging` under one
    request; workers (or `stage --poll`) return them to todo once the files are online.
    With the stager method no locality is asked: every URL goes to the stager.
    """
    actions = [x for x in (status_id, abort_id, reschedule_id, progress, poll) if x]
    if len(actions) > 1 or (target and actions and not poll) or not (target or actions):
        raise click.UsageError(USAGE)
    if (reschedule_id or progress) and method == "gfal2":
        raise click.UsageError("--reschedule and --progress are the stager's (not gfal2's)")
    staging = app.staging(method="stager" if (reschedule_id or progress) else method)
    if poll:
        _print_poll(
            st.poll_once(staging, app.archive(staging.storage), app.pool(), target), as_json
        )
    elif status_id:
        _print_status(st.request_status(staging, app.pool(), status_id, method), as_json)
    elif abort_id:
        out = st.abort_request(staging, app.pool(), abort_id, method)
        _emit(
            out, as_json, f"request {abort_id} aborted; {len(out['tokens'])} token(s) to error 22"
        )
    elif reschedule_id:
        out = st.reschedule_request(staging, reschedule_id)
        _emit(out, as_json, f"request {reschedule_id} rescheduled")
    elif progress:
        _print_progress(st.stager_progress(staging), as_json)
    else:
        assert target is not None
        _print_request(st.stage_target(staging, target, app.pool), as_json)


def _emit(out: dict[str, Any], as_json: bool, line: str) -> None:
    if as_json:
        emit_json(out)
    else:
        click.echo(line)


def _print_poll(result: dict[str, dict[str, int]], as_json: bool) -> None:
    if as_json:
        emit_json(result)
        return
    s, a = result["staging"], result["archive"]
    click.echo(
        f"staging: {s['staged']} back to todo, {s['failed']} failed (22), "
        f"{s['timed_out']} timed out (23), {s['pending']} waiting; archive: "
        f"{a['done']} done, {a['failed']} failed (50), {a['timed_out']} timed out "
        f"(51), {a['pending']} waiting"
    )


def _print_progress(out: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(out)
        return
    if not out:
        click.echo("no stager requests")
    for rid, info in sorted(out.items()):
        fields = info.items() if isinstance(info, dict) else [("", info)]
        click.echo(f"{rid}: " + ", ".join(f"{k}: {v}" if k else str(v) for k, v in fields))


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


@click.group()
def srm() -> None:
    """GRID_LRT's srm lists: LOFAR LTA URLs in another form (srm, gsiftp, https, root)."""


@srm.command("convert")
@click.argument("target", metavar="FILE|URL")
@click.option(
    "--to",
    "form",
    type=click.Choice(srmlist.FORMS),
    required=True,
    help="The form to write: srm, gsiftp, https (WebDAV), root, or download (LTA's service).",
)
@json_option()
def convert(target: str, form: str, as_json: bool) -> None:
    """Print the URLs of FILE (an srm list, read as GRID_LRT reads it) or URL in another form.

    One URL per line, in order, ready for `tokens create --surls`. A host that is no
    known LTA site, or a site without that form, exits 6 naming it.
    """
    if "://" in target:
        urls = [srmlist.one_url(target)]
    else:
        urls = srmlist.read_list(Path(target))
    converted = [srmlist.convert(u, form) for u in urls]
    if as_json:
        emit_json({"to": form, "urls": converted})
    else:
        for url in converted:
            click.echo(url)
