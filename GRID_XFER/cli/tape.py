"""`state-all` and `stage`: tape locality, staging requests and their polls."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from GRID_XFER import scan
from GRID_XFER import token as tk
from GRID_XFER.app import App
from GRID_XFER.cli import exits
from GRID_XFER.cli.base import emit_json, json_option, pass_app
from GRID_XFER.errors import NotFound
from GRID_XFER.staging import NEARLINE, token_urls
from GRID_XFER.urls import redact
from GRID_XFER.views import DDOC

log = logging.getLogger("GRID_XFER.cli")


# -- tape: state-all and stage --------------------------------------------------
def _urls_of(app: App, target: str) -> tuple[list[tuple[str, str]], list[dict[str, Any]] | None]:
    """(token id or '', URL) pairs of a night's source files, or of a file of URLs."""

    path = Path(target)
    if path.is_file():
        return [("", u) for u in scan.read_surl_list(path)], None

    pool = app.pool()
    pool.require_night(target)
    docs = []
    for d in pool.select(target):
        if (why := tk.problem(d)) is not None:
            log.warning("%s; left out", why)
        else:
            docs.append(d)
    return [(d["_id"], u) for d in docs for _, u in token_urls(d)], docs


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

    pairs, _ = _urls_of(app, target)
    report = app.staging(threads=threads).report(u for _, u in pairs)
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
        pool = app.pool()
        archive = app.archive(staging.storage)
        result = {
            "staging": staging.poll(pool, target).as_dict(),
            "archive": archive.poll(pool, target).as_dict(),
        }
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
        _stage_status(app, staging, status_id, method, as_json)
        return
    if not target:
        raise click.UsageError("give NIGHT|FILE, --status ID or --poll [NIGHT]")
    _stage_request(app, staging, target, as_json)


def _stage_request(app: App, staging: Any, target: str, as_json: bool) -> None:

    pairs, docs = _urls_of(app, target)
    report = staging.report(u for _, u in pairs)
    state = {f.url: f.state for f in report.files}
    if docs is not None:  # only tokens nobody holds, with files on tape only
        docs = [d for d in docs if d["state"] == "todo"]
        wanted = {d["_id"] for d in docs}
        pairs = [(i, u) for i, u in pairs if i in wanted]
    urls = sorted({u for _, u in pairs if state.get(u) == NEARLINE})
    out: dict[str, Any] = {
        "target": target,
        "files": len(urls),
        "request": None,
        "tokens": [],
        "refused": {},
    }
    if urls:
        request, refused = staging.request(urls)
        out["request"] = {k: v for k, v in request.items() if k != "parts"}
        out["refused"] = refused
        if docs is not None:
            pool = app.pool()
            now = pool.clock()
            for d in docs:
                mine = [u for i, u in pairs if i == d["_id"] and state.get(u) == NEARLINE]
                if mine:
                    tk.to_staging(d, staging.for_token(request, mine), now)
                    if pool.save(d):
                        out["tokens"].append(d["_id"])
    if as_json:
        emit_json(out)
        return
    if not urls:
        click.echo(f"{target}: nothing to stage (no file on tape only)")
        return
    req = out["request"]
    click.echo(
        f"staging request {req['id']} ({req['method']}): {len(urls)} file(s)"
        + (f", {len(out['tokens'])} token(s) now staging" if docs is not None else "")
    )
    for url, reason in list(out["refused"].items())[:10]:
        log.warning("refused: %s: %s", redact(url), reason)


def _stage_status(
    app: App, staging: Any, request_id: str, method: str | None, as_json: bool
) -> None:

    couch = app.couch()
    rows = couch.view(DDOC, "staging", include_docs=True)["rows"]
    docs = [
        r["doc"]
        for r in rows
        if r.get("doc") and str((r["doc"].get("stage_request") or {}).get("id")) == request_id
    ]
    out: dict[str, Any] = {"id": request_id, "tokens": [d["_id"] for d in docs]}
    if method:
        kind = method
    elif docs:
        kind = docs[0]["stage_request"]["method"]
    else:  # our gfal2 request ids say so; the stager's are its own numbers
        kind = "gfal2" if request_id.startswith("gfal2-") else staging.cfg.method
    if kind == "stager":
        client = staging.method("stager").client
        out["stager_status"] = client.status(request_id)
        out["staged_urls"] = len(client.staged_urls(request_id))
    if as_json:
        emit_json(out)
        return
    line = f"request {request_id}: {len(docs)} token(s) staging"
    if "stager_status" in out:
        line += f"; stager: {out['stager_status']}, {out['staged_urls']} file(s) online"
    click.echo(line)
    if not docs and "stager_status" not in out:
        raise NotFound(f"no staging token with request {request_id}")
