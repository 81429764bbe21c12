"""The transfer task: move a token's files and prove they arrived intact.

For each file one read of the source feeds three things at once: the copy to
a temporary name beside the final one, the SHA-256 the manifest is checked
against, and an ADLER32. The destination is then checked against that ADLER32
(computed by the storage, server-side on XRootD), or read back and checked
against the SHA-256 (``verify="destination"``, or a storage that computes no
ADLER32). So the bytes under the final name are the bytes that were verified:
a source rewritten during the copy fails the check instead of slipping through
a second read. Only then is the file renamed to its final name, so nothing ever
shows up under a final name unverified.

Between two servers of one family (root:// to root://, https/davs to https/davs)
the copy is third-party by default: the servers move the data, checking ADLER32
at both ends, and the data never passes through the worker. The manifest's
SHA-256 is then proved by reading the temporary copy back at the destination
(``third_party_verify="read-back"``, the default) before it is renamed; with
``"checksum"`` only the storages' ADLER32 at both ends is compared (no read, and
the SHA-256 is not checked: the source storage is trusted to hold the manifest's
bytes).

A destination already holding the manifest's content is skipped, so re-running
a token after a crash only moves what is missing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from GRID_XFER.checksum import Hasher, hash_chunks
from GRID_XFER.errors import (
    Cancelled,
    Code,
    NotContained,
    StorageError,
    TaskError,
)
from GRID_XFER.parts import remove_stale_parts, temporary_name
from GRID_XFER.source import check_source, task_error
from GRID_XFER.storage import Storage
from GRID_XFER.storage.protocols import third_party_family
from GRID_XFER.task import TaskContext
from GRID_XFER.urls import join, redact

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024  # gfal2 reads of 1 MiB stream faster than 4 MiB here
Verify = Literal["source", "destination"]
ThirdParty = Literal["auto", "never"]
ThirdPartyVerify = Literal["read-back", "checksum"]


class _Mismatch(Exception):
    pass


class TransferTask:
    def __init__(
        self,
        storage: Storage | None = None,
        *,
        verify: Verify = "source",
        mismatch_retries: int = 1,
        progress_every: float = 5.0,
        third_party: ThirdParty = "auto",
        third_party_verify: ThirdPartyVerify = "read-back",
    ) -> None:
        if verify not in ("source", "destination"):
            raise ValueError(f"verify must be 'source' or 'destination', not {verify!r}")
        if third_party not in ("auto", "never"):
            raise ValueError(f"third_party must be 'auto' or 'never', not {third_party!r}")
        if third_party_verify not in ("read-back", "checksum"):
            raise ValueError("third_party_verify must be 'read-back' or 'checksum'")
        self.storage = storage or Storage()
        self.verify = verify
        self.third_party = third_party
        self.third_party_verify = third_party_verify
        self.mismatch_retries = mismatch_retries
        self.progress_every = progress_every
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()
        self.storage.cancel()

    # ------------------------------------------------------------------ token
    def run(self, token: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        self._cancelled.clear()
        if ctx.cancelled.is_set():
            raise TaskError(Code.INTERRUPTED, "cancelled before start")
        src, dst = token.get("source"), token.get("destination")
        if not dst:
            raise TaskError(Code.CONFIG, "token has no destination URL", transient=False)
        files = [dict(f) for f in token.get("files", [])]
        self._manifest: tuple[str, str] | None = None  # (name, sha256 of the bytes checked)
        if token.get("manifest"):
            if not src:
                raise TaskError(Code.CONFIG, "token has no source URL", transient=False)
            files, self._manifest = check_source(
                self.storage, src, token.get("exposure", ""), token["manifest"], files
            )
        elif src:
            for f in files:  # named, not listed: contained all the same
                if not f.get("url"):
                    try:
                        self.storage.check_contained(src, f["name"])
                    except NotContained as err:
                        raise TaskError(
                            err.code, str(err), file=f["name"], transient=False
                        ) from None
        ctx.log.info(
            "%d file(s), %d bytes: %s -> %s",
            len(files),
            sum(f.get("size") or 0 for f in files),
            redact(src or "(urls)"),
            redact(dst),
        )
        remove_stale_parts(self.storage, token, files, dst, ctx)
        last_save = time.monotonic()
        moved = 0
        try:
            for f in files:
                if ctx.cancelled.is_set() or self._cancelled.is_set():
                    raise TaskError(Code.INTERRUPTED, "cancelled", file=f["name"])
                f["result"] = self._one(f, src, dst, ctx)
                moved += f["result"].get("bytes") or 0
                if ctx.save_progress and time.monotonic() - last_save >= self.progress_every:
                    ctx.save_progress(files=files, bytes_done=moved)
                    last_save = time.monotonic()
        except TaskError:
            if ctx.save_progress and any("result" in f for f in files):
                try:  # keep what did arrive: a retry skips it
                    ctx.save_progress(files=files, bytes_done=moved)
                except Exception as exc:  # the failure matters more than this save
                    ctx.log.warning("could not save per-file results: %s", exc)
            raise
        return {"files": files, "bytes_done": moved, "exit_code": 0}

    # ------------------------------------------------------------------ file
    def _one(
        self, f: dict[str, Any], src_base: str | None, dst_base: str, ctx: TaskContext
    ) -> dict[str, Any]:
        name = f["name"]
        src = f.get("url") or join(src_base or "", name)
        dst = join(dst_base, name)
        started = time.monotonic()
        try:
            if self.storage.exists(dst):
                same, detail = self._same_content(src, dst, f)
                if same:
                    ctx.log.info(
                        "%s: already at the destination with the same content; skipped", name
                    )
                    return {
                        "status": "skipped",
                        "bytes": 0,
                        "seconds": round(time.monotonic() - started, 3),
                        **{k: v for k, v in f.get("checksums", {}).items()},
                    }
                if not self._is_manifest(f):
                    raise TaskError(
                        Code.DEST_EXISTS_DIFFERENT,
                        f"{name}: destination "
                        f"{redact(dst)} exists with different content ({detail})",
                        file=name,
                        transient=False,
                    )
                # The manifest goes last, so every file it lists is verified at the
                # destination by now; the one there is an older manifest of this
                # exposure (late files, then `tokens reset` of the done token).
                # Refusing it (41) would leave no way to complete the catch-up.
                ctx.log.info(
                    "%s: replacing the older manifest at the destination (%s)", name, detail
                )
            for attempt in range(self.mismatch_retries + 1):
                try:
                    if self.third_party == "auto" and third_party_family(src, dst):
                        result = self._copy_third_party(src, dst, f, ctx)
                    else:
                        result = self._copy_verified(src, dst, f, ctx)
                    ctx.log.info(
                        "%s: %d bytes in %.2f s%s, verified",
                        name,
                        result["bytes"],
                        result["seconds"],
                        " (third-party)" if result.get("third_party") else "",
                    )
                    return result
                except _Mismatch as m:
                    if attempt < self.mismatch_retries:
                        ctx.log.warning("%s; copying again from scratch", m)
                        continue
                    raise TaskError(
                        Code.CHECKSUM_MISMATCH, str(m), file=name, transient=False
                    ) from None
        except StorageError as err:
            raise task_error(err, name) from None
        raise AssertionError("unreachable")

    def _is_manifest(self, f: dict[str, Any]) -> bool:
        """The manifest this task read and checked, never a file merely labelled so."""
        return self._manifest is not None and f["name"] == self._manifest[0]

    def _wanted(self, f: dict[str, Any]) -> tuple[str | None, str | None]:
        """(SHA-256, ADLER32) the file's bytes must have; for the manifest, the SHA-256
        of the very bytes _check_source verified the files by."""
        sums = f.get("checksums", {})
        sha = self._manifest[1] if self._is_manifest(f) and self._manifest else sums.get("sha256")
        return sha, sums.get("adler32")

    def _copy_verified(
        self, src: str, dst: str, f: dict[str, Any], ctx: TaskContext
    ) -> dict[str, Any]:
        """One read of the source feeds the copy and both checksums, then the
        destination is checked against the checksum of the very bytes sent."""
        name, manifest = f["name"], self._is_manifest(f)
        want_sha, want_adler = self._wanted(f)
        tmp = temporary_name(dst)
        sha, adler = Hasher("sha256"), Hasher("adler32")

        def observe(chunk: bytes) -> None:
            sha.update(chunk)
            adler.update(chunk)

        started = time.monotonic()
        # A failed stream removes its own partial file (waiting a bounded time).
        copied = self.storage.stream(src, tmp, observe, size=f.get("size"))
        with self._discarded_on_failure(tmp, ctx):
            sent_sha, sent_adler = sha.hexdigest(), adler.hexdigest()
            _check_sent(name, manifest, (want_sha, sent_sha), (want_adler, sent_adler))
            self._check_written(tmp, name, sent_sha, sent_adler, ctx)
            self._place(src, tmp, dst, f, manifest)
        result: dict[str, Any] = {
            "status": "copied",
            "bytes": copied.bytes,
            "seconds": round(time.monotonic() - started, 3),
        }
        if not manifest:
            result["sha256"] = sent_sha
        result["adler32"] = sent_adler
        return result

    def _copy_third_party(
        self, src: str, dst: str, f: dict[str, Any], ctx: TaskContext
    ) -> dict[str, Any]:
        """The servers copy to a temporary name (ADLER32 compared at both ends, and
        with the token's); the copy is read back for the SHA-256 unless told not to."""
        name, manifest = f["name"], self._is_manifest(f)
        want_sha, want_adler = self._wanted(f)
        tmp = temporary_name(dst)
        started = time.monotonic()
        try:
            copied = self.storage.copy(
                src,
                tmp,
                size=f.get("size"),
                checksum=("ADLER32", want_adler or ""),
                third_party=True,
            )
        except StorageError as err:
            if err.code == Code.CHECKSUM_MISMATCH:
                raise _Mismatch(f"{name}: {err}") from None
            raise
        result: dict[str, Any] = {"status": "copied", "bytes": copied.bytes, "third_party": True}
        with self._discarded_on_failure(tmp, ctx):
            if manifest or self.third_party_verify == "read-back":
                sha, adler = Hasher("sha256"), Hasher("adler32")
                for chunk in self.storage.open_read(tmp, READ_CHUNK):  # one read, both sums
                    sha.update(chunk)
                    adler.update(chunk)
                got = sha.hexdigest()
                if want_sha and got != want_sha:
                    raise _Mismatch(
                        f"{name}: sha256 {got} of the copy read back at the destination "
                        f"does not match the manifest's {want_sha}"
                    )
                if not manifest:
                    result["sha256"] = got
                result["adler32"] = adler.hexdigest()
            else:  # gfal2 compared both ends' ADLER32; recorded as the destination's
                result["adler32"] = self.storage.checksum(tmp, "ADLER32")
            self._place(src, tmp, dst, f, manifest)
        result["seconds"] = round(time.monotonic() - started, 3)
        return result

    @contextmanager
    def _discarded_on_failure(self, tmp: str, ctx: TaskContext) -> Iterator[None]:
        """A verification or rename that fails takes the temporary copy with it."""
        try:
            yield
        except BaseException:
            if not self.storage.discard(tmp):
                ctx.log.warning(
                    "could not remove temporary %s now; the next attempt will", redact(tmp)
                )
            raise

    def _place(self, src: str, tmp: str, dst: str, f: dict[str, Any], manifest: bool) -> None:
        """The verified temporary copy takes the final name, unless someone else's did."""
        if manifest or not self.storage.exists(dst):
            self.storage.rename(tmp, dst)
            return
        # Someone wrote the final name while we copied: never replace it blindly.
        same, detail = self._same_content(src, dst, f)
        if not same:
            raise TaskError(
                Code.DEST_EXISTS_DIFFERENT,
                f"{f['name']}: destination {redact(dst)} appeared during the copy with "
                f"different content ({detail})",
                file=f["name"],
                transient=False,
            )
        self.storage.unlink(tmp, missing_ok=True)

    def _check_written(
        self, tmp: str, name: str, sent_sha: str, sent_adler: str, ctx: TaskContext
    ) -> None:
        """The destination holds the bytes sent: its ADLER32 (computed by the storage,
        server-side on XRootD) against ours, or, with ``verify: destination`` or where
        the storage computes none, the SHA-256 of the file read back."""
        if self.verify == "source":
            try:
                got = self.storage.checksum(tmp, "ADLER32")
            except StorageError as err:
                if err.code != Code.CONFIG or isinstance(err, Cancelled):
                    raise
                ctx.log.info("%s: %s; verifying by reading the destination", name, err)
            else:
                if got != sent_adler:
                    raise _Mismatch(
                        f"{name}: adler32 {got} at the destination differs from "
                        f"{sent_adler} of the bytes sent"
                    )
                return
        got = hash_chunks(self.storage.open_read(tmp, READ_CHUNK), "sha256")
        if got != sent_sha:
            raise _Mismatch(
                f"{name}: sha256 {got} of the copy read back differs from "
                f"{sent_sha} of the bytes sent"
            )

    def _same_content(self, src: str, dst: str, f: dict[str, Any]) -> tuple[bool, str]:
        """Whether ``dst`` already holds what the token expects, and if not, how it differs."""
        size = f.get("size")
        if size is None:
            size = self.storage.stat(src).size
        have = self.storage.stat(dst).size
        if have != size:
            return False, f"{have} bytes, expected {size}"
        sums = f.get("checksums", {})
        if "adler32" in sums:
            got = self.storage.checksum(dst, "ADLER32")
            return got == sums["adler32"], f"adler32 {got}, expected {sums['adler32']}"
        if "sha256" in sums:
            got = hash_chunks(self.storage.open_read(dst, READ_CHUNK), "sha256")
            return got == sums["sha256"], f"sha256 {got}, expected {sums['sha256']}"
        try:
            a, b = self.storage.checksum(src, "ADLER32"), self.storage.checksum(dst, "ADLER32")
        except StorageError as err:
            if err.code != Code.CONFIG:
                raise
            a = hash_chunks(self.storage.open_read(src, READ_CHUNK), "sha256")
            b = hash_chunks(self.storage.open_read(dst, READ_CHUNK), "sha256")
        return a == b, f"checksum {b} at the destination, {a} at the source"


def _check_sent(
    name: str,
    manifest: bool,
    sha: tuple[str | None, str],
    adler: tuple[str | None, str],
) -> None:
    """The bytes read from the source are the ones expected: ``(wanted, sent)`` pairs.

    A manifest that differs changed during the copy (transient: read it again); any
    other file differs from what the manifest says (a mismatch, copied again).
    """
    (want_sha, sent_sha), (want_adler, sent_adler) = sha, adler
    if want_sha and sent_sha != want_sha:
        if manifest:
            raise TaskError(
                Code.TRANSFER_FAILED,
                f"{name}: the manifest changed at the source during the transfer; will retry",
                file=name,
                transient=True,
            )
        raise _Mismatch(
            f"{name}: sha256 {sent_sha} of the bytes read from the source "
            f"does not match the manifest's {want_sha}"
        )
    if want_adler and sent_adler != want_adler:
        raise _Mismatch(
            f"{name}: adler32 {sent_adler} of the bytes read from the source "
            f"does not match the expected {want_adler}"
        )
