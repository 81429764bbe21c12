"""The source as it is now, against its manifest, before anything is copied.

An exposure is transferred only if its directory holds exactly the files its
manifest lists (32, 33), read without following a link out of it (34): a late
file or a vanished one makes the token fail with a code saying which, rather than
a partial exposure arriving as if whole.
"""

from __future__ import annotations

from typing import Any

from GRID_XFER.errors import (
    Cancelled,
    Code,
    ManifestError,
    NotContained,
    StorageError,
    TaskError,
)
from GRID_XFER.scan import read_manifest
from GRID_XFER.storage import Stat, Storage
from GRID_XFER.urls import redact


def task_error(err: StorageError, name: str) -> TaskError:
    """A storage failure as the token records it: its code and transience, named by file."""
    if isinstance(err, Cancelled):
        return TaskError(Code.INTERRUPTED, f"{name}: cancelled", file=name)
    return TaskError(err.code, f"{name}: {err}", file=name, transient=err.transient)


def few(names: list[str], limit: int = 5) -> str:
    """A handful of names for a one-line message, and how many more there are."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_source(
    storage: Storage,
    src: str,
    exposure: str,
    manifest: dict[str, Any],
    files: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], tuple[str, str]]:
    """The source as it is now, against its manifest: 20, 31, 32, 33 or 34, or the file list.

    The walk is contained (docs/transfer.md, links at the source): a link that
    appeared since `tokens create` and leaves the exposure is refused here, before
    anything is read through it.
    """
    present = _walk_source(storage, src, exposure)
    algo = manifest.get("algo", "sha256")
    try:
        mname, expected, digest = read_manifest(storage, src, exposure, algo)
    except ManifestError as err:
        raise TaskError(
            Code.MANIFEST_MISSING, str(err), file=manifest.get("name"), transient=False
        ) from None
    except StorageError as err:
        raise task_error(err, manifest.get("name", "manifest")) from None
    compare(present, expected, mname)
    before = {f["name"]: f for f in files}
    out = []
    for name in sorted(expected):
        entry: dict[str, Any] = {
            "name": name,
            "size": present[name].size,
            "checksums": {algo: expected[name]},
        }
        old = before.get(name, {})
        if old.get("checksums") == entry["checksums"] and "result" in old:
            entry["result"] = old["result"]
        out.append(entry)
    # Same shape as the scan's entry (FileEntry dumps an empty ``checksums``), so
    # the next `tokens create` finds this token's work unchanged, not "different".
    out.append({"name": mname, "size": present[mname].size, "checksums": {}, "role": "manifest"})
    return out, (mname, digest)


def _walk_source(storage: Storage, src: str, exposure: str) -> dict[str, Stat]:
    """Every file under the exposure directory, by relative name (20, 34 or transient)."""
    try:
        return storage.walk(src)
    except NotContained as err:
        raise TaskError(err.code, str(err), file=err.path, transient=False) from None
    except StorageError as err:
        if err.code == Code.SOURCE_MISSING:
            raise TaskError(
                Code.SOURCE_MISSING,
                f"exposure directory {redact(src)} not found",
                transient=False,
            ) from None
        raise task_error(err, exposure) from None


def compare(present: dict[str, Stat], expected: dict[str, str], mname: str) -> None:
    """The source holds exactly the manifest's files (32, 33)."""
    missing = sorted(n for n in expected if n not in present)
    if missing:
        raise TaskError(
            Code.MISSING_AT_SOURCE,
            f"{len(missing)} file(s) listed in {mname} not at the source: {few(missing)}",
            file=missing[0],
            transient=False,
        )
    extra = sorted(n for n in present if n not in expected and n != mname)
    if extra:
        raise TaskError(
            Code.NOT_IN_MANIFEST,
            f"{len(extra)} file(s) at the source not in {mname}: {few(extra)}",
            file=extra[0],
            transient=False,
        )
