"""The morning report: one document per night, written once, sent once.

The report is created with a PUT that has no revision, so of two services only
one can create it (the other gets 409 and sends nothing); it is marked sent
after a sink took it, and a report not marked sent is sent again next cycle.
So a report arrives once, or twice if the service dies between sending and
marking (at least once, never lost).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from GRID_XFER.couch import Couch
from GRID_XFER.errors import Conflict, code_name
from GRID_XFER.nightly.nights import Night
from GRID_XFER.pool import Pool
from GRID_XFER.status.render import human_bytes
from GRID_XFER.status.report import OPEN_STATES
from GRID_XFER.token import error_code, is_token, shown_state

log = logging.getLogger(__name__)

REPORT_TYPE = "gridxfer-report"

# What a data manager does about each error code (docs/tokens.md has the codes).
ADVICE: dict[int, str] = {
    1: "fix the configuration or credentials named in the message, then `tokens reset --code 1`",
    2: "the token is malformed: `tokens show` it, fix or delete it",
    20: "the source is gone: check with the observatory, then reset or delete the token",
    21: "transfer failed: check the endpoints; transient ones are retried, then `tokens reset`",
    22: "tape recall refused or files LOST/UNAVAILABLE: check `state-all`, ask the site",
    23: "tape recall too slow: check the site's tape queue, then `tokens reset --code 23`",
    24: "copy too slow: check the network or raise transfer.min_rate's timeout",
    30: "checksum mismatch: the file changed or was corrupted; re-check the source, then reset",
    31: "manifest missing or unreadable: ask for it; the service picks it up once written",
    32: "a file the manifest names is missing at the source: ask the observatory",
    33: "a file at the source is not in the manifest: fix the manifest, then reset",
    34: "a link leaves the exposure: fix the source's layout, then reset",
    40: "cannot write the destination: check space and permissions, then reset",
    41: "a different file already at the destination: decide which is right, then reset",
    50: "archived file LOST at the destination: ask the site, then reset to copy it again",
    51: "not on tape in time: check the site's migration, then reset --code 51",
    90: "a worker lost its lease: usually transient; reset if it persists",
    91: "interrupted: reset to run again",
    99: "unexpected: read the token's log (`tokens show`) and report it",
}


def report_id(night: str) -> str:
    return f"gridxfer-report-{night}"


def remaining(counts: dict[str, dict[str, int]]) -> int:
    """Open tokens in a night's ``{state: {"count", "bytes"}}`` counts."""
    return sum(counts.get(s, {}).get("count", 0) for s in OPEN_STATES)


def due(counts: dict[str, dict[str, int]], night: Night, waiting: int, now: float) -> bool:
    """A night gets its report once it is over and nothing of it remains, or at its
    deadline whatever remains (the report then says what is left)."""
    if not counts:
        return False
    left = remaining(counts) + waiting
    return (night.is_over(now) and left == 0) or now >= night.deadline


def build(pool: Pool, night: Night, *, samples: int, now: float) -> dict[str, Any]:
    """The report document from the night's tokens."""
    docs = [d for d in pool.select(night.name) if is_token(d)]
    states = Counter(shown_state(d) for d in docs)
    done = [d for d in docs if shown_state(d) == "done"]
    errors = [d for d in docs if shown_state(d) == "error"]
    started = min((float(d.get("created") or 0) for d in docs), default=None) or None
    ends = [float(d.get("done") or 0) for d in done]
    ends += [float((d.get("error") or {}).get("time") or 0) for d in errors]
    finished = max(ends, default=0.0) or None
    nbytes = sum(int(d.get("bytes_total") or 0) for d in done)
    duration = finished - started if started and finished and finished > started else None
    by_code: dict[int, list[dict[str, Any]]] = {}
    for d in errors:
        by_code.setdefault(error_code(d) or 99, []).append(d)
    doc: dict[str, Any] = {
        "_id": report_id(night.name),
        "type": REPORT_TYPE,
        "night": night.name,
        "stream": night.stream,
        "created": now,
        "exposures": {
            "total": len(docs),
            "done": states["done"],
            "error": states["error"],
            "remaining": sum(states[s] for s in OPEN_STATES),
        },
        "bytes": nbytes,
        "started": started,
        "finished": finished,
        "duration": duration,
        "throughput": nbytes / duration if duration else None,
        "errors": [
            {
                "code": code,
                "name": code_name(code),
                "count": len(ds),
                "advice": ADVICE.get(code, ADVICE[99]),
                "samples": [
                    {"token": d["_id"], "message": str((d.get("error") or {}).get("message"))}
                    for d in ds[:samples]
                ],
            }
            for code, ds in sorted(by_code.items())
        ],
        "sent": None,
    }
    doc["text"] = render(doc)
    return doc


def render(doc: dict[str, Any]) -> str:
    """The report as a person reads it in a mail or a chat."""
    e = doc["exposures"]
    lines = [
        f"Night {doc['night']} (stream {doc['stream']}): {e['done']} of {e['total']} "
        f"exposures done, {e['error']} in error, {e['remaining']} remaining.",
        f"Bytes moved: {human_bytes(doc['bytes'])}",
    ]
    if doc["duration"]:
        lines.append(
            f"Duration: {doc['duration'] / 3600:.2f} h; "
            f"throughput {human_bytes(doc['throughput'] or 0)}/s"
        )
    for err in doc["errors"]:
        lines.append(f"Error {err['code']} {err['name']}: {err['count']} exposure(s)")
        lines.append(f"  what to do: {err['advice']}")
        lines += [f"  e.g. {s['token']}: {s['message']}" for s in err["samples"]]
    if not doc["errors"]:
        lines.append("No errors.")
    return "\n".join(lines)


def store(couch: Couch, doc: dict[str, Any]) -> bool:
    """Create the report; False if it exists already (written by us or another)."""
    try:
        couch.put(doc)
    except Conflict:
        return False
    return True


def unsent(couch: Couch, night: str) -> dict[str, Any] | None:
    doc = couch.get_or_none(report_id(night))
    if doc is None or doc.get("type") != REPORT_TYPE or doc.get("sent") is not None:
        return None
    return doc


def mark_sent(couch: Couch, doc: dict[str, Any], when: float, how: str) -> None:
    doc["sent"] = {"time": when, "by": how}
    try:
        couch.put(doc)
    except Conflict:
        log.warning("report %s changed while being marked sent; left as it is", doc["_id"])
