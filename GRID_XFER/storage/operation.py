"""gfal2 contexts, and how long calls through them are stopped.

gfal2 contexts carry state: a cancelled context stays cancelled. Every long call
(a copy, a checksum, a read) therefore gets a fresh context, tracked so that
:meth:`Contexts.cancel` can stop them all; quick metadata calls share one context
per thread.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import gfal2

from GRID_XFER.errors import Cancelled, Code, StorageError
from GRID_XFER.redact import one_line
from GRID_XFER.storage.classify import errname, from_gerror
from GRID_XFER.storage.protocols import Settings
from GRID_XFER.urls import redact

log = logging.getLogger("GRID_XFER.storage")

T = TypeVar("T")


def new_context(settings: Settings | None = None) -> gfal2.Gfal2Context:
    """A gfal2 context, leaving the calling thread's signal mask as it found it.

    Loading the srm and gridftp plugins (Globus) blocks almost every signal in
    the calling thread, SIGTERM and SIGINT included, and every process started
    from that thread afterwards inherits the mask: a worker would no longer stop
    on SIGTERM, nor a command task it runs. So the mask is put back each time.
    """
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        ctx = gfal2.creat_context()
        if settings is not None:
            settings.apply(ctx)
        return ctx
    except gfal2.GError as exc:  # broken gfal2 installation or configuration
        raise StorageError(
            f"cannot set up gfal2: {exc.message} [{errname(int(exc.code))}]",
            errno=int(exc.code),
            code=Code.CONFIG,
        ) from None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class Operation:
    """A fresh gfal2 context for one long call, and the means to stop it.

    gfal2 ignores a cancel that arrives before the call has entered the library,
    so stopping re-issues ``cancel()`` until the call has returned.
    """

    RECANCEL_INTERVAL = 0.02

    def __init__(self, settings: Settings | None = None) -> None:
        self.ctx = new_context(settings)
        self.cancelled = threading.Event()  # Storage.cancel() asked
        self.expired = threading.Event()  # our timeout ran out
        self.done = threading.Event()
        self._stopping = False

    def stop(self, reason: threading.Event) -> None:
        reason.set()
        if not self._stopping:  # a duplicate stopper thread would be harmless
            self._stopping = True
            threading.Thread(target=self._keep_cancelling, name="gfal2-cancel", daemon=True).start()

    def _keep_cancelling(self) -> None:
        while not self.done.is_set():
            self.ctx.cancel()
            self.done.wait(self.RECANCEL_INTERVAL)


class Contexts:
    """The contexts of one Storage: a shared one per thread, and the operations running."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self._local = threading.local()
        # RLock: cancel() may run in a signal handler that interrupted a holder.
        self._lock = threading.RLock()
        self._active: set[Operation] = set()

    def meta(self) -> gfal2.Gfal2Context:
        """This thread's context for quick metadata calls."""
        ctx: gfal2.Gfal2Context | None = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = self._local.ctx = new_context(self.settings)
        return ctx

    @staticmethod
    def call(op: str, url: str, fn: Callable[..., T], *args: object, label: str | None = None) -> T:
        """``fn(*args)``, a GError raised as StorageError labelled ``op url``."""
        try:
            return fn(*args)
        except gfal2.GError as exc:
            raise from_gerror(label or f"{op} {redact(url)}", url, exc) from None

    @contextmanager
    def operation(self, label: str, url: str) -> Iterator[Operation]:
        """Track a fresh context for cancel(); a GError inside becomes StorageError."""
        op = Operation(self.settings)
        with self._lock:
            self._active.add(op)
        try:
            if op.cancelled.is_set():
                raise Cancelled(f"{label} cancelled before it started", url=url)
            yield op
        except gfal2.GError as exc:
            if op.cancelled.is_set():
                raise Cancelled(
                    f"{label} cancelled: {one_line(str(exc.message))}", url=url
                ) from None
            raise from_gerror(label, url, exc) from None
        finally:
            op.done.set()
            with self._lock:
                self._active.discard(op)

    def cancel(self) -> int:
        """Stop every operation in progress; return how many."""
        with self._lock:
            ops = list(self._active)
        for op in ops:
            op.stop(op.cancelled)
        if ops:
            log.info("cancelling %d storage operation(s)", len(ops))
        return len(ops)
