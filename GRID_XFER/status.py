"""Progress at a glance: a :class:`StatusReport` gathered from reduce views only.

Every number comes from a grouped reduce query, so the cost does not grow with
the number of finished tokens on Apache CouchDB (stored reductions), and a
report takes a handful of requests whatever the number of nights:

* ``by_state`` (``group_level=2``): tokens and bytes per night and state;
* ``errors`` (``group_level=2``): error tokens per night and code, and with
  ``reduce=false&limit=1`` one sample message per code for a night's detail;
* ``finished`` (a time range, ``group_level=2``): tokens finished per minute and
  night, for the rate and the ETA;
* ``holders`` (``group_level=2``, or 4 for a night's detail): workers holding
  leases, the tokens each holds and the earliest expiry among them.

The status page (``tokens/status/status.js``) makes the same queries and the
same arithmetic in the browser. This module prints nothing; the rich
renderables at the end only build what the CLI shows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from GRID_XFER.couch import Couch
from GRID_XFER.errors import GridXferError, NotFound, code_name
from GRID_XFER.pool import current_tokens
from GRID_XFER.token import STATES, is_token, shown_state
from GRID_XFER.views import DDOC

# Completions are counted over this many recent seconds for the rate.
WINDOW = 900.0
# The ``finished`` view's time bucket (its map floors times to the minute).
BUCKET = 60
# A live display waits at least this many times a refresh's duration between
# refreshes (on pouchdb-server an overview reads one row per token).
SHARE = 5
# The overview's per-night counts, cached with the sequence they were read at.
CACHE_ID = "_local/gridxfer-status"
CACHE_VERSION = 1
CHANGES_LIMIT = 20000  # more changes than this since the cache: recount everything
HELD_STATES = ("locked", "staging", "archiving")
# On a cluster: how often and how far apart the open tokens are checked against a
# quorum read before a report says its counts are not settled, and at most how many.
SETTLE_TRIES = 4
SETTLE_WAIT = 1.0
VERIFY_MAX = 5000
OPEN_STATES = ("todo", *HELD_STATES)


@dataclass
class ErrorCode:
    """Error tokens of one code in a night, with one sample message."""

    code: int
    count: int
    message: str | None = None
    token: str | None = None

    @property
    def name(self) -> str:
        return code_name(self.code)

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "count": self.count,
            "message": self.message,
            "token": self.token,
        }


@dataclass
class Holder:
    """A worker holding leases on tokens of a night."""

    worker: str | None
    host: str | None
    job_id: str | None
    tokens: int
    lease_expires: float  # the earliest expiry among its tokens
    expired: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.worker,
            "host": self.host,
            "job_id": self.job_id,
            "tokens": self.tokens,
            "lease_expires": self.lease_expires,
            "expired": self.expired,
        }


@dataclass
class NightStatus:
    night: str
    states: dict[str, int]
    bytes_by_state: dict[str, int]
    errors: dict[int, int] = field(default_factory=dict)
    workers: int = 0
    # Completions in the rate window: tokens done, tokens failed, bytes done,
    # and the seconds they were counted over (0: none in the window).
    recent_done: int = 0
    recent_errors: int = 0
    recent_bytes: int = 0
    span: float = 0.0
    # A night's detail (``gather(couch, night)``); None in the overview.
    error_codes: list[ErrorCode] | None = None
    holders: list[Holder] | None = None

    @property
    def total(self) -> int:
        return sum(self.states.values())

    @property
    def remaining(self) -> int:
        return sum(self.states.get(s, 0) for s in OPEN_STATES)

    @property
    def held(self) -> int:
        return sum(self.states.get(s, 0) for s in HELD_STATES)

    @property
    def bytes_total(self) -> int:
        return sum(self.bytes_by_state.values())

    @property
    def bytes_done(self) -> int:
        return self.bytes_by_state.get("done", 0)

    @property
    def fraction(self) -> float:
        """Share of tokens finished (done or error)."""
        return 1.0 - self.remaining / self.total if self.total else 1.0

    @property
    def tokens_per_s(self) -> float:
        return (self.recent_done + self.recent_errors) / self.span if self.span else 0.0

    @property
    def bytes_per_s(self) -> float:
        return self.recent_bytes / self.span if self.span else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until nothing remains at the recent rate; 0 when finished, None
        when nothing finished within the window."""
        if not self.remaining:
            return 0.0
        rate = self.tokens_per_s
        return self.remaining / rate if rate > 0 else None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "night": self.night,
            "states": {s: self.states.get(s, 0) for s in STATES},
            "errors": {str(c): n for c, n in sorted(self.errors.items())},
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "tokens": self.total,
            "workers": self.workers,
            "rate": {
                "tokens_per_s": round(self.tokens_per_s, 6),
                "bytes_per_s": round(self.bytes_per_s, 3),
                "done": self.recent_done,
                "errors": self.recent_errors,
                "bytes": self.recent_bytes,
                "seconds": round(self.span, 3),
            },
            "eta_s": None if self.eta is None else round(self.eta, 1),
        }
        if self.error_codes is not None:
            out["error_codes"] = [e.as_dict() for e in self.error_codes]
        if self.holders is not None:
            out["holders"] = [h.as_dict() for h in self.holders]
        return out


@dataclass
class StatusReport:
    generated: float
    window: float
    nights: list[NightStatus]
    # On a cluster: by how much the open counts differ from a quorum read of the
    # tokens (0: the counts are settled; see gather).
    unsettled: int = 0

    def night(self, name: str) -> NightStatus:
        for n in self.nights:
            if n.night == name:
                return n
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        """The documented ``gridxfer status --json`` shape (docs/status.md)."""
        return {
            "generated": round(self.generated, 3),
            "window_s": self.window,
            "settled": not self.unsettled,
            "unsettled": self.unsettled,
            "nights": [n.as_dict() for n in self.nights],
        }


def _night_range(night: str | None) -> dict[str, Any]:
    return {} if night is None else {"startkey": [night], "endkey": [night, {}]}


def gather(
    couch: Couch, night: str | None = None, *, now: float | None = None, window: float = WINDOW
) -> StatusReport:
    """Every night's progress, or one night's with its error codes and lease holders.

    On a cluster a view answers from one copy per shard range, which can lag the
    others for a moment (for long after a node rejoins). The open tokens the
    views count (todo, locked, staging, archiving) are then read from a quorum
    of copies; while some differ the report is gathered again, and if they still
    differ it says so (``unsettled``) rather than pass a stale count as final.
    Raises NotFound for a night without tokens.
    """
    report = _gather(couch, night, now=now, window=window)
    if not couch.replicated:
        return report
    for attempt in range(SETTLE_TRIES):
        report.unsettled = _unsettled(couch, report)
        if not report.unsettled or attempt == SETTLE_TRIES - 1:
            return report
        time.sleep(SETTLE_WAIT)
        report = _gather(couch, night, now=None if now is None else now, window=window)
    return report


def _unsettled(couch: Couch, report: StatusReport) -> int:
    """How far the open counts are from what a quorum of copies says (0: settled).

    The tokens the views list in an open state (at most VERIFY_MAX) are read from
    a quorum; per night and open state, the count the report gives is compared
    with the number of them that really are in that state. A stale count, or a
    token the listing missed, shows as a difference.
    """
    listed: set[str] = set()
    checked: set[tuple[str, str]] = set()  # (night, state) counts small enough to check
    for ns in report.nights:
        for state in OPEN_STATES:
            count = ns.states.get(state, 0)
            if count and len(listed) + count > VERIFY_MAX:
                continue  # a night in full swing: its counts move anyway
            checked.add((ns.night, state))
            listed.update(
                row["id"]
                for row in couch.iter_view(
                    DDOC,
                    "by_state",
                    reduce=False,
                    startkey=[ns.night, state],
                    endkey=[ns.night, state, {}],
                )
            )
    truth: dict[tuple[str, str], int] = {}
    for doc in (current_tokens(couch, sorted(listed), time.time()) if listed else {}).values():
        if is_token(doc):
            key = (doc["token_set"], shown_state(doc))
            truth[key] = truth.get(key, 0) + 1
    return sum(
        abs(ns.states.get(state, 0) - truth.get((ns.night, state), 0))
        for ns in report.nights
        for state in OPEN_STATES
        if (ns.night, state) in checked
    )


def _gather(couch: Couch, night: str | None, *, now: float | None, window: float) -> StatusReport:
    now = time.time() if now is None else now
    nights: dict[str, NightStatus] = {}
    counts = (
        state_counts(couch)
        if night is None
        else _by_state(couch.view(DDOC, "by_state", group_level=2, **_night_range(night))["rows"])
    )
    for n, states in counts.items():
        ns = nights[n] = NightStatus(n, {}, {})
        for state, (count, nbytes) in states.items():
            ns.states[state] = count
            ns.bytes_by_state[state] = nbytes
    if night is not None and night not in nights:
        raise NotFound(f"unknown night {night!r}: no tokens in database {couch.db!r}")

    for row in couch.view(DDOC, "errors", group_level=2, **_night_range(night))["rows"]:
        n, code = row["key"][:2]
        if n in nights and code is not None:  # 2 and 2.0 are one code
            errors = nights[n].errors
            errors[int(code)] = errors.get(int(code), 0) + int(row["value"])

    start = math.floor((now - window) / BUCKET) * BUCKET
    first: dict[str, float] = {}
    for row in couch.view(DDOC, "finished", group_level=2, startkey=[start], endkey=[now, {}])[
        "rows"
    ]:
        bucket, n = row["key"][:2]
        if n not in nights:
            continue
        done, failed, nbytes = (int(v) for v in row["value"][:3])
        ns = nights[n]
        ns.recent_done += done
        ns.recent_errors += failed
        ns.recent_bytes += nbytes
        first[n] = min(first.get(n, bucket), bucket)
    for n, t0 in first.items():
        # From the first minute with completions: a night that started (or
        # resumed) recently is measured over the time it has been running.
        nights[n].span = min(window + BUCKET, max(float(BUCKET), now - t0))

    for row in couch.view(DDOC, "holders", group_level=2, **_night_range(night))["rows"]:
        n = row["key"][0]
        if n in nights:
            nights[n].workers += 1

    if night is not None:
        ns = nights[night]
        ns.error_codes = [
            _sample(couch, night, code, count) for code, count in sorted(ns.errors.items())
        ]
        ns.holders = []
        for row in couch.view(DDOC, "holders", group_level=4, **_night_range(night))["rows"]:
            _, worker, host, job = row["key"][:4]
            earliest = float(row["value"]["min"])
            ns.holders.append(
                Holder(worker, host, job, int(row["value"]["count"]), earliest, 0 < earliest < now)
            )
    return StatusReport(now, window, [nights[n] for n in sorted(nights)])


def _by_state(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[int]]]:
    out: dict[str, dict[str, list[int]]] = {}
    for row in rows:
        n, state = row["key"][:2]
        out.setdefault(n, {})[state] = [int(row["value"]["count"]), int(row["value"]["sum"])]
    return out


def state_counts(couch: Couch) -> dict[str, dict[str, list[int]]]:
    """{night: {state: [tokens, bytes]}} for every night, re-reading only nights that changed.

    pouchdb-server reduces at query time, one row per token, so an overview of
    a 100,000-token season costs seconds. The last answer is kept in a local
    document with the database sequence it was read at; the changes feed since
    then names the tokens (hence the nights: ids are ``<night>_<exposure>``)
    that moved, and only those nights are queried again.
    """
    if couch.replicated:  # CouchDB stores reductions; and a lagging view copy must not be kept
        return _by_state(couch.view(DDOC, "by_state", group_level=2)["rows"])
    cache = couch.get_or_none(CACHE_ID)
    if cache is not None and cache.get("version") == CACHE_VERSION and _cache_ok(cache):
        feed = couch.request(
            "GET", "_changes", params={"since": str(cache["seq"]), "limit": CHANGES_LIMIT}
        ).json()
        if len(feed["results"]) < CHANGES_LIMIT:
            counts: dict[str, dict[str, list[int]]] = cache["nights"]
            dirty = {
                r["id"].split("_", 1)[0] for r in feed["results"] if not r["id"].startswith("_")
            }
            for n in sorted(dirty):
                counts.pop(n, None)
                counts.update(
                    _by_state(
                        couch.view(DDOC, "by_state", group_level=2, **_night_range(n))["rows"]
                    )
                )
            if dirty:
                _save_cache(couch, cache, feed["last_seq"], counts)
            return counts
    seq = couch.request("GET", "").json()["update_seq"]  # read before the counts: never ahead
    counts = _by_state(couch.view(DDOC, "by_state", group_level=2)["rows"])
    _save_cache(couch, cache, seq, counts)
    return counts


def _cache_ok(cache: dict[str, Any]) -> bool:
    """The cache as _save_cache writes it (anyone can write a local document)."""
    nights = cache.get("nights")
    return (
        "seq" in cache
        and isinstance(nights, dict)
        and all(
            isinstance(states, dict)
            and all(
                isinstance(v, list) and len(v) == 2 and all(type(x) is int for x in v)
                for v in states.values()
            )
            for states in nights.values()
        )
    )


def _save_cache(
    couch: Couch, old: dict[str, Any] | None, seq: Any, counts: dict[str, dict[str, list[int]]]
) -> None:
    doc = {"_id": CACHE_ID, "version": CACHE_VERSION, "seq": seq, "nights": counts}
    if old and "_rev" in old:
        doc["_rev"] = old["_rev"]
    try:
        couch.put(doc)
    except GridXferError:  # a concurrent status wrote it first: theirs is as good
        pass


def _sample(couch: Couch, night: str, code: int, count: int) -> ErrorCode:
    rows = couch.view(DDOC, "errors", reduce=False, limit=1, key=[night, code])["rows"]
    if not rows:
        return ErrorCode(code, count)
    return ErrorCode(code, count, rows[0].get("value"), rows[0].get("id"))


# -- presentation (rich renderables; the CLI prints them) ----------------------
def human_bytes(n: float) -> str:
    from rich.filesize import decimal

    return decimal(int(n))


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _rate_text(ns: NightStatus) -> str:
    if not ns.span:
        return "-"
    return f"{ns.tokens_per_s * 60:.1f}/min {human_bytes(ns.bytes_per_s)}/s"


def _eta_text(ns: NightStatus) -> str:
    if not ns.remaining:
        return "finished"
    return human_duration(ns.eta)


def nights_table(report: StatusReport, *, bars: bool = False, limit: int | None = None) -> Any:
    """The nights table; ``bars`` adds a progress bar, ``limit`` keeps the nights
    with work left or recent completions first and at most that many rows."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    colours = {
        "todo": "",
        "locked": "cyan",
        "staging": "magenta",
        "archiving": "blue",
        "done": "green",
        "error": "red",
    }
    table = Table(expand=False)
    table.add_column("night", no_wrap=True)
    if bars:
        table.add_column("progress", no_wrap=True, min_width=12)
        table.add_column("%", justify="right", no_wrap=True)
    for s in STATES:
        table.add_column(s, justify="right", style=colours[s], no_wrap=True)
    table.add_column("bytes done/total", justify="right", no_wrap=True)
    table.add_column("rate", justify="right", no_wrap=True)
    table.add_column("ETA", justify="right", no_wrap=True)
    shown = report.nights
    hidden = 0
    if limit is not None and len(shown) > limit:
        active = [n for n in shown if n.remaining or n.span]
        shown = (active or shown)[-limit:]
        hidden = len(report.nights) - len(shown)
    for ns in shown:
        cells: list[Any] = [Text(ns.night)]  # data, not markup
        if bars:
            cells += [
                ProgressBar(
                    total=max(ns.total, 1),
                    completed=ns.total - ns.remaining,
                    width=20,
                    complete_style="red" if ns.states.get("error") else "green",
                    finished_style="green",
                ),
                f"{math.floor(100 * ns.fraction)}%",
            ]
        cells += [str(ns.states.get(s, 0)) for s in STATES]
        cells += [
            f"{human_bytes(ns.bytes_done)}/{human_bytes(ns.bytes_total)}",
            _rate_text(ns),
            _eta_text(ns),
        ]
        table.add_row(*cells)
    if hidden:
        table.caption = f"{hidden} more nights without work left (gridxfer status)"
    return table


def night_detail(ns: NightStatus, now: float) -> Any:
    """Error codes with a sample message, and the workers holding leases."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    if ns.error_codes:
        errors = Table(title="errors", title_justify="left", expand=False)
        errors.add_column("code", justify="right", style="red")
        errors.add_column("name")
        errors.add_column("tokens", justify="right")
        errors.add_column("sample message", overflow="fold")
        for e in ns.error_codes:
            sample = e.message or ""
            if e.token:
                sample = f"{sample} ({e.token})"
            errors.add_row(str(e.code), e.name, str(e.count), Text(sample))
        parts.append(errors)
    else:
        parts.append(Text("no errors", style="green"))
    if ns.holders:
        holders = Table(title="workers holding leases", title_justify="left", expand=False)
        for col in ("worker", "host", "job", "tokens", "lease"):
            holders.add_column(col, justify="right" if col in ("tokens", "lease") else "left")
        for h in ns.holders:
            left = h.lease_expires - now
            lease = (
                Text("EXPIRED", style="bold red")
                if h.expired
                else Text("no lease", style="bold red")
                if h.lease_expires <= 0
                else Text(f"expires in {human_duration(left)}")
            )
            holders.add_row(
                Text(h.worker or "?"),
                Text(h.host or "?"),
                Text(h.job_id or "-"),
                str(h.tokens),
                lease,
            )
        parts.append(holders)
    else:
        parts.append(Text("no worker holds a lease"))
    return Group(*parts)


def render(
    report: StatusReport,
    *,
    bars: bool = False,
    limit: int | None = None,
    problem: str | None = None,
) -> Any:
    """Everything ``gridxfer status`` shows for a report."""
    from rich.console import Group
    from rich.text import Text

    parts: list[Any] = []
    if not report.nights:
        parts.append(Text("no tokens yet (gridxfer tokens create NIGHT ...)"))
    else:
        parts.append(nights_table(report, bars=bars, limit=limit))
    if len(report.nights) == 1 and report.nights[0].error_codes is not None:
        parts.append(night_detail(report.nights[0], report.generated))
    if report.unsettled:
        parts.append(
            Text(
                f"not settled: the open counts are off by {report.unsettled} from "
                "what a quorum of the cluster's copies says; they are catching up",
                style="bold yellow",
            )
        )
    if bars:
        stamp = time.strftime("%H:%M:%S", time.localtime(report.generated))
        parts.append(
            Text(
                f"updated {stamp}; rate over the last {human_duration(report.window)}"
                "; Ctrl-C to stop",
                style="dim",
            )
        )
    if problem:
        parts.append(Text(problem, style="bold red"))
    return Group(*parts)
