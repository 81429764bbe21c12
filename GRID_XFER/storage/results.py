"""What storage calls return: plain values, no gfal2 types."""

from __future__ import annotations

import stat as _stat
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stat:
    """What a listing says of an entry, a symbolic link's target included (size, type).

    ``link`` is the link's own text when the entry is a symbolic link (file:// only:
    XRootD resolves links on the server and never shows them); a link that leads
    nowhere or loops is listed with ``is_dir`` False and size 0.
    """

    size: int
    is_dir: bool
    mtime: float
    link: str | None = None

    @classmethod
    def of(cls, st: Any, link: str | None = None) -> Stat:
        """From a gfal2 stat result (``st_size``, ``st_mode``, ``st_mtime``)."""
        return cls(
            size=int(st.st_size),
            is_dir=_stat.S_ISDIR(st.st_mode),
            mtime=float(st.st_mtime),
            link=link,
        )


@dataclass(frozen=True)
class CopyResult:
    bytes: int
    seconds: float
