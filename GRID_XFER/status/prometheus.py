"""A :class:`StatusReport` in the Prometheus text exposition format 0.0.4.

For ``gridxfer status --prometheus``, ``GET /metrics`` of ``status --serve`` and
the nightly service. The metric names and labels are listed in docs/status.md and
are kept stable: later versions add metrics, they do not rename or remove these.
Every value is a gauge: the numbers are read afresh from the views on each
scrape, and a night's counts move both ways (a reset token goes back to todo).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

from GRID_XFER.errors import code_name
from GRID_XFER.status.report import NightStatus, StatusReport
from GRID_XFER.token import STATES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "gridxfer_"
UP_HELP = "1: the database answered and these numbers are current; 0: it did not."

Sample = tuple[dict[str, str], float]
Family = tuple[str, str, list[Sample]]  # name (without prefix), help, samples

# name (without the prefix) -> help, for the families with one sample per night.
PER_NIGHT: dict[str, str] = {
    "night_remaining_tokens": "Tokens of the night not finished yet (todo, locked, staging, "
    "archiving).",
    "night_size_bytes": "Bytes of all the night's tokens (file sizes known at creation).",
    "night_done_bytes": "Bytes of the night's done tokens.",
    "night_tokens_per_second": "Tokens finished (done or error) per second over the rate window.",
    "night_bytes_per_second": "Bytes of done tokens per second over the rate window.",
    "night_workers": "Workers holding leases on the night's tokens.",
    "night_window_seconds": "Seconds the night's rate is measured over (0: nothing finished "
    "within the rate window).",
    "night_window_done_bytes": "Bytes of the night's tokens done within the rate window.",
}


def escape_label(value: str) -> str:
    """A label value as the format quotes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _value(v: float) -> str:
    if isinstance(v, int):  # bool too
        return str(int(v))
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _family(name: str, help_text: str, samples: Iterable[Sample]) -> list[str]:
    full = PREFIX + name
    lines = [f"# HELP {full} {_escape_help(help_text)}", f"# TYPE {full} gauge"]
    for labels, value in samples:
        pairs = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
        lines.append(f"{full}{{{pairs}}} {_value(value)}" if pairs else f"{full} {_value(value)}")
    return lines


def _per_night(ns: NightStatus) -> dict[str, float]:
    return {
        "night_remaining_tokens": ns.remaining,
        "night_size_bytes": ns.bytes_total,
        "night_done_bytes": ns.bytes_done,
        "night_tokens_per_second": ns.tokens_per_s,
        "night_bytes_per_second": ns.bytes_per_s,
        "night_workers": ns.workers,
        "night_window_seconds": ns.span,
        "night_window_done_bytes": ns.recent_bytes,
    }


def _night_families(nights: list[NightStatus]) -> list[Family]:
    tokens: list[Sample] = [
        ({"night": ns.night, "state": s}, ns.states.get(s, 0)) for ns in nights for s in STATES
    ]
    families: list[Family] = [("night_tokens", "Tokens of the night in each state.", tokens)]
    values = [(ns.night, _per_night(ns)) for ns in nights]
    families += [
        (name, help_text, [({"night": night}, v[name]) for night, v in values])
        for name, help_text in PER_NIGHT.items()
    ]
    finished: list[Sample] = [
        ({"night": ns.night, "state": state}, n)
        for ns in nights
        for state, n in (("done", ns.recent_done), ("error", ns.recent_errors))
    ]
    families.append(
        (
            "night_window_finished_tokens",
            "Tokens of the night finished within the rate window, "
            "by the state they finished in (done, error).",
            finished,
        )
    )
    families.append(
        (
            "night_eta_seconds",
            "Seconds until no token of the night is left at the recent rate "
            "(0: finished; absent while nothing finished within the rate window).",
            [({"night": ns.night}, ns.eta) for ns in nights if ns.eta is not None],
        )
    )
    errors: list[Sample] = [
        ({"night": ns.night, "code": str(code), "name": code_name(code)}, count)
        for ns in nights
        for code, count in sorted(ns.errors.items())
    ]
    families.append(("night_error_tokens", "Tokens of the night in error, per code.", errors))
    return families


def _holder_families(nights: list[NightStatus]) -> list[Family]:
    """Per worker holding leases: only in a night's detail (``gather(couch, night)``)."""
    held = [
        (
            {
                "night": ns.night,
                "worker": h.worker or "",
                "host": h.host or "",
                "job": h.job_id or "",
            },
            h,
        )
        for ns in nights
        for h in ns.holders or []
    ]
    return [
        (
            "holder_tokens",
            "Tokens a worker holds leases on (a night's detail only).",
            [(labels, h.tokens) for labels, h in held],
        ),
        (
            "holder_lease_expires_timestamp_seconds",
            "Unix time the earliest of a worker's leases expires (0: a token without one).",
            [(labels, h.lease_expires) for labels, h in held],
        ),
        (
            "holder_expired",
            "1 when a worker's earliest lease has run out (a lost worker, to be reaped).",
            [(labels, 1 if h.expired else 0) for labels, h in held],
        ),
    ]


def prometheus_text(report: StatusReport, *, now: float | None = None) -> str:
    """The report as metrics; ``now`` (default: the current time) dates the scrape, so
    ``gridxfer_status_age_seconds`` says how old a kept report's numbers are."""
    now = time.time() if now is None else now
    families: list[Family] = [
        ("up", UP_HELP, [({}, 1)]),
        (
            "status_generated_timestamp_seconds",
            "Unix time the numbers were read from the views.",
            [({}, report.generated)],
        ),
        (
            "status_age_seconds",
            "Seconds between reading the numbers and this exposition.",
            [({}, max(0.0, now - report.generated))],
        ),
        ("status_window_seconds", "The rate window in seconds.", [({}, report.window)]),
        (
            "status_unsettled_tokens",
            "On a cluster: by how much the open counts differ from a quorum read (0: settled).",
            [({}, report.unsettled)],
        ),
        ("nights", "Nights with tokens.", [({}, len(report.nights))]),
    ]
    families += _night_families(report.nights)
    families += _holder_families(report.nights)
    lines: list[str] = []
    for name, help_text, samples in families:  # a family without samples keeps its HELP
        lines += _family(name, help_text, samples)
    return "\n".join(lines) + "\n"


def prometheus_down() -> str:
    """What ``/metrics`` answers when the database does not: ``gridxfer_up 0``."""
    return "\n".join(_family("up", UP_HELP, [({}, 0)])) + "\n"
