"""Gathering a :class:`StatusReport` from reduce views only.

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
same arithmetic in the browser.
"""

from __future__ import annotations

import math
import time
from typing import Any

from GRID_XFER.couch import Couch
from GRID_XFER.errors import GridXferError, NotFound
from GRID_XFER.pool import current_tokens
from GRID_XFER.status.report import OPEN_STATES, ErrorCode, Holder, NightStatus, StatusReport
from GRID_XFER.token import is_token, shown_state
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
# On a cluster: how often and how far apart the open tokens are checked against a
# quorum read before a report says its counts are not settled, and at most how many.
SETTLE_TRIES = 4
SETTLE_WAIT = 1.0
VERIFY_MAX = 5000


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
    _add_errors(couch, night, nights)
    _add_rates(couch, nights, now, window)
    for row in couch.view(DDOC, "holders", group_level=2, **_night_range(night))["rows"]:
        n = row["key"][0]
        if n in nights:
            nights[n].workers += 1
    if night is not None:
        _add_detail(couch, nights[night], now)
    return StatusReport(now, window, [nights[n] for n in sorted(nights)])


def _add_errors(couch: Couch, night: str | None, nights: dict[str, NightStatus]) -> None:
    for row in couch.view(DDOC, "errors", group_level=2, **_night_range(night))["rows"]:
        n, code = row["key"][:2]
        if n in nights and code is not None:  # 2 and 2.0 are one code
            errors = nights[n].errors
            errors[int(code)] = errors.get(int(code), 0) + int(row["value"])


def _add_rates(couch: Couch, nights: dict[str, NightStatus], now: float, window: float) -> None:
    """Completions within the window, and the span they were counted over."""
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


def _add_detail(couch: Couch, ns: NightStatus, now: float) -> None:
    """A night's error codes with a sample message each, and its lease holders."""
    ns.error_codes = [
        _sample(couch, ns.night, code, count) for code, count in sorted(ns.errors.items())
    ]
    ns.holders = []
    for row in couch.view(DDOC, "holders", group_level=4, **_night_range(ns.night))["rows"]:
        _, worker, host, job = row["key"][:4]
        earliest = float(row["value"]["min"])
        ns.holders.append(
            Holder(worker, host, job, int(row["value"]["count"]), earliest, 0 < earliest < now)
        )


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
