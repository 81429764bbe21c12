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
import time
from typing import Any

from GRID_XFER.couch import Couch
from GRID_XFER.errors import Code, Conflict, DatabaseError

log = logging.getLogger(__name__)

DDOC = "gridxfer"
MONITOR = "Monitor"
# The design document that carries the status page, and the page's entry point.
STATUS_DDOC = DDOC
STATUS_PAGE = "status.html"
# Where install records the digests of the files it uploaded (see _changed_files).
_DIGESTS = "gridxfer_attachments"
# A design document's write check (tokens/views/<ddoc>/validate_doc_update.js).
VALIDATE = "validate_doc_update.js"
# The fields of a design document that install owns (views: only its own names).
_OWNED = ("language", "validate_doc_update")
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "application/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}


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
        doc: dict[str, Any] = {"_id": f"_design/{ddir.name}", "language": "javascript"}
        for f in sorted(ddir.iterdir(), key=lambda p: p.name):
            if f.name == VALIDATE:
                doc["validate_doc_update"] = _strip_comments(f.read_text())
                continue
            name, _, kind = f.name.removesuffix(".js").rpartition(".")
            if kind not in ("map", "reduce") or not f.name.endswith(".js"):
                continue
            views.setdefault(name, {})[kind] = _strip_comments(f.read_text())
        doc["views"] = views
        docs[ddir.name] = doc
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
    files["codes.json"] = (
        json.dumps(codes, indent=1, sort_keys=True).encode(),
        _CONTENT_TYPES[".json"],
    )
    return files


def _md5(data: bytes) -> str:
    return "md5-" + base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324


def _changed_files(
    current: dict[str, Any] | None, files: dict[str, tuple[bytes, str]]
) -> list[str]:
    """Names of the page files the stored design doc lacks or holds in another version.

    A stored attachment counts as current when the server's digest is the MD5
    of our content (pouchdb-server, CouchDB for identity-stored data), or when
    install recorded that MD5 for it (CouchDB may digest the compressed bytes it
    stores for text types).
    """
    stored = (current or {}).get("_attachments") or {}
    recorded = (current or {}).get(_DIGESTS) or {}
    changed = []
    for name, (data, ctype) in files.items():
        stub, want = stored.get(name), _md5(data)
        entry = recorded.get(name)
        mine: dict[str, Any] = entry if isinstance(entry, dict) else {}
        same = (
            stub is not None
            and stub.get("content_type") == ctype
            and (
                stub.get("digest") == want
                or (mine.get("md5") == want and mine.get("revpos") == stub.get("revpos"))
            )
        )
        if not same:
            changed.append(name)
    return changed


def _wanted(current: dict[str, Any] | None, doc: dict[str, Any]) -> dict[str, Any]:
    """Our design doc merged into the stored one: other fields, and in the shared
    ``Monitor`` the views we do not own, stay; attachments stay as stubs."""
    if current is None:
        return dict(doc)
    merged = {k: v for k, v in current.items() if k not in _OWNED}
    merged.update({k: v for k, v in doc.items() if k != "views"})
    shared = doc["_id"] == f"_design/{MONITOR}"  # PiCaS's too: keep views we do not own
    merged["views"] = {**(current.get("views") or {}), **doc["views"]} if shared else doc["views"]
    return merged


def install(couch: Couch) -> dict[str, str]:
    """Create or update every design doc; returns ``{ddoc: created|updated|unchanged}``.

    One write per design document, attachments inline: on a cluster a second
    write with attachment stubs right after the first can reach a copy that has
    not got the attachments yet, which refuses it (HTTP 412).
    """
    outcome: dict[str, str] = {}
    for name, doc in design_docs().items():
        files = status_files() if name == STATUS_DDOC else {}
        for attempt in range(6):
            current = couch.get_or_none(doc["_id"])
            changed = _changed_files(current, files)
            wanted = _wanted(current, doc)
            if (
                current is not None
                and not changed
                and all(current.get(k) == wanted.get(k) for k in ("views", *_OWNED))
            ):
                outcome[name] = "unchanged"
                break
            if changed:
                attachments = dict(wanted.get("_attachments") or {})
                for fname in changed:
                    data, ctype = files[fname]
                    attachments[fname] = {
                        "content_type": ctype,
                        "data": base64.b64encode(data).decode(),
                    }
                wanted["_attachments"] = attachments
                gen = int(current["_rev"].split("-")[0]) + 1 if current else 1
                record = dict(wanted.get(_DIGESTS) or {})
                record.update({n: {"md5": _md5(files[n][0]), "revpos": gen} for n in changed})
                wanted[_DIGESTS] = record
            try:
                couch.put(wanted)
            except Conflict:
                continue  # another init (or a person) wrote meanwhile: look again
            except DatabaseError as exc:
                if exc.status != 412 or attempt == 5:
                    raise
                time.sleep(0.2 * (attempt + 1))  # a copy still lacks an attachment
                continue
            outcome[name] = "updated" if current is not None else "created"
            log.info("design document %s %s", name, outcome[name])
            break
        else:
            raise Conflict(f"_design/{name} kept changing while init wrote it; run init again")
    return outcome


def secure(couch: Couch, names: list[str], roles: list[str]) -> bool:
    """Let these users and roles read and write tokens (CouchDB's ``_security``
    members); admins stay as they are. True when it changed anything."""
    current = couch.request("GET", "_security").json() or {}
    members = current.get("members") or {}
    wanted = {
        "names": sorted(set(members.get("names") or []) | set(names)),
        "roles": sorted(set(members.get("roles") or []) | set(roles)),
    }
    if members.get("names", []) == wanted["names"] and members.get("roles", []) == wanted["roles"]:
        return False
    current["members"] = wanted
    current.setdefault("admins", {"names": [], "roles": ["_admin"]})
    couch.request("PUT", "_security", body=current)
    return True
