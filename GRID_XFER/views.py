"""Design documents built from the readable ``tokens/views/<ddoc>/<view>.{map,reduce}.js``.

Installing compares each design document with the stored one and writes it
only when its source changed, because every rewrite makes CouchDB rebuild the
indexes, which for a season of tokens takes minutes.

The status page (``tokens/status/*``, plus ``codes.json`` made from the error
codes) is stored as attachments of ``_design/gridxfer``, so CouchDB serves it at
``/<db>/_design/gridxfer/status.html``. An attachment is uploaded only when its
content changed (compared by digest), and attachments survive view updates.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.resources
import json
import logging
from typing import Any

from GRID_XFER.couch import Couch
from GRID_XFER.errors import Code, Conflict

log = logging.getLogger(__name__)

DDOC = "gridxfer"
MONITOR = "Monitor"
# The design document that carries the status page, and the page's entry point.
STATUS_DDOC = DDOC
STATUS_PAGE = "status.html"
# Where install records the digests of the files it uploaded (see _unchanged_files).
_DIGESTS = "gridxfer_attachments"
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "application/javascript",
                  ".css": "text/css", ".json": "application/json", ".png": "image/png",
                  ".svg": "image/svg+xml"}


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


def status_files() -> dict[str, tuple[bytes, str]]:
    """``{name: (content, content type)}`` of the status page's attachments."""
    root = importlib.resources.files("GRID_XFER.tokens") / "status"
    files: dict[str, tuple[bytes, str]] = {}
    for f in sorted(root.iterdir(), key=lambda p: p.name):
        suffix = "." + f.name.rpartition(".")[2]
        if f.is_file() and suffix in _CONTENT_TYPES and not f.name.startswith("."):
            files[f.name] = (f.read_bytes(), _CONTENT_TYPES[suffix])
    codes = {str(int(c)): {"name": c.name, "label": c.label} for c in Code}
    files["codes.json"] = (json.dumps(codes, indent=1, sort_keys=True).encode(),
                           _CONTENT_TYPES[".json"])
    return files


def _md5(data: bytes) -> str:
    return "md5-" + base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324


def _changed_files(current: dict[str, Any] | None,
                   files: dict[str, tuple[bytes, str]]) -> list[str]:
    """Names of the page files the stored design doc lacks or holds in another version.

    A stored attachment counts as current when the server's digest is the MD5
    of our content (pouchdb-server, CouchDB for identity-stored data), or when
    it is still the attachment we uploaded with that content (CouchDB may
    digest the compressed bytes it stores for text types).
    """
    stored = (current or {}).get("_attachments") or {}
    recorded = (current or {}).get(_DIGESTS) or {}
    changed = []
    for name, (data, ctype) in files.items():
        stub, want = stored.get(name), _md5(data)
        mine = recorded.get(name) or {}
        same = stub is not None and stub.get("content_type") == ctype and (
            stub.get("digest") == want
            or (mine.get("md5") == want and mine.get("stored") == stub.get("digest")))
        if not same:
            changed.append(name)
    return changed


def install(couch: Couch) -> dict[str, str]:
    """Create or update every design doc; returns ``{ddoc: created|updated|unchanged}``."""
    outcome: dict[str, str] = {}
    for name, doc in design_docs().items():
        current = couch.get_or_none(doc["_id"])
        files = status_files() if name == STATUS_DDOC else {}
        changed = _changed_files(current, files)
        if current is not None and current.get("views") == doc["views"] and not changed:
            outcome[name] = "unchanged"
            continue
        if current is not None:
            # Keep what others stored on the ddoc; attachments stay as stubs.
            merged = {k: v for k, v in current.items() if k not in ("views", "language")}
            merged.update(doc)
            doc = merged
        if changed:
            attachments = dict(doc.get("_attachments") or {})
            for fname in changed:
                data, ctype = files[fname]
                attachments[fname] = {"content_type": ctype,
                                      "data": base64.b64encode(data).decode()}
            doc["_attachments"] = attachments
        try:
            couch.put(doc)
        except Conflict:
            outcome[name] = "unchanged"  # another init won; it wrote the same source
            continue
        outcome[name] = "updated" if current is not None else "created"
        if changed:
            _record_digests(couch, doc["_id"], files)
        log.info("design document %s %s", name, outcome[name])
    return outcome


def _record_digests(couch: Couch, doc_id: str, files: dict[str, tuple[bytes, str]]) -> None:
    # Remember which stored digest each uploaded file got, for servers whose
    # digest is not the MD5 of the content (see _changed_files).
    stored = couch.get(doc_id)
    stubs = stored.get("_attachments") or {}
    record = {n: {"md5": _md5(data), "stored": (stubs.get(n) or {}).get("digest")}
              for n, (data, _) in files.items()}
    if all(r["md5"] == r["stored"] for r in record.values()) or stored.get(_DIGESTS) == record:
        return  # the server digests the content itself: nothing to remember
    stored[_DIGESTS] = record
    try:
        couch.put(stored)
    except Conflict:
        pass  # someone else updated it meanwhile; the next init records again
