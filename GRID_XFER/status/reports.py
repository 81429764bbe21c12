"""The nightly service's morning reports, read for ``gridxfer status`` and its pages.

The service stores one document per night, ``gridxfer-report-<night>`` (shape in
docs/status.md). Anyone who can write to the database can write such a document,
so each is checked before it is shown: one that does not have the documented
shape is skipped with a warning, and the status goes on without it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

from GRID_XFER.couch import Couch
from GRID_XFER.status.render import human_bytes, human_duration

log = logging.getLogger(__name__)

REPORT_PREFIX = "gridxfer-report-"
REPORT_TYPE = "gridxfer-report"
EXPOSURE_KEYS = ("total", "done", "error", "remaining")


def report_id(night: str) -> str:
    return REPORT_PREFIX + night


def night_report(couch: Couch, night: str) -> dict[str, Any] | None:
    """The night's morning report, or None when there is none (or it is malformed)."""
    return reports(couch, [night]).get(night)


def reports(couch: Couch, nights: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{night: report}`` for the nights that have a well-formed one, in one request.

    A report is the stored document without its ``_id`` and ``_rev``.
    """
    wanted = sorted(set(nights))
    if not wanted:
        return {}
    rows = couch.all_docs([report_id(n) for n in wanted], include_docs=True)
    docs = {r.get("key"): r.get("doc") for r in rows if isinstance(r, dict)}
    out: dict[str, dict[str, Any]] = {}
    for night in wanted:
        doc = docs.get(report_id(night))
        if doc is None:  # no report (or a deleted one)
            continue
        problem = report_problem(doc, night)
        if problem:
            log.warning("skipping morning report %s: %s", report_id(night), problem)
            continue
        out[night] = {k: v for k, v in doc.items() if not k.startswith("_")}
    return out


def _count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _number(v: Any, *, null: bool = False) -> bool:
    if v is None:
        return null
    return type(v) in (int, float) and math.isfinite(v)


def report_problem(doc: Any, night: str) -> str | None:
    """Why ``doc`` is not a report of ``night`` as docs/status.md describes it (None: it is)."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    if doc.get("type") != REPORT_TYPE:
        return f"type is {doc.get('type')!r}, not {REPORT_TYPE!r}"
    if doc.get("night") != night:
        return f"night is {doc.get('night')!r}, not {night!r}"
    exposures = doc.get("exposures")
    if not isinstance(exposures, dict) or not all(_count(exposures.get(k)) for k in EXPOSURE_KEYS):
        return "exposures must be an object of counts " + ", ".join(EXPOSURE_KEYS)
    if not _count(doc.get("bytes")):
        return "bytes must be a count"
    if not _number(doc.get("created")):
        return "created must be a number"
    for key in ("started", "finished", "duration", "throughput"):
        if not _number(doc.get(key), null=True):
            return f"{key} must be a number or null"
    if "text" in doc and not isinstance(doc["text"], str):
        return "text must be a string"
    errors = doc.get("errors", [])
    if not isinstance(errors, list):
        return "errors must be a list"
    for i, e in enumerate(errors):
        if not (
            isinstance(e, dict)
            and type(e.get("code")) is int
            and isinstance(e.get("name"), str)
            and _count(e.get("count"))
            and isinstance(e.get("advice", ""), str)
            and isinstance(e.get("samples", []), list)
            and all(isinstance(s, dict) for s in e.get("samples", []))
        ):
            return f"errors[{i}] must have a numeric code, a name, a count and a list of samples"
    return None


def report_text(report: dict[str, Any]) -> str:
    """The report's own text, or a short summary made from its numbers when it has none."""
    text = report.get("text")
    if isinstance(text, str) and text.strip():
        return text.rstrip("\n")
    exp = report["exposures"]
    lines = [
        f"night {report['night']}: {exp['done']} of {exp['total']} exposures done, "
        f"{exp['error']} in error, {exp['remaining']} remaining",
        f"{human_bytes(report['bytes'])} transferred in {human_duration(report.get('duration'))}",
    ]
    lines += [f"{e['code']} {e['name']}: {e['count']}" for e in report.get("errors", [])]
    return "\n".join(lines)
