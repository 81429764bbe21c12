"""The Storage interface: every storage call GRID_XFER makes, with token-ready errors."""

from __future__ import annotations

import errno as E
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import gfal2

from GRID_XFER.errors import Cancelled, Code, StorageError
from GRID_XFER.storage import listing
from GRID_XFER.storage.classify import (
    NO_XATTR,
    checksum_unsupported,
    errno_of,
    exists_error,
    from_gerror,
    timed_out,
)
from GRID_XFER.storage.operation import Contexts, Operation
from GRID_XFER.storage.pipe import DIR_MODE, Pipe
from GRID_XFER.storage.protocols import Settings, prepare_copy
from GRID_XFER.storage.results import CopyResult, Stat
from GRID_XFER.storage.tape import TapeCalls
from GRID_XFER.storage.walk import check_contained, local_path, walk_tree
from GRID_XFER.urls import redact

log = logging.getLogger("GRID_XFER.storage")

CHUNK_SIZE = 4 * 1024 * 1024
STREAM_CHUNK = 4 * 1024 * 1024  # measured: 4 MiB streams faster than 1 or 8 to XRootD


def _copy_params(
    op: Operation,
    timeout: float,
    *,
    overwrite: bool,
    create_parents: bool,
    checksum: tuple[str, str] | None,
) -> Any:
    params = op.ctx.transfer_parameters()
    params.overwrite = overwrite
    params.create_parent = create_parents
    params.timeout = max(1, math.ceil(timeout))
    if checksum is not None:
        algo, value = checksum
        params.set_checksum(gfal2.checksum_mode.both, algo.upper(), value.strip().lower())
    return params


def _filecopy(op: Operation, params: Any, src: str, dst: str, label: str, timeout: float) -> None:
    """gfal2's copy, stopped by a watchdog at ``timeout``: not every plugin honours its own."""
    watchdog = threading.Timer(timeout, op.stop, args=(op.expired,))
    watchdog.daemon = True
    watchdog.start()
    try:
        op.ctx.filecopy(params, src, dst)
    except gfal2.GError as exc:
        if op.expired.is_set() and not op.cancelled.is_set():
            raise timed_out(label, src, timeout) from None
        if op.cancelled.is_set():
            raise
        raise from_gerror(label, src, exc, dst=dst) from None
    finally:
        watchdog.cancel()


class Storage(TapeCalls):
    """gfal2 operations with token-ready errors; safe to share between a few threads.

    Copies get ``timeout = base_timeout + size / min_rate`` seconds (bytes per
    second), enforced here as well as handed to gfal2, because not every plugin
    honours gfal2's own transfer timeout.
    """

    def __init__(
        self,
        *,
        base_timeout: float = 60.0,
        min_rate: float = 1_000_000.0,
        settings: Settings | None = None,
    ) -> None:
        if base_timeout <= 0 or min_rate <= 0:
            raise ValueError("base_timeout and min_rate must be positive")
        self.base_timeout = base_timeout
        self.min_rate = min_rate
        self.settings = settings or Settings()
        self.settings.export_ca_dir()
        self._ops = Contexts(self.settings)

    def cancel(self) -> int:
        """Stop every copy, checksum and open_read in progress; return how many.

        Callable from any thread or a signal handler. Each affected call raises
        :class:`Cancelled`; later calls on this Storage work normally. Python
        runs signal handlers in the main thread, between bytecodes: transfers
        must run in other threads for a handler to get to interrupt them.
        """
        return self._ops.cancel()

    # ----------------------------------------------------------------- metadata

    def stat(self, url: str) -> Stat:
        return Stat.of(self._ops.call("stat", url, self._ops.meta().stat, url))

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
        return listing.listdir(self._ops.meta(), url)

    def scandir(self, url: str) -> list[tuple[str, Stat]]:
        """Entries with their stat in one listing (``readpp``), not one stat call per file.

        file:// is listed entry by entry instead (the same system calls: readpp stats
        each entry too), because readpp fails the whole listing on one dangling link
        and hides which entries are links; there ``Stat.link`` tells.
        """
        if local_path(url) is not None:
            return listing.scan_local(self._ops.meta(), url)
        return listing.scan(self._ops.meta(), url)

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
        return walk_tree(self.scandir, url, refused)

    def check_contained(self, base: str, rel: str) -> None:
        """NotContained (34) if ``base/rel`` is, or passes through, a link leading outside
        ``base``, nowhere, or round in a loop. file:// only (XRootD resolves links itself).

        For files named without a listing (``--from`` entries): the walk does this for
        exposures with a manifest.
        """
        check_contained(base, rel)

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
        ctx = self._ops.meta()
        if parents:
            # mkdir_rec reports success when url is an existing *file* (file and xrootd plugins).
            self._ops.call("mkdir", url, ctx.mkdir_rec, url, DIR_MODE)
        else:
            try:
                ctx.mkdir(url, DIR_MODE)
                return
            except gfal2.GError as exc:
                err = from_gerror(f"mkdir {redact(url)}", url, exc)
                if err.errno != E.EEXIST:
                    raise err from None
        if not self.stat(url).is_dir:
            raise exists_error(f"mkdir {redact(url)}", url, "a file with that name exists")

    def rename(self, src: str, dst: str) -> None:
        """Rename within one storage. Like POSIX rename, an existing ``dst`` is replaced."""
        self._ops.call(
            "rename",
            src,
            self._ops.meta().rename,
            src,
            dst,
            label=f"rename {redact(src)} -> {redact(dst)}",
        )

    def unlink(self, url: str, *, missing_ok: bool = False) -> None:
        try:
            self._ops.call("unlink", url, self._ops.meta().unlink, url)
        except StorageError as err:
            if not (missing_ok and err.errno in (E.ENOENT, E.ENOTDIR)):
                raise

    def status(self, url: str) -> str:
        """Locality from ``user.status`` (ONLINE, NEARLINE, ONLINE_AND_NEARLINE, ...).

        Plugins without that attribute (file://) hold everything on disk, so an
        existing file there is ONLINE.
        """
        try:
            return str(self._ops.meta().getxattr(url, "user.status")).strip()
        except gfal2.GError as exc:
            if errno_of(exc) not in NO_XATTR:
                raise from_gerror(f"status {redact(url)}", url, exc) from None
        self.stat(url)
        return "ONLINE"

    # ----------------------------------------------------------------- transfers

    def checksum(self, url: str, algo: str = "ADLER32") -> str:
        """Checksum computed by the storage (server side for root://), lower-case hex."""
        label = f"checksum {redact(url)}"
        with self._ops.operation(label, url) as op:
            try:
                value = op.ctx.checksum(url, algo.upper())
            except gfal2.GError as exc:
                unsupported = checksum_unsupported(exc, label, url, algo)
                if unsupported is not None and not op.cancelled.is_set():
                    raise unsupported from None
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
        third_party: bool = False,
    ) -> CopyResult:
        """Copy one file; with ``checksum=(algo, value)`` both ends are verified.

        ``value`` may be '' to only compare source and destination. With
        ``third_party`` an HTTP copy is made by the servers (WebDAV COPY) or
        fails; it never falls back to streaming through here. A failed copy
        removes what it wrote unless the destination existed before (then, with
        ``overwrite=True``, it may be left partly written: copy to a temporary
        name and rename). ``size`` (else a stat of ``src``) sets the timeout.
        """
        label = f"copy {redact(src)} -> {redact(dst)}"
        # Checked here, not left to gfal2: an xrootd download onto an existing
        # local file fails with EEXIST *and deletes that file*.
        existed = self.exists(dst)
        if existed and not overwrite:
            raise exists_error(label, dst, "destination exists and overwrite is not set")
        if size is None:
            size = self.stat(src).size
        timeout = self.base_timeout + size / self.min_rate
        started = time.monotonic()
        try:
            with self._ops.operation(label, src) as op:
                prepare_copy(
                    op.ctx,
                    src,
                    dst,
                    third_party=third_party,
                    credential=self.settings.http_tpc_credential,
                )
                params = _copy_params(
                    op,
                    timeout,
                    overwrite=overwrite,
                    create_parents=create_parents,
                    checksum=checksum,
                )
                _filecopy(op, params, src, dst, label, timeout)
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
            raise exists_error(label, dst)
        if size is None:
            size = self.stat(src).size
        timeout = self.base_timeout + size / self.min_rate
        started = time.monotonic()
        pipe = Pipe(src, dst, label, chunk_size)
        wrote = False
        try:
            with self._ops.operation(label, src) as op:
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
        with self._ops.operation(f"read {redact(url)}", url) as op:
            handle = op.ctx.open(url, "r")
            while chunk := handle.read_bytes(chunk_size):
                if op.cancelled.is_set():
                    raise Cancelled(f"read {redact(url)} cancelled", url=url)
                yield chunk
