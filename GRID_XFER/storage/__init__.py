"""All storage access, through gfal2, behind a small interface.

This package is the only code that imports gfal2, so the rest of GRID_XFER never
sees a ``gfal2.GError``: every failure becomes a :class:`StorageError` with a token
error code, a ``transient`` flag and a one-line message safe for a token or a log
(:mod:`.classify`). :class:`Storage` (:mod:`.core`) is the interface; contexts and
cancellation live in :mod:`.operation`, streamed copies in :mod:`.pipe`, listings in
:mod:`.listing`, link containment in :mod:`.walk`, tape recalls in :mod:`.tape`.
"""

from __future__ import annotations

import os

# XrdCl reads its settings once, when the xrootd plugin is loaded, and by
# default keeps re-trying a refused connection for up to 5 x 120 s before a
# copy fails. A worker should fail fast and let the token pool retry later.
# Values already in the environment win. Set here, before any module of this
# package imports gfal2 (importing a submodule runs this first).
os.environ.setdefault("XRD_CONNECTIONRETRY", "1")
os.environ.setdefault("XRD_CONNECTIONWINDOW", "30")
# A request to a stalled server (default 1800 s) holds a streaming copy's reader or
# writer thread that long after the copy itself has been cancelled or timed out.
os.environ.setdefault("XRD_REQUESTTIMEOUT", "300")

from GRID_XFER.errors import Cancelled, NotContained, StorageError
from GRID_XFER.storage.core import CHUNK_SIZE, STREAM_CHUNK, Storage
from GRID_XFER.storage.results import CopyResult, Stat
from GRID_XFER.storage.walk import MAX_DEPTH
from GRID_XFER.urls import check_plain_url, redact  # re-exported: storage.redact

__all__ = [
    "CHUNK_SIZE",
    "MAX_DEPTH",
    "STREAM_CHUNK",
    "Cancelled",
    "CopyResult",
    "NotContained",
    "Stat",
    "Storage",
    "StorageError",
    "check_plain_url",
    "redact",
]
