"""From a ``gfal2.GError`` to a :class:`StorageError` a token can hold.

A GError carries a bare errno (sometimes an XRootD protocol code instead) and a
free-text message that can embed URLs with credentials. Here each becomes a token
error code, a ``transient`` flag that decides retry-with-backoff versus error, and
a one-line message that is safe to store in a token or a log.
"""

from __future__ import annotations

import errno as E
import re

import gfal2

from GRID_XFER.errors import Cancelled, Code, StorageError
from GRID_XFER.redact import one_line

# The xrootd plugin passes some XRootD protocol codes (kXR_*, 3000..) through
# as if they were errnos; translate them as XProtocol.hh's toErrno() does.
XRD_ERRNO = {
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

TRANSIENT = frozenset(
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
NO_SPACE = frozenset({E.ENOSPC, E.EDQUOT})
UNSUPPORTED = frozenset({E.ENOSYS, E.ENOTSUP, E.EOPNOTSUPP, E.EPROTONOSUPPORT})
NO_XATTR = frozenset({E.ENODATA, E.ENOTSUP, E.EOPNOTSUPP, E.ENOSYS})
# What a destination that cannot be written says, when a copy's message names that side.
_DEST_REFUSED = frozenset({E.ENOENT, E.ENOTDIR, E.EACCES, E.EPERM, E.EEXIST, E.EROFS, E.EISDIR})

_CHECKSUM_MISMATCH = re.compile(r"checksum (?:mismatch|error)|do not match", re.I)
# XrdCl ends copy errors with "(source)" / "(destination)"; gfal2's local copy
# says "Could not open destination", "DESTINATION CHECKSUM MISMATCH", ...
_SIDE_SUFFIX = re.compile(r"\((source|destination)\)\s*$")
_DEST_WORD = re.compile(r"\b(?:destination|target)\b", re.I)
# A server certificate not trusted (davix: "issuer is not trusted"; curl-style
# "certificate verify failed"), a login refused, or no grid proxy to log in with
# (Globus, srm/gsiftp): no retry mends these, only configuration (storage.ca_dir,
# the key, a fresh proxy) does.
_NOT_TRUSTED = re.compile(
    r"certificate verification failed|issuer is not trusted|certificate verify failed|"
    r"SSL certificate problem|authentication (?:methods )?failed|"
    r"could not load client credentials|valid credentials could not be found",
    re.I,
)


def errno_of(exc: gfal2.GError) -> int:
    """The errno a GError means, XRootD protocol codes translated."""
    code = int(exc.code)
    return XRD_ERRNO.get(code, code)


def errname(errno: int) -> str:
    return E.errorcode.get(errno, str(errno))


def side(message: str) -> str | None:
    """Which end of a copy an error message is about, if it says."""
    suffix = _SIDE_SUFFIX.search(message)
    if suffix:
        return suffix.group(1)
    return "destination" if _DEST_WORD.search(message) else None


def classify(errno: int, message: str, *, copy: bool = False) -> tuple[Code, bool]:
    """(code, transient) for a failed gfal2 call; ``copy`` reads the message for the side."""
    if copy and _CHECKSUM_MISMATCH.search(message):
        if _SIDE_SUFFIX.search(message) and errno in (E.EILSEQ, E.EDOM):
            # XrdCl says "CheckSum error: (source)" when that end cannot compute
            # the algorithm at all; a real mismatch names no side.
            return Code.CONFIG, False
        return Code.CHECKSUM_MISMATCH, False
    if errno in UNSUPPORTED:
        return Code.CONFIG, False
    if _NOT_TRUSTED.search(message):
        return Code.CONFIG, False
    if errno == E.ETIMEDOUT:
        return Code.TRANSFER_TIMEOUT, True
    if errno in NO_SPACE:
        return Code.DEST_WRITE_FAILED, True
    if errno in TRANSIENT:
        return Code.TRANSFER_FAILED, True
    if copy and side(message) == "destination" and errno in _DEST_REFUSED:
        return Code.DEST_WRITE_FAILED, False
    if errno == E.ENOENT:
        return Code.SOURCE_MISSING, False
    if errno == E.EEXIST:
        return Code.DEST_WRITE_FAILED, False
    return Code.TRANSFER_FAILED, False


def from_gerror(
    label: str,
    url: str,
    exc: gfal2.GError,
    *,
    dst: str | None = None,
    writing: bool = False,
) -> StorageError:
    """StorageError for a failed call described by ``label`` ("stat <url>").

    ``dst`` marks a copy, whose errors may concern the destination instead (the
    message says which). ``writing`` marks ``url`` as a destination being written:
    the side is known, so one that cannot be written (no such directory, permission,
    read-only, a file where a directory should be) is 40 whatever the protocol says,
    and only connection trouble counts as 21.
    """
    errno = errno_of(exc)
    reason = one_line(str(exc.message))
    message = f"{label} failed: {reason} [{errname(errno)}]"
    copy = dst is not None
    if dst is not None and side(reason) == "destination":
        url = dst
    if errno == E.ECANCELED:
        return Cancelled(message, url=url, errno=errno)
    code, transient = classify(errno, reason, copy=copy)
    if writing and code in (Code.TRANSFER_FAILED, Code.SOURCE_MISSING) and errno not in TRANSIENT:
        code = Code.DEST_WRITE_FAILED
    if code is Code.CONFIG and copy and not _NOT_TRUSTED.search(reason):
        message = (
            f"{label} failed: not supported by the storage (checksum type or copy mode): "
            f"{reason} [{errname(errno)}]"
        )
    return StorageError(message, url=url, errno=errno, transient=transient, code=code)


def checksum_unsupported(exc: gfal2.GError, label: str, url: str, algo: str) -> StorageError | None:
    """A CONFIG error if ``exc`` says the storage cannot compute ``algo`` at all, else None.

    file:// says ENOSYS; xrootd says EILSEQ "Got 'adler32' while expecting ...".
    """
    errno, reason = errno_of(exc), one_line(str(exc.message))
    if errno in UNSUPPORTED or (errno == E.EILSEQ and "expecting" in reason):
        return StorageError(
            f"{label} failed: {algo.upper()} not supported there: {reason} [{errname(errno)}]",
            url=url,
            errno=errno,
            transient=False,
            code=Code.CONFIG,
        )
    return None


def timed_out(label: str, url: str, timeout: float) -> StorageError:
    """The error of a copy that took longer than its ``timeout`` seconds."""
    return StorageError(
        f"{label} failed: not done within {timeout:.0f} s [ETIMEDOUT]",
        url=url,
        errno=E.ETIMEDOUT,
        transient=True,
        code=Code.TRANSFER_TIMEOUT,
    )


def exists_error(label: str, url: str, detail: str = "destination exists") -> StorageError:
    """The error of a copy whose destination is already there (not overwritten)."""
    return StorageError(
        f"{label} failed: {detail} [EEXIST]", url=url, errno=E.EEXIST, code=Code.DEST_WRITE_FAILED
    )


def not_a_directory(err: StorageError, exc: gfal2.GError) -> StorageError:
    """``err`` with errno ENOTDIR when a listing hit a file (xrootd reports EILSEQ)."""
    if "not a directory" in str(exc.message).lower():
        err.errno = E.ENOTDIR
    return err
