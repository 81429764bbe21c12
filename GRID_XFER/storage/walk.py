"""Containment: what a walk of a source directory may show, and what it must refuse.

Over file:// a symbolic link is followed only if it leads inside the directory
walked and not back into a directory it is in; one that leaves, dangles or loops
is refused (34). Over root:// the server resolves links and shows none, so only a
directory nested deeper than :data:`MAX_DEPTH` (a loop, seen from outside) can be.
"""

from __future__ import annotations

import errno as E
import os
from collections.abc import Callable

from GRID_XFER.errors import Code, NotContained, StorageError
from GRID_XFER.storage.results import Stat
from GRID_XFER.urls import join, redact

# Deeper than this inside one exposure is taken for a link loop. Over file:// loops are
# found exactly (below); over root:// the server follows links and a loop only shows as
# ever deeper directories (XRootD gives up at the kernel's 40 links).
MAX_DEPTH = 32

Scandir = Callable[[str], list[tuple[str, Stat]]]


def local_path(url: str) -> str | None:
    """The path gfal2's file plugin uses for a file:// URL (taken as is, not decoded)."""
    return url[len("file://") :] if url.startswith("file://") else None


def _real_within(real_root: str, path: str) -> str | None:
    """The real path of ``path`` if it lies inside ``real_root``, else None.

    Raises OSError when ``path`` cannot be resolved (dangling, a loop, unreadable).
    """
    target = os.path.realpath(path, strict=True)
    return target if os.path.commonpath([real_root, target]) == real_root else None


def follow(
    real_dir: str, name: str, st: Stat, real_root: str, chain: tuple[str, ...]
) -> tuple[str | None, str]:
    """(real path, '') of a link that stays inside ``real_root``; else (None, why not).

    ``chain`` holds the real directories from the root down to ``real_dir``: a link
    back to one of them would make the walk go round for ever.
    """
    try:
        target = _real_within(real_root, os.path.join(real_dir, name))
    except OSError as exc:
        if exc.errno == E.ELOOP:
            return None, "link loop (too many levels of links)"
        if exc.errno in (E.ENOENT, E.ENOTDIR):
            return None, "link points to nothing (dangling)"
        return None, f"link cannot be resolved: {exc.strerror}"
    if target is None:
        return None, "link leaves the exposure directory"
    if st.is_dir and target in chain:
        return None, "link loop (leads back to a directory it is in)"
    return target, ""


def check_contained(base: str, rel: str) -> None:
    """NotContained (34) if ``base/rel`` is, or passes through, a link leading outside
    ``base``, nowhere, or round in a loop. file:// only (XRootD resolves links itself).

    For files named without a listing (``--from`` entries): the walk does this for
    exposures with a manifest.
    """
    root = local_path(base)
    if root is None:
        return
    try:
        inside = _real_within(os.path.realpath(root, strict=True), os.path.join(root, rel))
    except OSError as exc:
        if exc.errno == E.ENOENT and not os.path.lexists(os.path.join(root, rel)):
            return  # simply missing: the copy says so (20)
        raise NotContained(
            f"{rel} in {redact(base)}: link cannot be followed ({exc.strerror})",
            url=base,
            path=rel,
        ) from None
    if inside is None:
        raise NotContained(
            f"{rel} in {redact(base)}: link leaves the source directory", url=base, path=rel
        )


def _real_root(url: str, root: str) -> str:
    """Where a file:// walk's root really is (it may itself be a link)."""
    try:
        return os.path.realpath(root, strict=True)
    except OSError as exc:  # removed (or made unreadable) since the listing
        raise StorageError(
            f"walk {redact(url)} failed: {exc.strerror}",
            url=url,
            errno=exc.errno or 0,
            code=Code.SOURCE_MISSING if exc.errno == E.ENOENT else Code.TRANSFER_FAILED,
        ) from None


def walk_tree(scandir: Scandir, url: str, refused: dict[str, str] | None = None) -> dict[str, Stat]:
    """Every file under ``url`` (recursively), by path relative to it; see Storage.walk."""
    root = local_path(url)
    real_root: str | None = None
    files: dict[str, Stat] = {}
    # (relative path, its real path on a local disk, real directories down to it)
    pending: list[tuple[str, str | None, tuple[str, ...]]] = [("", None, ())]

    def refuse(path: str, st: Stat, why: str) -> None:
        shown = f"{path} -> {st.link}" if st.link is not None else path
        if refused is None:
            raise NotContained(f"{shown} in {redact(url)}: {why}", url=url, path=path)
        refused[path] = f"{shown}: {why}"

    while pending:
        rel, real, chain = pending.pop()
        entries = scandir(join(url, rel))
        if root is not None and real_root is None:
            real_root = real = _real_root(url, root)
            chain = (real_root,)
        for name, st in entries:
            path = f"{rel}/{name}" if rel else name
            inside = os.path.join(real, name) if real is not None else None
            if st.link is not None and real_root is not None and real is not None:
                inside, why = follow(real, name, st, real_root, chain)
                if why:
                    refuse(path, st, why)
                    continue
            if not st.is_dir:
                files[path] = st
            elif path.count("/") + 1 > MAX_DEPTH:
                refuse(path, st, f"more than {MAX_DEPTH} directory levels deep (a link loop?)")
            else:
                pending.append((path, inside, (*chain, inside) if inside else chain))
    return files
