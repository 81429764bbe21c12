"""Where workers find the sandbox: a ``{url, sha256}`` record in the token database.

``upload`` copies the archive through gfal2 and reads it back before recording
it, so a record never names a file that differs from what was built. The record
is the document ``sandbox:<NIGHT>`` (or ``sandbox`` for every night), with
``type: "sandbox"`` so no token view counts it.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from GRID_XFER.errors import (
    Conflict,
    SandboxBuildError,
    SandboxChecksumError,
    SandboxError,
    SandboxUploadError,
    StorageError,
)
from GRID_XFER.sandbox.build import sha256_file
from GRID_XFER.sandbox.extract import as_url, read_sha256
from GRID_XFER.token import check_id_part
from GRID_XFER.urls import check_plain_url, redact

if TYPE_CHECKING:  # storage pulls in gfal2; looking a record up needs none
    from GRID_XFER.couch import Couch
    from GRID_XFER.storage import Storage

log = logging.getLogger(__name__)

DOC_TYPE = "sandbox"


def record_id(night: str | None) -> str:
    """``sandbox:<NIGHT>``, or ``sandbox`` for every night (token ids cannot look like either)."""
    if night is None:
        return DOC_TYPE
    return f"{DOC_TYPE}:{check_id_part(night, 'night')}"


def _check_plain_url(url: str) -> None:
    check_plain_url(url, "the sandbox URL", error=SandboxBuildError)


def lookup(couch: Couch, night: str | None) -> dict[str, Any] | None:
    """The record a worker of ``night`` uses: the night's own, else the default."""
    for doc_id in ([record_id(night)] if night else []) + [record_id(None)]:
        doc = couch.get_or_none(doc_id)
        if doc and doc.get("type") == DOC_TYPE and doc.get("url") and doc.get("sha256"):
            return doc
    return None


def save_record(
    couch: Couch, *, url: str, sha256: str, size: int, night: str | None, name: str
) -> dict[str, Any]:
    """Write the record, retrying a concurrent change of it a few times."""
    _check_plain_url(url)
    doc: dict[str, Any] = {
        "_id": record_id(night),
        "type": DOC_TYPE,
        "token_set": night,
        "url": url,
        "sha256": sha256,
        "size": size,
        "name": name,
        "uploaded": time.time(),
        "uploaded_by": socket.gethostname(),
    }
    for _ in range(3):
        current = couch.get_or_none(doc["_id"])
        if current is not None:
            doc["_rev"] = current["_rev"]
        else:
            doc.pop("_rev", None)
        try:
            couch.put(doc)
            return doc
        except Conflict:
            continue
    raise SandboxError(f"could not record the sandbox in {doc['_id']}: changed concurrently")


def _copy_checked(
    storage: Storage, archive: Path, url: str, digest: str, *, overwrite: bool
) -> None:
    """Put ``archive`` at ``url`` unless it is there already, and read it back."""
    present = storage.exists(url)
    if present and read_sha256(storage, url)[0] == digest:
        log.info("%s already holds this sandbox", redact(url))
        return
    if present and not overwrite:
        raise SandboxBuildError(
            f"{redact(url)} exists with other content; use --overwrite "
            "(running workers may then fetch a half-written file) "
            "or a new name"
        )
    storage.copy(as_url(str(archive)), url, size=archive.stat().st_size, overwrite=overwrite)
    remote, _ = read_sha256(storage, url)
    if remote != digest:
        raise SandboxChecksumError(f"{redact(url)} reads back with SHA-256 {remote}, not {digest}")


def upload(
    storage: Storage,
    couch: Couch,
    archive: Path,
    url: str,
    *,
    night: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Copy ``archive`` to ``url``, check it by reading it back, record it for ``night``."""
    archive = Path(archive)
    if not archive.is_file():
        raise SandboxBuildError(f"no sandbox archive {archive}; run `gridxfer sandbox build` first")
    digest = sha256_file(archive)
    sidecar = Path(f"{archive}.sha256")
    if sidecar.is_file() and sidecar.read_text().split()[:1] != [digest]:
        raise SandboxChecksumError(f"{archive} does not match {sidecar.name}; rebuild it")
    record_id(night)  # a bad night name fails before anything is copied
    url = as_url(url)
    if url.endswith("/"):
        url += archive.name
    _check_plain_url(url)
    try:
        _copy_checked(storage, archive, url, digest, overwrite=overwrite)
    except StorageError as exc:
        raise SandboxUploadError(f"sandbox upload failed: {exc}") from None
    size = archive.stat().st_size
    return save_record(couch, url=url, sha256=digest, size=size, night=night, name=archive.name)
