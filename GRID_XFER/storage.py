"""All storage access, through gfal2, behind a small interface.

This is the only module that imports gfal2. It exists so the rest of GRID_XFER
never sees a ``gfal2.GError``: those carry a bare errno (sometimes an XRootD
protocol code instead) and a free-text message that can embed URLs with
credentials. Here every failure becomes a :class:`StorageError` with a token
error code, a ``transient`` flag that decides retry-with-backoff versus error,
and a one-line message that is safe to store in a token or a log.

gfal2 contexts carry state: a cancelled context stays cancelled. Every transfer
(``copy``, ``checksum``, ``open_read``) therefore gets a fresh context, tracked
so :meth:`Storage.cancel` can stop them all; quick metadata calls share one
context per thread.
"""

from __future__ import annotations

import errno as E
import logging
import math
import os
import queue
import re
import stat as _stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

# XrdCl reads its settings once, when the xrootd plugin is loaded, and by
# default keeps re-trying a refused connection for up to 5 x 120 s before a
# copy fails. A worker should fail fast and let the token pool retry later.
# Values already in the environment win.
os.environ.setdefault("XRD_CONNECTIONRETRY", "1")
os.environ.setdefault("XRD_CONNECTIONWINDOW", "30")
# A request to a stalled server (default 1800 s) holds a streaming copy's reader or
# writer thread that long after the copy itself has been cancelled or timed out.
os.environ.setdefault("XRD_REQUESTTIMEOUT", "300")

import gfal2  # after the XrdCl settings above

from GRID_XFER.errors import Cancelled, Code, NotContained, StorageError
from GRID_XFER.urls import check_plain_url, join, redact  # re-exported: storage.redact

log = logging.getLogger(__name__)

__all__ = [
    "Cancelled",
    "CopyResult",
    "NotContained",
    "Stat",
    "Storage",
    "StorageError",
    "check_plain_url",
    "redact",
]

T = TypeVar("T")

CHUNK_SIZE = 4 * 1024 * 1024
STREAM_CHUNK = 4 * 1024 * 1024  # measured: 4 MiB streams faster than 1 or 8 to XRootD
_DIR_MODE = 0o755


def _one_line(text: str) -> str:
    # gfal2/XrdCl messages carry NULs (raw and as literal "\x00") and newlines.
    text = text.replace("\\x00", " ").replace("\x00", " ")
    return " ".join(text.split())


# --------------------------------------------------------------------------- errors


# The xrootd plugin passes some XRootD protocol codes (kXR_*, 3000..) through
# as if they were errnos; translate them as XProtocol.hh's toErrno() does.
_XRD_ERRNO = {
    3000: E.EINVAL,
    3001: E.EINVAL,
    3002: E.ENAMETOOLONG,
    3003: E.EDEADLK,
    3004: E.EBADF,
    3005: E.ENODEV,
    3006: E.EBADRQC,
    3007: E.EIO,
    3008: E.ENOMEM,
    3009: E.ENOSPC,
    3010: E.EACCES,
    3011: E.ENOENT,
    3012: E.EFAULT,
    3013: E.ENOTSUP,
    3014: E.EHOSTUNREACH,
    3015: E.ENOTBLK,
    3016: E.EISDIR,
    3017: E.ECANCELED,
    3018: E.EEXIST,
    3019: E.EDOM,
    3020: E.EINPROGRESS,
    3021: E.EDQUOT,
    3022: E.EILSEQ,
    3023: E.ERANGE,
    3024: E.EUSERS,
    3025: E.EROFS,
    3026: E.EINVAL,
    3027: E.ENODATA,
    3028: E.EPROTOTYPE,
    3029: E.EADDRNOTAVAIL,
    3030: E.EACCES,
    3031: E.EIDRM,
    3032: E.ENOTTY,
    3033: E.ETOOMANYREFS,
    3034: E.ETIMEDOUT,
}

_TRANSIENT = frozenset(
    {
        E.ECONNREFUSED,
        E.ECONNRESET,
        E.ECONNABORTED,
        E.EAGAIN,
        E.EHOSTUNREACH,
        E.EHOSTDOWN,
        E.ENETUNREACH,
        E.ENETDOWN,
        E.ECOMM,
        E.EIO,
        E.EBUSY,
        E.EUSERS,
    }
)
_NO_SPACE = frozenset({E.ENOSPC, E.EDQUOT})
_UNSUPPORTED = frozenset({E.ENOSYS, E.ENOTSUP, E.EOPNOTSUPP, E.EPROTONOSUPPORT})
_NO_XATTR = frozenset({E.ENODATA, E.ENOTSUP, E.EOPNOTSUPP, E.ENOSYS})

_CHECKSUM_MISMATCH = re.compile(r"checksum (?:mismatch|error)|do not match", re.I)
# XrdCl ends copy errors with "(source)" / "(destination)"; gfal2's local copy
# says "Could not open destination", "DESTINATION CHECKSUM MISMATCH", ...
_SIDE_SUFFIX = re.compile(r"\((source|destination)\)\s*$")
_DEST_WORD = re.compile(r"\b(?:destination|target)\b", re.I)


def _errno_of(exc: gfal2.GError) -> int:
    code = int(exc.code)
    return _XRD_ERRNO.get(code, code)


def _errname(errno: int) -> str:
    return E.errorcode.get(errno, str(errno))


def _side(message: str) -> str | None:
    """Which end of a copy an error message is about, if it says."""
    suffix = _SIDE_SUFFIX.search(message)
    if suffix:
        return suffix.group(1)
    return "destination" if _DEST_WORD.search(message) else None


def _classify(errno: int, message: str, *, copy: bool = False) -> tuple[Code, bool]:
    """(code, transient) for a failed gfal2 call."""
    side = _side(message) if copy else None
    if copy and _CHECKSUM_MISMATCH.search(message):
        if _SIDE_SUFFIX.search(message) and errno in (E.EILSEQ, E.EDOM):
            # XrdCl says "CheckSum error: (source)" when that end cannot compute
            # the algorithm at all; a real mismatch names no side.
            return Code.CONFIG, False
        return Code.CHECKSUM_MISMATCH, False
    if errno in _UNSUPPORTED:
        return Code.CONFIG, False
    if errno == E.ETIMEDOUT:
        return Code.TRANSFER_TIMEOUT, True
    if errno in _NO_SPACE:
        return Code.DEST_WRITE_FAILED, True
    if errno in _TRANSIENT:
        return Code.TRANSFER_FAILED, True
    if side == "destination" and errno in (
        E.ENOENT,
        E.ENOTDIR,
        E.EACCES,
        E.EPERM,
        E.EEXIST,
        E.EROFS,
        E.EISDIR,
    ):
        return Code.DEST_WRITE_FAILED, False
    if errno == E.ENOENT:
        return Code.SOURCE_MISSING, False
    if errno == E.EEXIST:
        return Code.DEST_WRITE_FAILED, False
    return Code.TRANSFER_FAILED, False


def _write_error(label: str, url: str, exc: gfal2.GError) -> StorageError:
    """A failure opening or writing the destination of a streamed copy.

    The side is known here, so a destination that cannot be written (no such
    directory, permission, read-only, a file where a directory should be) is
    40 whatever the protocol says, and only connection trouble counts as 21.
    """
    errno = _errno_of(exc)
    reason = _one_line(str(exc.message))
    message = f"{label} failed: {reason} [{_errname(errno)}]"
    if errno == E.ECANCELED:
        return Cancelled(message, url=url, errno=errno)
    code, transient = _classify(errno, reason)
    if code in (Code.TRANSFER_FAILED, Code.SOURCE_MISSING) and errno not in _TRANSIENT:
        code = Code.DEST_WRITE_FAILED
    return StorageError(message, url=url, errno=errno, transient=transient, code=code)


def _from_gerror(
    label: str, url: str, exc: gfal2.GError, *, dst: str | None = None
) -> StorageError:
    """StorageError for a failed call described by ``label`` ("stat <url>");
    ``dst`` marks a copy, whose errors may concern the destination instead."""
    errno = _errno_of(exc)
    reason = _one_line(str(exc.message))
    message = f"{label} failed: {reason} [{_errname(errno)}]"
    if dst is not None and _side(reason) == "destination":
        url = dst
    if errno == E.ECANCELED:
        return Cancelled(message, url=url, errno=errno)
    code, transient = _classify(errno, reason, copy=dst is not None)
    if code is Code.CONFIG and dst is not None:
        message = (
            f"{label} failed: not supported by the storage (checksum type or copy mode): "
            f"{reason} [{_errname(errno)}]"
        )
    return StorageError(message, url=url, errno=errno, transient=transient, code=code)


# --------------------------------------------------------------------------- results


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


@dataclass(frozen=True)
class CopyResult:
    bytes: int
    seconds: float


# --------------------------------------------------------------------------- containment

# Deeper than this inside one exposure is taken for a link loop. Over file:// loops are
# found exactly (below); over root:// the server follows links and a loop only shows as
# ever deeper directories (XRootD gives up at the kernel's 40 links).
MAX_DEPTH = 32


def _local_path(url: str) -> str | None:
    """The path gfal2's file plugin uses for a file:// URL (taken as is, not decoded)."""
    return url[len("file://") :] if url.startswith("file://") else None


def _follow(
    real_dir: str, name: str, st: Stat, real_root: str, chain: tuple[str, ...]
) -> tuple[str | None, str]:
    """(real path, '') of a link that stays inside ``real_root``; else (None, why not).

    ``chain`` holds the real directories from the root down to ``real_dir``: a link
    back to one of them would make the walk go round for ever.
    """
    try:
        target = os.path.realpath(os.path.join(real_dir, name), strict=True)
    except OSError as exc:
        if exc.errno == E.ELOOP:
            return None, "link loop (too many levels of links)"
        if exc.errno in (E.ENOENT, E.ENOTDIR):
            return None, "link points to nothing (dangling)"
        return None, f"link cannot be resolved: {exc.strerror}"
    if os.path.commonpath([real_root, target]) != real_root:
        return None, "link leaves the exposure directory"
    if st.is_dir and target in chain:
        return None, "link loop (leads back to a directory it is in)"
    return target, ""


# --------------------------------------------------------------------------- storage


def _new_context() -> gfal2.Gfal2Context:
    try:
        return gfal2.creat_context()
    except gfal2.GError as exc:  # broken gfal2 installation or configuration
        raise StorageError(
            f"cannot set up gfal2: {exc.message} [{_errname(int(exc.code))}]",
            errno=int(exc.code),
            code=Code.CONFIG,
        ) from None


class _Operation:
    """A fresh gfal2 context for one long call, and the means to stop it.

    gfal2 ignores a cancel that arrives before the call has entered the library,
    so stopping re-issues ``cancel()`` until the call has returned.
    """

    RECANCEL_INTERVAL = 0.02

    def __init__(self) -> None:
        self.ctx = _new_context()
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


class _Pipe:
    """The reader and writer threads of :meth:`Storage.stream` and the queues between them."""

    DEPTH = 4  # chunks in flight per queue: enough to keep both ends busy
    TICK = 0.2  # how often a waiting side looks at cancel and the deadline

    def __init__(self, storage: Storage, src: str, dst: str, label: str, chunk: int) -> None:
        self.storage, self.src, self.dst, self.label, self.chunk = storage, src, dst, label, chunk
        self.inbox: queue.Queue[bytes | None] = queue.Queue(self.DEPTH)
        self.outbox: queue.Queue[bytes | None] = queue.Queue(self.DEPTH)
        self.stop = threading.Event()
        self.written = threading.Event()
        self.error: StorageError | None = None
        self.bytes = 0

    def start(self, op: _Operation) -> None:
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

    def _read(self, op: _Operation) -> None:
        try:
            handle = op.ctx.open(self.src, "r")
            while not self.stop.is_set():
                chunk = handle.read_bytes(self.chunk)
                if not self._put(self.inbox, chunk or None) or not chunk:
                    return
        except gfal2.GError as exc:
            self._fail(_from_gerror(f"read {redact(self.src)}", self.src, exc))

    def _write(self, op: _Operation) -> None:
        label = f"write {redact(self.dst)}"
        try:
            try:
                handle = op.ctx.open(self.dst, "w")
            except gfal2.GError as exc:
                if _errno_of(exc) != E.ENOENT:
                    raise
                parent = self.dst.rstrip("/").rsplit("/", 1)[0]
                op.ctx.mkdir_rec(parent, _DIR_MODE)  # file:// does not create parents
                handle = op.ctx.open(self.dst, "w")
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
                handle.write(chunk)
        except gfal2.GError as exc:
            self._fail(_write_error(label, self.dst, exc))

    def _check(self, op: _Operation, deadline: float, timeout: float) -> None:
        if op.cancelled.is_set():
            raise Cancelled(f"{self.label} cancelled", url=self.src)
        if self.error is not None:
            raise self.error
        if time.monotonic() > deadline:
            raise StorageError(
                f"{self.label} failed: not done within {timeout:.0f} s [ETIMEDOUT]",
                url=self.src,
                errno=E.ETIMEDOUT,
                transient=True,
                code=Code.TRANSFER_TIMEOUT,
            )

    def run(
        self, observe: Callable[[bytes], None], op: _Operation, deadline: float, timeout: float
    ) -> None:
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


class Storage:
    """gfal2 operations with token-ready errors; safe to share between a few threads.

    Copies get ``timeout = base_timeout + size / min_rate`` seconds (bytes per
    second), enforced here as well as handed to gfal2, because not every plugin
    honours gfal2's own transfer timeout.
    """

    def __init__(self, *, base_timeout: float = 60.0, min_rate: float = 1_000_000.0) -> None:
        if base_timeout <= 0 or min_rate <= 0:
            raise ValueError("base_timeout and min_rate must be positive")
        self.base_timeout = base_timeout
        self.min_rate = min_rate
        self._local = threading.local()
        # RLock: cancel() may run in a signal handler that interrupted a holder.
        self._lock = threading.RLock()
        self._active: set[_Operation] = set()

    # ----------------------------------------------------------------- plumbing

    def _meta(self) -> gfal2.Gfal2Context:
        ctx: gfal2.Gfal2Context | None = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = self._local.ctx = _new_context()
        return ctx

    @staticmethod
    def _call(
        op: str, url: str, fn: Callable[..., T], *args: object, label: str | None = None
    ) -> T:
        try:
            return fn(*args)
        except gfal2.GError as exc:
            raise _from_gerror(label or f"{op} {redact(url)}", url, exc) from None

    @contextmanager
    def _operation(self, label: str, url: str) -> Iterator[_Operation]:
        """Track a fresh context for cancel(); a GError inside becomes StorageError."""
        op = _Operation()
        with self._lock:
            self._active.add(op)
        try:
            if op.cancelled.is_set():
                raise Cancelled(f"{label} cancelled before it started", url=url)
            yield op
        except gfal2.GError as exc:
            if op.cancelled.is_set():
                raise Cancelled(
                    f"{label} cancelled: {_one_line(str(exc.message))}", url=url
                ) from None
            raise _from_gerror(label, url, exc) from None
        finally:
            op.done.set()
            with self._lock:
                self._active.discard(op)

    def cancel(self) -> int:
        """Stop every copy, checksum and open_read in progress; return how many.

        Callable from any thread or a signal handler. Each affected call raises
        :class:`Cancelled`; later calls on this Storage work normally. Python
        runs signal handlers in the main thread, between bytecodes: transfers
        must run in other threads for a handler to get to interrupt them.
        """
        with self._lock:
            ops = list(self._active)
        for op in ops:
            op.stop(op.cancelled)
        if ops:
            log.info("cancelling %d storage operation(s)", len(ops))
        return len(ops)

    # ----------------------------------------------------------------- metadata

    def stat(self, url: str) -> Stat:
        st = self._call("stat", url, self._meta().stat, url)
        return Stat(
            size=int(st.st_size), is_dir=_stat.S_ISDIR(st.st_mode), mtime=float(st.st_mtime)
        )

    def exists(self, url: str) -> bool:
        try:
            self.stat(url)
        except StorageError as err:
            if err.errno in (E.ENOENT, E.ENOTDIR):  # ENOTDIR: a file where a directory would be
                return False
            raise
        return True

    def listdir(self, url: str) -> list[str]:
        """Sorted entry names (no '.' or '..'); plugins differ on whether they list those."""
        try:
            names = self._meta().listdir(url)
        except gfal2.GError as exc:
            err = _from_gerror(f"listdir {redact(url)}", url, exc)
            if "not a directory" in str(exc.message).lower():
                err.errno = E.ENOTDIR  # xrootd reports EILSEQ here
            raise err from None
        return sorted(n for n in names if n not in (".", ".."))

    def scandir(self, url: str) -> list[tuple[str, Stat]]:
        """Entries with their stat in one listing (``readpp``), not one stat call per file.

        file:// is listed entry by entry instead (the same system calls: readpp stats
        each entry too), because readpp fails the whole listing on one dangling link
        and hides which entries are links; there ``Stat.link`` tells.
        """
        if _local_path(url) is not None:
            return self._scandir_local(url)
        label = f"listdir {redact(url)}"
        out: list[tuple[str, Stat]] = []
        try:
            handle = self._meta().opendir(url)
            while True:
                entry, st = handle.readpp()
                if entry is None:
                    break
                if entry.d_name in (".", ".."):
                    continue
                out.append(
                    (
                        entry.d_name,
                        Stat(
                            size=int(st.st_size),
                            is_dir=_stat.S_ISDIR(st.st_mode),
                            mtime=float(st.st_mtime),
                        ),
                    )
                )
        except gfal2.GError as exc:
            err = _from_gerror(label, url, exc)
            if "not a directory" in str(exc.message).lower():
                err.errno = E.ENOTDIR
            raise err from None
        return sorted(out)

    def _scandir_local(self, url: str) -> list[tuple[str, Stat]]:
        """scandir for file://: lstat each entry, and follow a link only to describe it."""
        ctx = self._meta()
        out: list[tuple[str, Stat]] = []
        for name in self.listdir(url):
            entry = join(url, name)
            try:
                st = ctx.lstat(entry)
                link = str(ctx.readlink(entry)) if _stat.S_ISLNK(st.st_mode) else None
            except gfal2.GError as exc:
                if _errno_of(exc) == E.ENOENT:
                    continue  # removed since the listing
                raise _from_gerror(f"stat {redact(entry)}", entry, exc) from None
            if link is not None:
                try:
                    st = ctx.stat(entry)
                except gfal2.GError:  # dangling, or a loop: the walk says which
                    out.append(
                        (name, Stat(size=0, is_dir=False, mtime=float(st.st_mtime), link=link))
                    )
                    continue
            out.append(
                (
                    name,
                    Stat(
                        size=int(st.st_size),
                        is_dir=_stat.S_ISDIR(st.st_mode),
                        mtime=float(st.st_mtime),
                        link=link,
                    ),
                )
            )
        return sorted(out)

    def walk(self, url: str, *, refused: dict[str, str] | None = None) -> dict[str, Stat]:
        """Every file under ``url`` (recursively), by path relative to it; nothing outside it.

        Over file:// every symbolic link is resolved (``os.path.realpath``) and
        followed only if it leads inside ``url``'s real path and not back into a
        directory it is in; a link that leaves, dangles or loops is refused. ``url``
        itself may be a link (a night spread over disks): containment is measured from
        where it leads. Over root:// the server resolves links and shows none, so only
        a directory more than :data:`MAX_DEPTH` levels deep (a loop) can be refused.

        A refused entry raises :class:`NotContained` (34) naming it; with ``refused``
        given, it is recorded there (relative path -> why) instead and the walk goes
        on without it, so one bad link does not hide the rest of the listing.
        """
        root = _local_path(url)
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
            entries = self.scandir(join(url, rel))
            if root is not None and real_root is None:
                try:
                    real_root = real = os.path.realpath(root, strict=True)
                except OSError as exc:  # removed (or made unreadable) since the listing
                    raise StorageError(
                        f"walk {redact(url)} failed: {exc.strerror}",
                        url=url,
                        errno=exc.errno or 0,
                        code=Code.SOURCE_MISSING if exc.errno == E.ENOENT else Code.TRANSFER_FAILED,
                    ) from None
                chain = (real_root,)
            for name, st in entries:
                path = f"{rel}/{name}" if rel else name
                inside = os.path.join(real, name) if real is not None else None
                if st.link is not None and real_root is not None and real is not None:
                    inside, why = _follow(real, name, st, real_root, chain)
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

    def check_contained(self, base: str, rel: str) -> None:
        """NotContained (34) if ``base/rel`` is, or passes through, a link leading outside
        ``base``, nowhere, or round in a loop. file:// only (XRootD resolves links itself).

        For files named without a listing (``--from`` entries): the walk does this for
        exposures with a manifest.
        """
        root = _local_path(base)
        if root is None:
            return
        try:
            real_root = os.path.realpath(root, strict=True)
            target = os.path.realpath(os.path.join(root, rel), strict=True)
        except OSError as exc:
            if exc.errno == E.ENOENT and not os.path.lexists(os.path.join(root, rel)):
                return  # simply missing: the copy says so (20)
            raise NotContained(
                f"{rel} in {redact(base)}: link cannot be followed ({exc.strerror})",
                url=base,
                path=rel,
            ) from None
        if os.path.commonpath([real_root, target]) != real_root:
            raise NotContained(
                f"{rel} in {redact(base)}: link leaves the source directory", url=base, path=rel
            )

    def read_text(self, url: str, limit: int = 64 * 1024 * 1024) -> str:
        """A small text file (a manifest), UTF-8; refuses anything over ``limit`` bytes."""
        data = bytearray()
        for chunk in self.open_read(url, 1024 * 1024):
            data += chunk
            if len(data) > limit:
                raise StorageError(
                    f"read {redact(url)}: larger than {limit} bytes",
                    url=url,
                    errno=E.EFBIG,
                    code=Code.MANIFEST_MISSING,
                )
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StorageError(
                f"read {redact(url)}: not UTF-8 text (byte {exc.start})",
                url=url,
                errno=E.EILSEQ,
                code=Code.MANIFEST_MISSING,
            ) from None

    def mkdir(self, url: str, *, parents: bool = True) -> None:
        """Create a directory; an existing directory is fine, an existing file is not."""
        ctx = self._meta()
        if parents:
            # mkdir_rec reports success when url is an existing *file* (file and xrootd plugins).
            self._call("mkdir", url, ctx.mkdir_rec, url, _DIR_MODE)
        else:
            try:
                ctx.mkdir(url, _DIR_MODE)
                return
            except gfal2.GError as exc:
                err = _from_gerror(f"mkdir {redact(url)}", url, exc)
                if err.errno != E.EEXIST:
                    raise err from None
        if not self.stat(url).is_dir:
            raise StorageError(
                f"mkdir {redact(url)} failed: a file with that name exists [EEXIST]",
                url=url,
                errno=E.EEXIST,
                code=Code.DEST_WRITE_FAILED,
            )

    def rename(self, src: str, dst: str) -> None:
        """Rename within one storage. Like POSIX rename, an existing ``dst`` is replaced."""
        self._call(
            "rename",
            src,
            self._meta().rename,
            src,
            dst,
            label=f"rename {redact(src)} -> {redact(dst)}",
        )

    def unlink(self, url: str, *, missing_ok: bool = False) -> None:
        try:
            self._call("unlink", url, self._meta().unlink, url)
        except StorageError as err:
            if not (missing_ok and err.errno in (E.ENOENT, E.ENOTDIR)):
                raise

    def status(self, url: str) -> str:
        """Locality from ``user.status`` (ONLINE, NEARLINE, ONLINE_AND_NEARLINE, ...).

        Plugins without that attribute (file://) hold everything on disk, so an
        existing file there is ONLINE.
        """
        try:
            return str(self._meta().getxattr(url, "user.status")).strip()
        except gfal2.GError as exc:
            if _errno_of(exc) not in _NO_XATTR:
                raise _from_gerror(f"status {redact(url)}", url, exc) from None
        self.stat(url)
        return "ONLINE"

    # ----------------------------------------------------------------- tape

    def bring_online(
        self, urls: list[str], *, pin: int, timeout: int
    ) -> tuple[str, list[StorageError | None]]:
        """Ask the storage to recall ``urls`` from tape, asynchronously.

        Returns the request token and, per URL, None or the error the storage
        reported at once (a missing file, for example).
        """
        label = f"bring_online {redact(urls[0])} (+{len(urls) - 1})"
        with self._operation(label, urls[0]) as op:
            errors, token = op.ctx.bring_online(list(urls), int(pin), int(timeout), True)
        return str(token or ""), [
            self._file_error("bring_online", u, e) for u, e in zip(urls, errors, strict=False)
        ]

    def bring_online_poll(self, urls: list[str], token: str) -> list[StorageError | None]:
        """Per URL: None once online, else the storage's answer (EAGAIN while recalling).

        Storages answer only a few files per call (about 10 over XRootD): callers batch.
        """
        label = f"bring_online_poll {redact(urls[0])} (+{len(urls) - 1})"
        with self._operation(label, urls[0]) as op:
            errors = op.ctx.bring_online_poll(list(urls), token)
        return [
            self._file_error("bring_online_poll", u, e) for u, e in zip(urls, errors, strict=False)
        ]

    def release(self, urls: list[str], token: str = "") -> list[StorageError | None]:
        """Release pins (a tape-backed disk buffer may then evict the disk copies)."""
        out: list[StorageError | None] = []
        for url in urls:
            try:
                self._meta().release(url, token)
                out.append(None)
            except gfal2.GError as exc:
                out.append(_from_gerror(f"release {redact(url)}", url, exc))
        return out

    def abort_bring_online(self, urls: list[str], token: str) -> None:
        """Best effort: tell the storage we no longer want these recalls."""
        try:
            self._meta().abort_bring_online(list(urls), token)
        except gfal2.GError as exc:
            log.debug("abort_bring_online %s: %s", redact(urls[0]), _one_line(str(exc.message)))

    @staticmethod
    def _file_error(op: str, url: str, exc: object) -> StorageError | None:
        if exc is None:
            return None
        if isinstance(exc, gfal2.GError):
            return _from_gerror(f"{op} {redact(url)}", url, exc)
        return StorageError(f"{op} {redact(url)} failed: {exc}", url=url)

    # ----------------------------------------------------------------- transfers

    def checksum(self, url: str, algo: str = "ADLER32") -> str:
        """Checksum computed by the storage (server side for root://), lower-case hex."""
        label = f"checksum {redact(url)}"
        with self._operation(label, url) as op:
            try:
                value = op.ctx.checksum(url, algo.upper())
            except gfal2.GError as exc:
                errno, reason = _errno_of(exc), _one_line(str(exc.message))
                # file:// says ENOSYS; xrootd says EILSEQ "Got 'adler32' while expecting ..."
                if not op.cancelled.is_set() and (
                    errno in _UNSUPPORTED or (errno == E.EILSEQ and "expecting" in reason)
                ):
                    raise StorageError(
                        f"{label} failed: {algo.upper()} not supported there: "
                        f"{reason} [{_errname(errno)}]",
                        url=url,
                        errno=errno,
                        transient=False,
                        code=Code.CONFIG,
                    ) from None
                raise
        return str(value).strip().lower()

    def copy(
        self,
        src: str,
        dst: str,
        *,
        size: int | None = None,
        checksum: tuple[str, str] | None = None,
        overwrite: bool = False,
        create_parents: bool = True,
    ) -> CopyResult:
        """Copy one file; with ``checksum=(algo, value)`` both ends are verified.

        ``value`` may be '' to only compare source and destination. A failed copy
        removes what it wrote unless the destination existed before (then, with
        ``overwrite=True``, it may be left partly written: copy to a temporary
        name and rename). ``size`` (else a stat of ``src``) sets the timeout.
        """
        label = f"copy {redact(src)} -> {redact(dst)}"
        # Checked here, not left to gfal2: an xrootd download onto an existing
        # local file fails with EEXIST *and deletes that file*.
        existed = self.exists(dst)
        if existed and not overwrite:
            raise StorageError(
                f"{label} failed: destination exists and overwrite is not set [EEXIST]",
                url=dst,
                errno=E.EEXIST,
                code=Code.DEST_WRITE_FAILED,
            )
        if size is None:
            size = self.stat(src).size
        timeout = self.base_timeout + size / self.min_rate
        started = time.monotonic()
        try:
            with self._operation(label, src) as op:
                params = op.ctx.transfer_parameters()
                params.overwrite = overwrite
                params.create_parent = create_parents
                params.timeout = max(1, math.ceil(timeout))
                if checksum is not None:
                    algo, value = checksum
                    params.set_checksum(
                        gfal2.checksum_mode.both, algo.upper(), value.strip().lower()
                    )
                watchdog = threading.Timer(timeout, op.stop, args=(op.expired,))
                watchdog.daemon = True
                watchdog.start()
                try:
                    op.ctx.filecopy(params, src, dst)
                except gfal2.GError as exc:
                    if op.expired.is_set() and not op.cancelled.is_set():
                        raise StorageError(
                            f"{label} failed: not done within {timeout:.0f} s [ETIMEDOUT]",
                            url=src,
                            errno=E.ETIMEDOUT,
                            transient=True,
                            code=Code.TRANSFER_TIMEOUT,
                        ) from None
                    if op.cancelled.is_set():
                        raise
                    raise _from_gerror(label, src, exc, dst=dst) from None
                finally:
                    watchdog.cancel()
        except StorageError as err:
            if not existed and err.errno != E.EEXIST:  # EEXIST: someone else's file appeared
                self._discard(dst)
            raise
        seconds = time.monotonic() - started
        log.debug("copied %s -> %s: %d bytes in %.2f s", redact(src), redact(dst), size, seconds)
        return CopyResult(bytes=size, seconds=seconds)

    def stream(
        self,
        src: str,
        dst: str,
        observe: Callable[[bytes], None],
        *,
        size: int | None = None,
        chunk_size: int = STREAM_CHUNK,
    ) -> CopyResult:
        """Copy ``src`` to a new file ``dst`` through this process, showing ``observe``
        every chunk on its way: what it hashes is exactly what was written.

        One read of the source does both jobs a verified copy needs (the bytes
        for the destination and the bytes for the checksums), so a source that
        changes during the copy cannot leave the destination and the checksums
        disagreeing. Reading, observing and writing overlap in three threads.
        The caller's thread never blocks inside gfal2, so :meth:`cancel` and the
        timeout (as for :meth:`copy`) answer at once even when a server stalls; a
        reader or writer stuck in a request is left to end with it.
        """
        label = f"copy {redact(src)} -> {redact(dst)}"
        if self.exists(dst):
            raise StorageError(
                f"{label} failed: destination exists [EEXIST]",
                url=dst,
                errno=E.EEXIST,
                code=Code.DEST_WRITE_FAILED,
            )
        if size is None:
            size = self.stat(src).size
        timeout = self.base_timeout + size / self.min_rate
        started = time.monotonic()
        pipe = _Pipe(self, src, dst, label, chunk_size)
        wrote = False
        try:
            with self._operation(label, src) as op:
                pipe.start(op)
                wrote = True
                pipe.run(observe, op, started + timeout, timeout)
        except StorageError:
            pipe.abandon()
            if wrote:
                self._discard(dst)
            raise
        except BaseException:
            pipe.abandon()
            self._discard(dst)
            raise
        seconds = time.monotonic() - started
        log.debug(
            "streamed %s -> %s: %d bytes in %.2f s", redact(src), redact(dst), pipe.bytes, seconds
        )
        return CopyResult(bytes=pipe.bytes, seconds=seconds)

    def _discard(self, url: str) -> None:
        """Best-effort removal of a partial copy (the file plugin leaves one on cancel)."""
        if not self.discard(url):
            log.warning("could not remove partial copy %s", redact(url))

    def discard(self, url: str, *, wait: float = 10.0) -> bool:
        """Remove ``url`` if it exists, waiting at most ``wait`` seconds; True if gone.

        For clean-up after a failure or a cancel: a stalled server must not hold
        a worker that is shutting down. An unlink still pending is left to run.
        """
        gone = threading.Event()

        def unlink() -> None:
            try:
                self.unlink(url, missing_ok=True)
                gone.set()
            except StorageError as err:
                log.debug("could not remove %s: %s", redact(url), err)

        threading.Thread(target=unlink, name="discard", daemon=True).start()
        return gone.wait(wait)

    def open_read(self, url: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Stream a file's content in chunks, in constant memory.

        A generator: errors (a missing file included) surface on first iteration.
        """
        with self._operation(f"read {redact(url)}", url) as op:
            handle = op.ctx.open(url, "r")
            while chunk := handle.read_bytes(chunk_size):
                if op.cancelled.is_set():
                    raise Cancelled(f"read {redact(url)} cancelled", url=url)
                yield chunk
