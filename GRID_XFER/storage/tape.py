"""Tape recalls: ask, poll, release, abort; the storage answers per file."""

from __future__ import annotations

import logging

import gfal2

from GRID_XFER.errors import StorageError
from GRID_XFER.redact import one_line
from GRID_XFER.storage.classify import from_gerror
from GRID_XFER.storage.operation import Contexts
from GRID_XFER.urls import redact

log = logging.getLogger("GRID_XFER.storage")


def _file_error(op: str, url: str, exc: object) -> StorageError | None:
    """What one file's slot in a bulk answer means: None (fine) or its error."""
    if exc is None:
        return None
    if isinstance(exc, gfal2.GError):
        return from_gerror(f"{op} {redact(url)}", url, exc)
    return StorageError(f"{op} {redact(url)} failed: {exc}", url=url)


class TapeCalls:
    """The tape half of :class:`Storage`."""

    _ops: Contexts

    def bring_online(
        self, urls: list[str], *, pin: int, timeout: int
    ) -> tuple[str, list[StorageError | None]]:
        """Ask the storage to recall ``urls`` from tape, asynchronously.

        Returns the request token and, per URL, None or the error the storage
        reported at once (a missing file, for example).
        """
        label = f"bring_online {redact(urls[0])} (+{len(urls) - 1})"
        with self._ops.operation(label, urls[0]) as op:
            errors, token = op.ctx.bring_online(list(urls), int(pin), int(timeout), True)
        return str(token or ""), [
            _file_error("bring_online", u, e) for u, e in zip(urls, errors, strict=False)
        ]

    def bring_online_poll(self, urls: list[str], token: str) -> list[StorageError | None]:
        """Per URL: None once online, else the storage's answer (EAGAIN while recalling).

        Storages answer only a few files per call (about 10 over XRootD): callers batch.
        """
        label = f"bring_online_poll {redact(urls[0])} (+{len(urls) - 1})"
        with self._ops.operation(label, urls[0]) as op:
            errors = op.ctx.bring_online_poll(list(urls), token)
        return [_file_error("bring_online_poll", u, e) for u, e in zip(urls, errors, strict=False)]

    def release(self, urls: list[str], token: str = "") -> list[StorageError | None]:
        """Release pins (a tape-backed disk buffer may then evict the disk copies)."""
        out: list[StorageError | None] = []
        for url in urls:
            try:
                self._ops.meta().release(url, token)
                out.append(None)
            except gfal2.GError as exc:
                out.append(from_gerror(f"release {redact(url)}", url, exc))
        return out

    def abort_bring_online(self, urls: list[str], token: str) -> None:
        """Best effort: tell the storage we no longer want these recalls."""
        try:
            self._ops.meta().abort_bring_online(list(urls), token)
        except gfal2.GError as exc:
            log.debug("abort_bring_online %s: %s", redact(urls[0]), one_line(str(exc.message)))
