"""Temporary copies: the names they get, and removing those a dead worker left.

Every copy goes to ``<final name>.gridxfer-part-<8 hex>`` beside the final name
and is renamed only once verified, so nothing shows up under a final name
unverified; a fresh name per attempt means two attempts never write one file.
"""

from __future__ import annotations

import errno
import re
import uuid
from typing import Any

from GRID_XFER.errors import StorageError
from GRID_XFER.storage import Storage
from GRID_XFER.task import TaskContext
from GRID_XFER.urls import join, redact

PART_MARK = ".gridxfer-part-"  # temporary copies: <final name>.gridxfer-part-<8 hex>


def temporary_name(dst: str) -> str:
    return f"{dst}{PART_MARK}{uuid.uuid4().hex[:8]}"


def remove_stale_parts(
    storage: Storage, token: dict[str, Any], files: list[dict[str, Any]], dst: str, ctx: TaskContext
) -> None:
    """Delete temporary copies an earlier attempt left when its worker died mid-copy.

    A SIGKILLed worker (lost node, batch system hard kill) cannot clean up, and
    nothing else ever would: each retry writes a fresh temporary name, so every
    loss would leave a partial file (possibly hundreds of MB, possibly archived
    to tape) beside the final one. Only after an earlier claim of this token,
    and only names derived from this token's own files, which no other token
    writes. Best effort: a failure here is logged, never fatal.
    """
    claims = sum(1 for h in token.get("history") or [] if h.get("event") == "claimed")
    if claims < 2:
        return
    wanted: dict[str, set[str]] = {}
    for f in files:
        parent, _, base = f["name"].rpartition("/")
        wanted.setdefault(parent, set()).add(base)
    for parent, bases in wanted.items():
        url = join(dst, parent)
        try:
            names = storage.listdir(url)
        except StorageError as err:
            if err.errno not in (errno.ENOENT, errno.ENOTDIR):
                ctx.log.warning(
                    "could not look for stale temporary copies in %s: %s", redact(url), err
                )
            continue
        for name in names:
            base, mark, tail = name.rpartition(PART_MARK)
            if mark and base in bases and re.fullmatch(r"[0-9a-f]{8}", tail):
                try:
                    storage.unlink(join(url, name), missing_ok=True)
                    ctx.log.info("removed %s, left by an earlier attempt", name)
                except StorageError as err:
                    ctx.log.warning("could not remove stale %s: %s", name, err)
