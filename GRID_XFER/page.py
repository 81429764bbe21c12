"""The status page for users who cannot change CouchDB's configuration.

Apache CouchDB 3 sends attachments with ``Content-Security-Policy: sandbox``, so
the page stored in ``_design/gridxfer`` runs no script when CouchDB serves it,
unless an administrator relaxes that setting. Two ways around it that need no
server rights: :class:`PageServer` (``gridxfer status --serve``) serves the same
page from a small local HTTP server that answers the page's read-only view
queries with the user's own credentials, which never reach the browser; and
:func:`snapshot` (``gridxfer status --html FILE``) writes a static page with
the numbers in it and no script at all.
"""

from __future__ import annotations

import html
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from GRID_XFER import status as st
from GRID_XFER.couch import Couch
from GRID_XFER.errors import GridXferError
from GRID_XFER.status.prometheus import CONTENT_TYPE, prometheus_down, prometheus_text
from GRID_XFER.status.render import eta_text, human_bytes, rate_text
from GRID_XFER.status.reports import REPORT_PREFIX, report_text, reports
from GRID_XFER.token import STATES
from GRID_XFER.views import DDOC, design_docs, status_files


class PageServer:
    """Serves ``/<db>/_design/gridxfer/status.html`` and the few reads it makes, and
    the status as Prometheus metrics at ``/metrics``."""

    def __init__(self, couch: Couch, host: str = "127.0.0.1", port: int = 0) -> None:
        self.couch = couch
        self.files = status_files()
        self.views = set(design_docs()[DDOC]["views"])
        self.base = f"/{quote(couch.db, safe='')}/_design/{DDOC}/"
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host
        return f"http://{name}:{port}{self.base}status.html"

    def start(self) -> str:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="status-page", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, target: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for one GET: page files, views, database info,
        a night's morning report, metrics."""
        parts = urlsplit(target)
        path = parts.path
        db_root = self.base.split("/_design/")[0]
        if path in ("/", ""):
            return 302, self.url, b""
        if path == "/metrics":
            try:
                text = prometheus_text(st.gather(self.couch))
            except GridXferError:  # scraped all the same: the database is what is down
                text = prometheus_down()
            return 200, CONTENT_TYPE, text.encode()
        if path in (db_root, db_root + "/"):
            info = self.couch.request("GET", "").json()
            keep = {k: info.get(k) for k in ("db_name", "update_seq", "doc_count")}
            return 200, "application/json", json.dumps(keep).encode()
        doc_id = unquote(path.removeprefix(db_root + "/"))
        if path.startswith(db_root + "/") and doc_id.startswith(REPORT_PREFIX):
            night = doc_id.removeprefix(REPORT_PREFIX)
            found = reports(self.couch, [night]).get(night)  # checked, as the CLI shows it
            if found is None:
                return 404, "application/json", b'{"error":"not_found"}'
            return 200, "application/json", json.dumps(found).encode()
        if not path.startswith(self.base):
            return 404, "application/json", b'{"error":"not_found"}'
        name = path[len(self.base) :]
        if name in self.files:
            data, ctype = self.files[name]
            return 200, ctype, data
        view = name.removeprefix("_view/")
        if name.startswith("_view/") and view in self.views:
            query = f"?{parts.query}" if parts.query else ""
            resp = self.couch.request("GET", f"_design/{DDOC}/_view/{quote(view, safe='')}{query}")
            return 200, "application/json", resp.content
        return 404, "application/json", b'{"error":"not_found"}'

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                try:
                    status, ctype, body = page.answer(self.path)
                except GridXferError as exc:
                    status, ctype = 502, "application/json"
                    body = json.dumps({"error": "database", "reason": str(exc)}).encode()
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", ctype)
                    ctype = "text/plain"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass  # the CLI's logging says what matters

        return Handler


def snapshot(couch: Couch, *, now: float | None = None) -> str:
    """A self-contained HTML page: every night's counts, and its errors and holders."""
    report = st.gather(couch, now=now)
    details = {
        ns.night: st.gather(couch, ns.night, now=report.generated).nights[0]
        for ns in report.nights
        if ns.errors or ns.held
    }
    morning = reports(couch, [ns.night for ns in report.nights])
    css = status_files()["status.css"][0].decode()
    e = html.escape
    rows = [_night_row(ns) for ns in report.nights]
    sections = [
        _night_section(ns.night, details.get(ns.night), morning.get(ns.night))
        for ns in report.nights
        if ns.night in details or ns.night in morning
    ]
    head = "".join(f"<th>{s}</th>" for s in STATES)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(report.generated))
    unsettled = (
        f'<p class="problem">not settled: the open counts are off by {report.unsettled} '
        "from what a quorum of the cluster's copies says; they are catching up</p>"
        if report.unsettled
        else ""
    )
    body = (
        f'<table id="nights"><thead><tr><th>night</th>{head}<th>bytes done / total</th>'
        f"<th>rate</th><th>ETA</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p id="no-nights">no tokens yet</p>'
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>GRID_XFER status {e(couch.db)}</title><style>{css}</style></head><body>"
        f'<header><h1>GRID_XFER <span id="db" class="db">{e(couch.db)}</span></h1>'
        f'<span class="muted">snapshot of {e(stamp)}</span></header>{unsettled}{body}'
        f"{''.join(sections)}</body></html>\n"
    )


def _night_row(ns: st.NightStatus) -> str:
    e = html.escape
    cells = "".join(f'<td class="num" data-state="{s}">{ns.states.get(s, 0)}</td>' for s in STATES)
    return (
        f'<tr data-night="{e(ns.night)}"><td>{e(ns.night)}</td>{cells}'
        f'<td class="num">{e(human_bytes(ns.bytes_done))} / '
        f"{e(human_bytes(ns.bytes_total))}</td>"
        f"<td>{e(rate_text(ns))}</td><td>{e(eta_text(ns))}</td></tr>"
    )


def _night_section(night: str, ns: st.NightStatus | None, morning: dict[str, Any] | None) -> str:
    """A night's error codes and lease holders (each table only if it has rows), and
    its morning report."""
    e = html.escape
    report = (
        f'<div class="report"><h3>Morning report</h3><pre class="report-text">'
        f"{e(report_text(morning))}</pre></div>"
        if morning is not None
        else ""
    )
    if ns is None:
        return f'<section data-night="{e(night)}"><h2>Night {e(night)}</h2>{report}</section>'
    errs = "".join(
        f'<tr data-code="{c.code}"><td class="num">{c.code}</td><td class="name">{e(c.name)}'
        f'</td><td class="count num">{c.count}</td><td class="message">{e(c.message or "")}'
        f"</td><td>{e(c.token or '')}</td></tr>"
        for c in ns.error_codes or []
    )
    held = "".join(
        f"<tr><td>{e(h.worker or '?')}</td><td>{e(h.host or '')}</td><td>{e(h.job_id or '')}"
        f'</td><td class="num">{h.tokens}</td>'
        f"<td>{'expired' if h.expired else 'live'}</td></tr>"
        for h in ns.holders or []
    )
    return (
        f'<section data-night="{e(night)}"><h2>Night {e(night)}</h2>'
        + (
            f'<table class="errors"><thead><tr><th>code</th><th>name</th><th>tokens</th>'
            f"<th>sample message</th><th>token</th></tr></thead><tbody>{errs}</tbody></table>"
            if errs
            else ""
        )
        + (
            f"<table><thead><tr><th>worker</th><th>host</th><th>job</th><th>tokens</th>"
            f"<th>lease</th></tr></thead><tbody>{held}</tbody></table>"
            if held
            else ""
        )
        + report
        + "</section>"
    )
