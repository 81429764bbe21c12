"""Directory listings through one gfal2 context, with what each entry is."""

from __future__ import annotations

import errno as E
import stat as _stat
from typing import Any

import gfal2

from GRID_XFER.storage.classify import errno_of, from_gerror, not_a_directory
from GRID_XFER.storage.results import Stat
from GRID_XFER.urls import join, redact


def listdir(ctx: Any, url: str) -> list[str]:
    """Sorted entry names (no '.' or '..'); plugins differ on whether they list those."""
    try:
        names = ctx.listdir(url)
    except gfal2.GError as exc:
        raise not_a_directory(from_gerror(f"listdir {redact(url)}", url, exc), exc) from None
    return sorted(n for n in names if n not in (".", ".."))


def scan(ctx: Any, url: str) -> list[tuple[str, Stat]]:
    """Entries with their stat in one listing (``readpp``), not one stat call per file."""
    out: list[tuple[str, Stat]] = []
    try:
        handle = ctx.opendir(url)
        while True:
            entry, st = handle.readpp()
            if entry is None:
                break
            if entry.d_name not in (".", ".."):
                out.append((entry.d_name, Stat.of(st)))
    except gfal2.GError as exc:
        raise not_a_directory(from_gerror(f"listdir {redact(url)}", url, exc), exc) from None
    return sorted(out)


def scan_local(ctx: Any, url: str) -> list[tuple[str, Stat]]:
    """:func:`scan` for file://: lstat each entry, and follow a link only to describe it.

    readpp would fail the whole listing on one dangling link and hide which entries
    are links; this makes the same system calls (readpp stats each entry too).
    """
    out: list[tuple[str, Stat]] = []
    for name in listdir(ctx, url):
        entry = join(url, name)
        try:
            st = ctx.lstat(entry)
            link = str(ctx.readlink(entry)) if _stat.S_ISLNK(st.st_mode) else None
        except gfal2.GError as exc:
            if errno_of(exc) == E.ENOENT:
                continue  # removed since the listing
            raise from_gerror(f"stat {redact(entry)}", entry, exc) from None
        if link is not None:
            try:
                st = ctx.stat(entry)
            except gfal2.GError:  # dangling, or a loop: the walk says which
                out.append((name, Stat(size=0, is_dir=False, mtime=float(st.st_mtime), link=link)))
                continue
        out.append((name, Stat.of(st, link)))
    return sorted(out)
