"""A streamed copy: reader and writer threads, and the caller's thread observing between.

The caller's thread never blocks inside gfal2, so a cancel and the timeout answer
at once even when a server stalls; a reader or writer stuck in a request is left
to end with it.
"""

from __future__ import annotations

import errno as E
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import gfal2

from GRID_XFER.errors import Cancelled, StorageError
from GRID_XFER.storage.classify import errno_of, from_gerror, timed_out
from GRID_XFER.storage.operation import Operation
from GRID_XFER.storage.protocols import write_limit
from GRID_XFER.urls import parent, redact

DIR_MODE = 0o755


class Pipe:
    """The reader and writer threads of :meth:`Storage.stream` and the queues between them."""

    DEPTH = 4  # chunks in flight per queue: enough to keep both ends busy
    TICK = 0.2  # how often a waiting side looks at cancel and the deadline

    def __init__(self, src: str, dst: str, label: str, chunk: int) -> None:
        self.src, self.dst, self.label, self.chunk = src, dst, label, chunk
        self.inbox: queue.Queue[bytes | None] = queue.Queue(self.DEPTH)
        self.outbox: queue.Queue[bytes | None] = queue.Queue(self.DEPTH)
        self.stop = threading.Event()
        self.written = threading.Event()
        self.error: StorageError | None = None
        self.bytes = 0

    def start(self, op: Operation) -> None:
        for target, name in ((self._read, "stream-read"), (self._write, "stream-write")):
            threading.Thread(target=target, args=(op,), name=name, daemon=True).start()

    def abandon(self) -> None:
        self.stop.set()

    def _fail(self, err: StorageError) -> None:
        if self.error is None:
            self.error = err
        self.stop.set()

    def _put(self, box: queue.Queue[bytes | None], item: bytes | None) -> bool:
        while not self.stop.is_set():
            try:
                box.put(item, timeout=self.TICK)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, op: Operation) -> None:
        try:
            handle = op.ctx.open(self.src, "r")
            while not self.stop.is_set():
                chunk = handle.read_bytes(self.chunk)
                if not self._put(self.inbox, chunk or None) or not chunk:
                    return
        except gfal2.GError as exc:
            self._fail(from_gerror(f"read {redact(self.src)}", self.src, exc))

    def _open_dst(self, op: Operation) -> Any:
        try:
            return op.ctx.open(self.dst, "w")
        except gfal2.GError as exc:
            if errno_of(exc) != E.ENOENT:
                raise
        op.ctx.mkdir_rec(parent(self.dst), DIR_MODE)  # file:// does not create parents
        return op.ctx.open(self.dst, "w")

    def _write(self, op: Operation) -> None:
        limit = write_limit(self.dst)
        try:
            handle = self._open_dst(op)
            while True:
                try:
                    chunk = self.outbox.get(timeout=self.TICK)
                except queue.Empty:
                    if self.stop.is_set():
                        return
                    continue
                if chunk is None:
                    del handle  # closes: the file plugin flushes here
                    self.written.set()
                    return
                if limit is None:
                    handle.write(chunk)
                    continue
                view = memoryview(chunk)  # sftp stores a larger write only in part
                for at in range(0, len(chunk), limit):
                    handle.write(bytes(view[at : at + limit]))
        except gfal2.GError as exc:
            self._fail(from_gerror(f"write {redact(self.dst)}", self.dst, exc, writing=True))

    def _check(self, op: Operation, deadline: float, timeout: float) -> None:
        if op.cancelled.is_set():
            raise Cancelled(f"{self.label} cancelled", url=self.src)
        if self.error is not None:
            raise self.error
        if time.monotonic() > deadline:
            raise timed_out(self.label, self.src, timeout)

    def run(
        self, observe: Callable[[bytes], None], op: Operation, deadline: float, timeout: float
    ) -> None:
        """Pass every chunk through ``observe`` to the writer; return once it is all written."""
        while True:
            self._check(op, deadline, timeout)
            try:
                chunk = self.inbox.get(timeout=self.TICK)
            except queue.Empty:
                continue
            if chunk is not None:
                observe(chunk)
                self.bytes += len(chunk)
            while True:
                self._check(op, deadline, timeout)
                try:
                    self.outbox.put(chunk, timeout=self.TICK)
                    break
                except queue.Full:
                    continue
            if chunk is None:
                break
        while not self.written.wait(self.TICK):
            self._check(op, deadline, timeout)
