"""Design documents built from the readable ``tokens/views/<ddoc>/<view>.{map,reduce}.js``.

Installing compares each design document with the stored one and writes it
only when its source changed, because every rewrite makes CouchDB rebuild the
indexes, which for a season of tokens takes minutes.
"""
from __future__ import annotations

import importlib.resources
import logging
from typing import Any

from GRID_XFER.couch import Couch
from GRID_XFER.errors import Conflict

log = logging.getLogger(__name__)

DDOC = "gridxfer"
MONITOR = "Monitor"


def _strip_comments(source: str) -> str:
    # A leading comment would make some servers' `return <source>` return nothing.
    lines = source.strip().splitlines()
    while lines and lines[0].lstrip().startswith("//"):
        lines.pop(0)
    return "\n".join(lines).strip()


def design_docs() -> dict[str, dict[str, Any]]:
    """``{ddoc name: design document}`` from the view sources."""
    root = importlib.resources.files("GRID_XFER.tokens") / "views"
    docs: dict[str, dict[str, Any]] = {}
    for ddir in sorted(root.iterdir(), key=lambda p: p.name):
        if not ddir.is_dir():
            continue
        views: dict[str, dict[str, str]] = {}
        for f in sorted(ddir.iterdir(), key=lambda p: p.name):
            name, _, kind = f.name.removesuffix(".js").rpartition(".")
            if kind not in ("map", "reduce") or not f.name.endswith(".js"):
                continue
            views.setdefault(name, {})[kind] = _strip_comments(f.read_text())
        docs[ddir.name] = {"_id": f"_design/{ddir.name}", "language": "javascript",
                           "views": views}
    return docs


def install(couch: Couch) -> dict[str, str]:
    """Create or update every design doc; returns ``{ddoc: created|updated|unchanged}``."""
    outcome: dict[str, str] = {}
    for name, doc in design_docs().items():
        current = couch.get_or_none(doc["_id"])
        if current is not None and current.get("views") == doc["views"]:
            outcome[name] = "unchanged"
            continue
        if current is not None:
            # Keep what others stored on the ddoc (status page attachments).
            merged = {k: v for k, v in current.items() if k not in ("views", "language")}
            merged.update(doc)
            doc = merged
        try:
            couch.put(doc)
        except Conflict:
            outcome[name] = "unchanged"  # another init won; it wrote the same source
            continue
        outcome[name] = "updated" if current is not None else "created"
        log.info("design document %s %s", name, outcome[name])
    return outcome
