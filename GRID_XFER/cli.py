"""``gridxfer``: a thin click layer that builds library objects and calls them.

All output meant for programs goes to stdout (``--json``); messages for people go
to stderr through logging, which only this module configures. Any
:class:`GridXferError` becomes one line on stderr and its documented exit status
(docs/cli.md, exit status); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from functools import cached_property
from pathlib import Path
from typing import Any

import click
import yaml

from GRID_XFER import __version__
from GRID_XFER.config import Config, load_config
from GRID_XFER.couch import Couch
from GRID_XFER.errors import ConfigError, DatabaseUnavailable, GridXferError, InvalidInput, NotFound
from GRID_XFER.pool import Pool, PoolSettings
from GRID_XFER.token import STATES, check_token_id, parse_spec
from GRID_XFER.urls import RedactingFormatter, check_plain_url, redact

log = logging.getLogger("GRID_XFER.cli")


class App:
    """Built once per invocation from the global options."""

    def __init__(self, config_path: str | None, debug: bool) -> None:
        self.config_path = config_path
        self.debug = debug

    @cached_property
    def config(self) -> Config:
        return load_config(self.config_path)

    def couch(self, *, outage: float | None = None) -> Couch:
        return Couch(self.config.couchdb, outage_seconds=outage)

    def pool(self, *, outage: float | None = None, job_id: str | None = None) -> Pool:
        w = self.config.worker
        settings = PoolSettings(
            lease=w.lease_seconds,
            max_attempts=w.max_attempts,
            backoff_base=w.backoff_base,
            backoff_max=w.backoff_max,
            window=w.claim_window,
        )
        couch = self.couch(outage=outage)
        return Pool(couch, settings, job_id=job_id)


pass_app = click.make_pass_decorator(App)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    # Redacted: a message quoting a URL (ours, gfal2's, a library's) never shows a credential.
    handler.setFormatter(
        RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger("GRID_XFER")
    root.handlers[:] = [handler]
    root.setLevel(level)
    if not debug:
        logging.getLogger("urllib3").setLevel(logging.ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    envvar="GRIDXFER_CONFIG",
    help="YAML configuration (default: ./gridxfer.yaml, then the user config dir).",
)
@click.option("--debug", is_flag=True, help="Debug logging and tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.version_option(__version__, prog_name="gridxfer")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool, quiet: bool) -> None:
    """Nightly raw-data transfer over a CouchDB token pool."""
    _setup_logging(debug, quiet)
    ctx.obj = App(config_path, debug)


# -- server -------------------------------------------------------------------
@cli.group()
def server() -> None:
    """The embedded CouchDB-API server (pouchdb-server) for a single machine."""


def _embedded(app: App):  # noqa: ANN202
    from GRID_XFER.server import EmbeddedServer

    return EmbeddedServer(app.config.server)


@server.command("start")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def server_start(app: App, as_json: bool) -> None:
    """Start the server and wait until it answers."""
    from GRID_XFER.server import state_dict

    state, started = _embedded(app).start()
    if as_json:
        emit_json({**state_dict(state), "started_now": started})
    else:
        verb = "started" if started else "already running"
        click.echo(f"pouchdb-server {verb} at {state.url} (pid {state.pid}, log {state.log})")


@server.command("stop")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def server_stop(app: App, as_json: bool) -> None:
    """Stop the server this machine started (by its recorded PID)."""
    stopped = _embedded(app).stop()
    if as_json:
        emit_json({"stopped": stopped})
    else:
        click.echo("stopped" if stopped else "not running")


@server.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def server_status(app: App, as_json: bool) -> None:
    """Is the embedded server running? Exit 0 if so, 7 if not."""
    from GRID_XFER.server import state_dict

    state = _embedded(app).status()
    if as_json:
        emit_json(state_dict(state))
    else:
        click.echo(
            f"running at {state.url} (pid {state.pid})"
            if state.running
            else f"not running ({state.url})"
        )
    if not state.running:
        sys.exit(7)


# -- init ---------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_app
def init(app: App, as_json: bool) -> None:
    """Create the database and install or update the design documents (idempotent)."""
    from GRID_XFER import views

    couch = app.couch()
    created = couch.create_db()
    outcome = views.install(couch)
    c = app.config.couchdb
    secured = bool(c.member_names or c.member_roles) and views.secure(
        couch, c.member_names, c.member_roles
    )
    if as_json:
        emit_json(
            {
                "database": couch.db,
                "created": created,
                "design_docs": outcome,
                "members_updated": secured,
            }
        )
    else:
        click.echo(f"database {couch.db} {'created' if created else 'exists'} at {couch.url}")
        for name, what in outcome.items():
            click.echo(f"  _design/{name}: {what}")
        if secured:
            click.echo(f"  _security: members {c.member_names or []} roles {c.member_roles or []}")


# -- tokens -------------------------------------------------------------------
@cli.group()
def tokens() -> None:
    """Create, inspect and repair a night's tokens."""


class _NamesLoader(yaml.SafeLoader):
    """YAML without implicit numbers: ``- 00012345`` stays that exposure, not octal 5349."""


_NamesLoader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _read_text(path: Path) -> str:
    """A user's input file as text: one line saying why not, rather than a traceback."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None


def _load_specs(path: Path) -> list[Any]:
    text = _read_text(path)
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.load(text, _NamesLoader)
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidInput(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}:"
            f" {str(exc).splitlines()[0]}"
        ) from None
    if isinstance(data, dict) and "exposures" in data:
        data = data["exposures"]
    if not isinstance(data, list):
        raise InvalidInput(f"{path}: expected a list of exposures (or a mapping with 'exposures')")
    return [parse_spec(raw, i) for i, raw in enumerate(data)]


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
@click.option("--json", "as_json", is_flag=True)
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
    from GRID_XFER import scan

    if template:
        _read_text(template)  # a file that is no UTF-8 text: exit 6 naming it
    t = scan.load_template(template) if template else scan.Template()
    tc = app.config.transfer
    source = source or t.source or app.config.source
    destination = destination or t.destination or app.config.destination
    surls = surls or t.surls
    for what, url in (("source", source), ("destination", destination)):
        if url:
            check_plain_url(url, what)
    problems: dict[str, str] = {}
    not_contained: dict[str, str] = {}
    pool = app.pool()
    pool.couch.require_db()
    if from_file:
        specs = _load_specs(from_file)
        report = pool.create(night, specs, source=source, destination=destination)
    else:
        storage = _storage(app)
        night_dest = scan.join(destination, night) if destination else None
        if not night_dest:
            raise ConfigError(
                "no destination: give --dest, a template `destination` or config `destination`"
            )
        if surls or t.layout == "surl-list":
            if not surls:
                raise InvalidInput("a surl-list template needs --surls FILE (or `surls:`)")
            specs = scan.group_surls(
                storage,
                scan.read_surl_list(surls),
                group=group or t.group or tc.group,
                destination=night_dest,
                threads=tc.scan_threads,
            )
        else:
            if not source:
                raise ConfigError(
                    "no source: give --source, a template `source` or config "
                    "`source` (or --from FILE / --surls FILE)"
                )
            found = scan.scan_night(
                storage,
                source,
                night,
                destination=destination,
                algo=manifest_algo or t.manifest or tc.manifest,
                threads=tc.scan_threads,
            )
            specs, problems = found.specs, found.manifest_problems
            not_contained = found.source_problems
            for name in found.ignored:
                log.warning("ignored %s: not an exposure directory", name)
        if t.max_attempts or t.payload:
            specs = [
                s.model_copy(
                    update={
                        "max_attempts": s.max_attempts or t.max_attempts,
                        "payload": {**t.payload, **s.payload},
                    }
                )
                for s in specs
            ]
        report = pool.create(night, specs)
    if report.outdated:
        log.warning(
            "%d done token(s) have new or changed files at the source (e.g. %s); "
            "they are left alone: `gridxfer tokens reset %s --state done` moves them again",
            len(report.outdated),
            report.outdated[0],
            night,
        )
    for exposure, message in sorted(problems.items()):
        log.warning(
            "%s: %s (the token will fail with 31 unless it is fixed first)", exposure, message
        )
    for exposure, message in sorted(not_contained.items()):
        log.warning(
            "%s: %s (the token will fail with 34 unless it is fixed first)", exposure, message
        )
    if as_json:
        emit_json(
            {
                "night": night,
                **report.as_dict(),
                "manifest_problems": problems,
                "source_problems": not_contained,
            }
        )
    else:
        r = report.as_dict()
        click.echo(
            f"night {night}: {r['created']} created, {r['updated']} updated, "
            f"{r['unchanged']} unchanged, {r['skipped']} left alone (held or finished)"
        )


def _storage(app: App):  # noqa: ANN202
    from GRID_XFER.storage import Storage

    tc = app.config.transfer
    return Storage(base_timeout=tc.base_timeout, min_rate=tc.min_rate)


@tokens.command("list")
@click.argument("night")
@click.option("--state", "states", multiple=True, type=click.Choice(STATES))
@click.option("--code", "codes", multiple=True, type=int, help="Only errors with this code.")
@click.option("--json", "as_json", is_flag=True, help="An array of the token documents.")
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
        click.echo(_token_line(d))


def _token_line(doc: dict[str, Any]) -> str:
    """One token as `tokens list` shows it: a malformed one too (docs/tokens.md)."""
    from GRID_XFER import token as tk

    state, problem = tk.shown_state(doc), tk.problem(doc)
    err = doc.get("error") if isinstance(doc.get("error"), dict) else {}
    message = err.get("message") if doc.get("state") == "error" else None
    extra = ""
    if state == "error":
        extra = f"  {tk.error_code(doc)} {message if isinstance(message, str) else problem or ''}"
    if problem is not None and problem not in extra:
        extra += f"  ({problem})"
    return f"{doc['_id']:<40} {state:<9} attempts={doc.get('attempts', 0)!s}{extra}"


@tokens.command("show")
@click.argument("token_id")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def tokens_show(app: App, token_id: str, as_json: bool) -> None:
    """Show one token (as stored, even a malformed one)."""
    check_token_id(token_id)  # `..`, `_all_docs`, `a/b` would ask the server for something else
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
    type=click.Choice(STATES),
    help="States to reset (default: error).",
)
@click.option("--code", "codes", multiple=True, type=int, help="Only tokens with this error code.")
@click.option("--force", is_flag=True, help="Also tokens that live workers hold.")
@click.option("--json", "as_json", is_flag=True)
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
@click.option("--json", "as_json", is_flag=True)
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
@click.option("--json", "as_json", is_flag=True)
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


# -- worker -------------------------------------------------------------------
def build_task(app: App, kind: str | None, command: str | None):  # noqa: ANN201
    from GRID_XFER.task import CommandTask, NoopTask

    w = app.config.worker
    kind = kind or w.task or ("command" if command or w.command else "transfer")
    if kind == "noop":
        return NoopTask()
    if kind == "command":
        cmd = command or w.command
        if not cmd:
            raise ConfigError("worker.command is not set (needed by the command task)")
        return CommandTask(cmd, timeout=w.task_timeout)
    if kind == "transfer":
        from GRID_XFER.transfer import TransferTask

        tc = app.config.transfer
        return TransferTask(_storage(app), verify=tc.verify, mismatch_retries=tc.mismatch_retries)
    raise ConfigError(f"worker.task: {kind!r} is not available in this version")


@cli.command()
@click.option("--night", help="Only this night's tokens (default: any night).")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Stop after K tokens.")
@click.option("--max-time", type=click.FloatRange(min=0), help="Stop claiming after S seconds.")
@click.option("--idle-exit", is_flag=True, help="Exit when nothing is claimable.")
@click.option(
    "--task",
    "task_kind",
    type=click.Choice(["command", "noop", "transfer"]),
    help="Task to run per token (default: worker.task).",
)
@click.option("--command", help="Command for the command task (default: worker.command).")
@click.option("--json", "as_json", is_flag=True, help="Print a summary as JSON at the end.")
@pass_app
def worker(
    app: App,
    night: str | None,
    max_tokens: int | None,
    max_time: float | None,
    idle_exit: bool,
    task_kind: str | None,
    command: str | None,
    as_json: bool,
) -> None:
    """Claim tokens and process them until done, stopped or out of time."""
    from GRID_XFER.worker import Worker, batch_job_id

    w = app.config.worker
    pool = app.pool(outage=w.outage_seconds, job_id=batch_job_id())
    task = build_task(app, task_kind, command)
    runner = Worker(
        pool,
        task,
        night=night,
        max_tokens=max_tokens,
        max_time=max_time,
        idle_exit=idle_exit,
        idle_sleep=w.idle_sleep,
        heartbeat=w.heartbeat,
        **_tape_services(app, task),
    )
    runner.install_signal_handlers()
    try:
        pool.couch.require_db()
        if night:
            pool.require_night(night)
        log.info("worker %s starting (night %s)", pool.worker["id"], night or "any")
        report = runner.run()
    except DatabaseUnavailable:
        if runner.signal is None:
            raise
        report = runner.report  # a signal ended the wait for the database
        report.signal = runner.signal
    if as_json:
        emit_json({"worker": pool.worker, **report.as_dict()})
    else:
        log.info("worker %s finished: %s", pool.worker["id"], report.as_dict())
    if report.signal is not None:
        log.warning("stopped by signal %d", report.signal)
        sys.exit(128 + report.signal)


# -- status -------------------------------------------------------------------
@cli.command()
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
    from GRID_XFER import status as st

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
        console.print(st.render(report))
        return
    rows = max(3, console.size.height - 14)
    try:
        with Live(
            st.render(report, bars=True, limit=rows), console=console, auto_refresh=False
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
                live.update(st.render(report, bars=True, limit=rows, problem=problem), refresh=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends a watch; Live has restored the terminal


def _status_page(couch: Couch, serve: bool, host: str, port: int, html_file: Path | None) -> None:
    from GRID_XFER import page

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


# -- sandbox and launch ---------------------------------------------------------
@cli.group()
def sandbox() -> None:
    """The worker sandbox shipped to batch nodes (docs/launch.md)."""


def _known_secrets(app: App) -> list[str]:
    """The configured database password, so that `sandbox build` can refuse to pack it."""
    try:
        secret = app.config.couchdb.secret()
    except GridXferError:
        return []
    return [secret] if secret else []


@sandbox.command("build")
@click.option(
    "--dir",
    "src",
    type=click.Path(path_type=Path, file_okay=False),
    help="The sandbox directory (default: sandbox/ of this checkout).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("gridxfer-sandbox.tar.gz"),
    show_default=True,
    help="The archive; its SHA-256 goes to OUTPUT.sha256.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def sandbox_build(app: App, src: Path | None, output: Path, as_json: bool) -> None:
    """Pack the sandbox (launch script, worker defaults) into a reproducible tar.gz.

    Refuses anything that looks like a credential (exit 6).
    """
    from GRID_XFER import sandbox as sb

    built = sb.build(src or sb.default_source_dir(), output, secrets=_known_secrets(app))
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
@click.option("--json", "as_json", is_flag=True)
@pass_app
def sandbox_upload(
    app: App, url: str, archive: Path, night: str | None, overwrite: bool, as_json: bool
) -> None:
    """Copy the sandbox to URL (gfal2), verify it, and record {url, sha256} for the workers."""
    from GRID_XFER import sandbox as sb

    couch = app.couch()
    couch.require_db()
    doc = sb.upload(_storage(app), couch, archive, url, night=night, overwrite=overwrite)
    if as_json:
        emit_json(doc)
    else:
        click.echo(f"sandbox {doc['url']} (sha256 {doc['sha256']}) recorded as {doc['_id']}")


@sandbox.command("show")
@click.option("--night", help="The sandbox a worker of this night uses (default: the general one).")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def sandbox_show(app: App, night: str | None, as_json: bool) -> None:
    """Show the recorded sandbox (exit 5 if none)."""
    from GRID_XFER import sandbox as sb

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


@cli.command()
@click.option("--backend", type=click.Choice(["local", "slurm", "condor", "jdl"]), required=True)
@click.option("--workers", type=click.IntRange(min=1), required=True, help="How many workers.")
@click.option("--night", help="Only this night's tokens (default: any night).")
@click.option("--dry-run", is_flag=True, help="Write the job files and print them; submit nothing.")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Job directory (default: ./gridxfer-jobs/<backend>-<night>-<time>-<pid>); "
    "batch nodes must see it for slurm.",
)
@click.option(
    "--time-limit",
    default="4h",
    show_default=True,
    help="Wall-time limit per worker (3600, 90m, 4h, 04:00:00).",
)
@click.option(
    "--grace",
    default="120",
    show_default=True,
    help="Seconds between SIGTERM and the kill: the worker hands its token back.",
)
@click.option("--partition", help="Slurm partition (jdl: the Site).")
@click.option("--account", help="Slurm account.")
@click.option(
    "--memory",
    type=click.IntRange(min=0),
    default=1024,
    show_default=True,
    help="Memory per worker, MB (0: the site's default).",
)
@click.option(
    "--task",
    "task_kind",
    type=click.Choice(["command", "noop", "transfer"]),
    help="Task for the workers (default: worker.task).",
)
@click.option("--command", help="Command for the command task.")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Each worker stops after K tokens.")
@click.option(
    "--max-time", type=click.FloatRange(min=0), help="Each worker stops claiming after S s."
)
@click.option(
    "--sandbox",
    "sandbox_mode",
    type=click.Choice(["auto", "fetch", "none"]),
    default="auto",
    show_default=True,
    help="Fetch the recorded sandbox on the node (auto: if one is recorded).",
)
@click.option(
    "--python",
    "node_python",
    help="Python with GRID_XFER on the nodes "
    "(default: this one for local/slurm, python3 for condor/jdl).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def launch(
    app: App,
    backend: str,
    workers: int,
    night: str | None,
    dry_run: bool,
    workdir: Path | None,
    time_limit: str,
    grace: str,
    partition: str | None,
    account: str | None,
    memory: int,
    task_kind: str | None,
    command: str | None,
    max_tokens: int | None,
    max_time: float | None,
    sandbox_mode: str,
    node_python: str | None,
    as_json: bool,
) -> None:
    """Start N workers: locally, as a Slurm job array, an HTCondor cluster or a grid JDL.

    The database password reaches the jobs as a file (GRIDXFER_COUCHDB_PASSWORD_FILE),
    never in a job file or on a command line. See docs/launch.md.
    """
    from GRID_XFER import launch as ln
    from GRID_XFER import sandbox as sb

    spec = ln.LaunchSpec(
        backend=backend,
        workers=workers,
        night=night,
        workdir=workdir,
        time_limit=ln.parse_duration(time_limit),
        grace=ln.parse_duration(grace),
        partition=partition,
        account=account,
        memory_mb=memory,
        task=task_kind,
        command=command,
        max_tokens=max_tokens,
        max_time=max_time,
        python=node_python,
    )
    if dry_run:  # look the sandbox up once, quickly: a dry run works without the database
        from GRID_XFER.couch import Couch

        couch = Couch(app.config.couchdb.model_copy(update={"retries": 0}))
    else:
        couch = app.couch()
        couch.require_db()
        if night:
            app.pool().require_night(night)
    spec.sandbox = ln.resolve_sandbox_mode(
        sandbox_mode, lambda: sb.lookup(couch, night), dry_run=dry_run
    )
    job = ln.prepare(app.config, spec)
    job_file = ln.write_job_file(spec, job)
    result: dict[str, Any] = {
        "backend": backend,
        "workers": workers,
        "night": night,
        "sandbox": spec.sandbox,
        "dry_run": dry_run,
        **job.as_dict(),
        "job_id": None,
        "submitted": False,
    }
    if backend == "local":
        commands = ln.local_commands(spec, job)
        if dry_run:
            result["commands"] = commands
            if as_json:
                emit_json(result)
                return
            for k, v in job.env.items():
                click.echo(f"{k}={v}")
            for argv in commands:
                click.echo(" ".join(argv))
            return
        report = ln.Supervisor(
            commands, env=ln.local_environment(job), cwd=job.path, logs=job.logs
        ).run()
        result.update(report.as_dict(), submitted=True)
        if as_json:
            emit_json(result)
        else:
            for w in report.workers:
                click.echo(
                    f"worker {w.index} (job id {w.job_id}, pid {w.pid}): exit {w.status}, "
                    f"log {w.log}"
                )
        if report.status:
            sys.exit(report.status)
        return
    assert job_file is not None
    if dry_run:
        if as_json:
            emit_json({**result, "text": job_file.read_text()})
        else:
            click.echo(job_file.read_text().rstrip())
            log.info("dry run: wrote %s; nothing submitted", job_file)
        return
    job_id = ln.submit(spec, job)
    result.update(job_id=job_id, submitted=job_id is not None)
    if as_json:
        emit_json(result)
    elif job_id is None:
        tool = "condor_submit" if backend == "condor" else "dirac-wms-job-submit"
        click.echo(
            f"wrote {job_file}; {tool} is not installed here: submit it from a "
            f"submit node (cd {job.path} && {tool} {job_file.name})"
        )
    else:
        click.echo(
            f"{backend} job {job_id} submitted: {workers} workers; job file {job_file}; "
            f"logs {job.logs}"
        )


# -- tape: state-all and stage --------------------------------------------------
STATE_PROBLEM_EXIT = 8  # state-all: a file LOST or UNAVAILABLE


def _tape_services(app: App, task: Any) -> dict[str, Any]:
    """Staging check and archive confirmation for the transfer task (config `staging`)."""
    from GRID_XFER.transfer import TransferTask

    if not isinstance(task, TransferTask):
        return {}
    from GRID_XFER.archive import Archive
    from GRID_XFER.staging import Staging

    sc = app.config.staging
    return {
        "staging": Staging(task.storage, sc),
        "archive": Archive(task.storage, sc),
        "poll_every": sc.poll_interval,
    }


def _urls_of(app: App, target: str) -> tuple[list[tuple[str, str]], list[dict[str, Any]] | None]:
    """(token id or '', URL) pairs of a night's source files, or of a file of URLs."""
    from GRID_XFER import scan
    from GRID_XFER.staging import token_urls

    path = Path(target)
    if path.is_file():
        return [("", u) for u in scan.read_surl_list(path)], None
    from GRID_XFER.token import problem

    pool = app.pool()
    pool.require_night(target)
    docs = []
    for d in pool.select(target):
        if (why := problem(d)) is not None:
            log.warning("%s; left out", why)
        else:
            docs.append(d)
    return [(d["_id"], u) for d in docs for _, u in token_urls(d)], docs


@cli.command("state-all")
@click.argument("target", metavar="NIGHT|FILE")
@click.option(
    "--threads", type=click.IntRange(1, 256), help="Parallel queries (default: staging.threads)."
)
@click.option("--summary", is_flag=True, help="Only the summary, not every file.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def state_all(app: App, target: str, threads: int | None, summary: bool, as_json: bool) -> None:
    """Locality of every source file of NIGHT's tokens (or of a file of URLs).

    ONLINE (disk), NEARLINE (tape only), ONLINE_AND_NEARLINE, UNAVAILABLE, LOST;
    with the percentages on disk and on tape. Exit 8 if any file is LOST or UNAVAILABLE.
    """
    from GRID_XFER.staging import Staging

    sc = app.config.staging
    if threads:
        sc = sc.model_copy(update={"threads": threads})
    pairs, _ = _urls_of(app, target)
    report = Staging(_storage(app), sc).report(u for _, u in pairs)
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
        sys.exit(STATE_PROBLEM_EXIT)


def _staging_for(app: App, method: str | None):  # noqa: ANN202
    from GRID_XFER.staging import Staging

    sc = app.config.staging
    if method:
        sc = sc.model_copy(update={"method": method})
    return Staging(_storage(app), sc)


@cli.command()
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
@click.option("--json", "as_json", is_flag=True)
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
    staging = _staging_for(app, method)
    if poll:
        from GRID_XFER.archive import Archive

        pool = app.pool()
        archive = Archive(staging.storage, app.config.staging)
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
    from GRID_XFER import token as tk
    from GRID_XFER.staging import NEARLINE

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
    from GRID_XFER.views import DDOC

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


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line and a documented exit status for every known error."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="gridxfer", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("gridxfer: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except GridXferError as exc:
        if debug:
            log.exception("failed")
        click.echo(f"gridxfer: error: {redact(str(exc))}", err=True)
        sys.exit(exc.exit_status)
    except KeyboardInterrupt:
        click.echo("gridxfer: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: say so in one line, details with --debug
        if debug:
            raise
        click.echo(
            f"gridxfer: unexpected error: {type(exc).__name__}: {redact(str(exc))} "
            "(run with --debug for details)",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
