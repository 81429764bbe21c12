"""How a gfal2 failure becomes a token error (docs/errors.md), without any server.

gfal2.GError is built directly, as the plugins raise it: an errno (or an XRootD
protocol code) and a free-text message.
"""

from __future__ import annotations

import errno as E

import gfal2
import pytest

from GRID_XFER.errors import Cancelled, Code, StorageError
from GRID_XFER.redact import one_line
from GRID_XFER.storage.classify import (
    XRD_ERRNO,
    checksum_unsupported,
    errname,
    errno_of,
    exists_error,
    from_gerror,
    not_a_directory,
    side,
    timed_out,
)

SRC = "root://host//data/in.fits"
DST = "file:///archive/out.fits"


def gerror(code: int, message: str = "failed") -> gfal2.GError:
    return gfal2.GError(message, code)


# ----------------------------------------------------------------------------- errno table


@pytest.mark.parametrize(
    ("errno", "code", "transient"),
    [
        (E.ENOENT, Code.SOURCE_MISSING, False),
        (E.EEXIST, Code.DEST_WRITE_FAILED, False),
        (E.EACCES, Code.TRANSFER_FAILED, False),
        (E.EPERM, Code.TRANSFER_FAILED, False),
        (E.EINVAL, Code.TRANSFER_FAILED, False),
        (E.ETIMEDOUT, Code.TRANSFER_TIMEOUT, True),
        (E.ENOSPC, Code.DEST_WRITE_FAILED, True),
        (E.EDQUOT, Code.DEST_WRITE_FAILED, True),
        (E.ENOSYS, Code.CONFIG, False),
        (E.ENOTSUP, Code.CONFIG, False),
        (E.EPROTONOSUPPORT, Code.CONFIG, False),
        (E.ECONNREFUSED, Code.TRANSFER_FAILED, True),
        (E.ECONNRESET, Code.TRANSFER_FAILED, True),
        (E.ECONNABORTED, Code.TRANSFER_FAILED, True),
        (E.EAGAIN, Code.TRANSFER_FAILED, True),
        (E.EHOSTUNREACH, Code.TRANSFER_FAILED, True),
        (E.EHOSTDOWN, Code.TRANSFER_FAILED, True),
        (E.ENETUNREACH, Code.TRANSFER_FAILED, True),
        (E.ENETDOWN, Code.TRANSFER_FAILED, True),
        (E.ECOMM, Code.TRANSFER_FAILED, True),
        (E.EIO, Code.TRANSFER_FAILED, True),
        (E.EBUSY, Code.TRANSFER_FAILED, True),
        (E.EUSERS, Code.TRANSFER_FAILED, True),
    ],
)
def test_errno_maps_to_code_and_transience(errno: int, code: Code, transient: bool) -> None:
    err = from_gerror(f"stat {SRC}", SRC, gerror(errno))
    assert type(err) is StorageError
    assert (err.errno, err.code, err.transient) == (errno, code, transient)
    assert str(err) == f"stat {SRC} failed: failed [{E.errorcode[errno]}]"
    assert err.url == SRC


def test_ecanceled_is_cancelled() -> None:
    err = from_gerror(f"stat {SRC}", SRC, gerror(E.ECANCELED))
    assert type(err) is Cancelled
    assert (err.errno, err.code, err.transient) == (E.ECANCELED, Code.INTERRUPTED, True)


# ----------------------------------------------------------------------------- XRootD codes


@pytest.mark.parametrize(
    ("kxr", "errno", "code", "transient"),
    [
        (3011, E.ENOENT, Code.SOURCE_MISSING, False),  # kXR_NotFound
        (3010, E.EACCES, Code.TRANSFER_FAILED, False),  # kXR_NotAuthorized
        (3009, E.ENOSPC, Code.DEST_WRITE_FAILED, True),  # kXR_NoSpace
        (3021, E.EDQUOT, Code.DEST_WRITE_FAILED, True),  # kXR_overQuota
        (3007, E.EIO, Code.TRANSFER_FAILED, True),  # kXR_IOError
        (3014, E.EHOSTUNREACH, Code.TRANSFER_FAILED, True),  # kXR_noserver
        (3024, E.EUSERS, Code.TRANSFER_FAILED, True),  # kXR_Overloaded
        (3034, E.ETIMEDOUT, Code.TRANSFER_TIMEOUT, True),  # kXR_TimerExpired
        (3013, E.ENOTSUP, Code.CONFIG, False),  # kXR_Unsupported
        (3018, E.EEXIST, Code.DEST_WRITE_FAILED, False),  # kXR_ItExists
        (3000, E.EINVAL, Code.TRANSFER_FAILED, False),  # kXR_ArgInvalid
    ],
)
def test_xrootd_protocol_codes_are_translated(
    kxr: int, errno: int, code: Code, transient: bool
) -> None:
    assert errno_of(gerror(kxr)) == errno
    err = from_gerror(f"stat {SRC}", SRC, gerror(kxr))
    assert (err.errno, err.code, err.transient) == (errno, code, transient)
    assert str(err).endswith(f"[{E.errorcode[errno]}]")


def test_xrootd_table_covers_the_protocol_range_and_only_it() -> None:
    assert sorted(XRD_ERRNO) == list(range(3000, 3035))
    assert all(v in E.errorcode for v in XRD_ERRNO.values())


def test_xrootd_cancel_code_is_cancelled() -> None:
    assert type(from_gerror("copy", SRC, gerror(3017))) is Cancelled  # kXR_Cancelled


def test_unknown_codes_pass_through_and_are_permanent() -> None:
    assert errno_of(gerror(3999)) == 3999
    assert errname(3999) == "3999"
    err = from_gerror(f"stat {SRC}", SRC, gerror(3999))
    assert (err.errno, err.code, err.transient) == (3999, Code.TRANSFER_FAILED, False)
    assert str(err).endswith("[3999]")


# ----------------------------------------------------------------------------- side


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("[ERROR] Server responded with an error: [3011] No such file (source)", "source"),
        ("[ERROR] Server responded with an error: [3010] denied (destination)  ", "destination"),
        ("Could not open destination: Permission denied", "destination"),
        ("cannot write the target file", "destination"),
        ("DESTINATION CHECKSUM MISMATCH", "destination"),
        ("No such file or directory", None),
        ("destinations", None),  # a word, not part of one
    ],
)
def test_side_of_a_copy_error(message: str, expected: str | None) -> None:
    assert side(message) == expected


@pytest.mark.parametrize(
    ("errno", "code"),
    [
        (E.ENOENT, Code.DEST_WRITE_FAILED),
        (E.ENOTDIR, Code.DEST_WRITE_FAILED),
        (E.EACCES, Code.DEST_WRITE_FAILED),
        (E.EPERM, Code.DEST_WRITE_FAILED),
        (E.EEXIST, Code.DEST_WRITE_FAILED),
        (E.EROFS, Code.DEST_WRITE_FAILED),
        (E.EISDIR, Code.DEST_WRITE_FAILED),
        (E.EINVAL, Code.TRANSFER_FAILED),  # not a "cannot write there" errno
    ],
)
def test_copy_error_about_the_destination_is_40_and_names_it(errno: int, code: Code) -> None:
    err = from_gerror("copy a -> b", SRC, gerror(errno, "open failed (destination)"), dst=DST)
    assert (err.code, err.transient, err.url) == (code, False, DST)


def test_copy_error_about_the_source_keeps_the_source() -> None:
    err = from_gerror("copy a -> b", SRC, gerror(E.ENOENT, "No such file (source)"), dst=DST)
    assert (err.code, err.url) == (Code.SOURCE_MISSING, SRC)


def test_side_is_only_read_for_copies() -> None:
    err = from_gerror("stat x", SRC, gerror(E.EACCES, "open failed (destination)"))
    assert (err.code, err.url) == (Code.TRANSFER_FAILED, SRC)


@pytest.mark.parametrize(
    ("errno", "code", "transient"),
    [
        (E.ENOENT, Code.DEST_WRITE_FAILED, False),  # no such directory
        (E.EACCES, Code.DEST_WRITE_FAILED, False),
        (E.EROFS, Code.DEST_WRITE_FAILED, False),
        (E.EINVAL, Code.DEST_WRITE_FAILED, False),  # whatever the protocol says
        (E.EEXIST, Code.DEST_WRITE_FAILED, False),
        (E.ENOSPC, Code.DEST_WRITE_FAILED, True),
        (E.ECONNREFUSED, Code.TRANSFER_FAILED, True),  # connection trouble stays 21
        (E.EIO, Code.TRANSFER_FAILED, True),
        (E.ETIMEDOUT, Code.TRANSFER_TIMEOUT, True),
        (E.ENOSYS, Code.CONFIG, False),
    ],
)
def test_writing_a_destination(errno: int, code: Code, transient: bool) -> None:
    err = from_gerror(f"write {DST}", DST, gerror(errno), writing=True)
    assert (err.code, err.transient, err.url) == (code, transient, DST)


def test_writing_cancelled() -> None:
    assert type(from_gerror("write x", DST, gerror(E.ECANCELED), writing=True)) is Cancelled


# ----------------------------------------------------------------------------- checksums


@pytest.mark.parametrize(
    "message",
    [
        "Checksum mismatch between source and destination",
        "DESTINATION CHECKSUM MISMATCH: user defined 1 != destination 2",
        "Source and destination checksums do not match",
        "[ERROR] Server responded with an error: CheckSum error",
    ],
)
@pytest.mark.parametrize("errno", [E.EIO, E.EILSEQ, E.EINVAL])
def test_checksum_mismatch_in_a_copy_is_permanent(message: str, errno: int) -> None:
    err = from_gerror("copy a -> b", SRC, gerror(errno, message), dst=DST)
    assert (err.code, err.transient) == (Code.CHECKSUM_MISMATCH, False)


@pytest.mark.parametrize("errno", [E.EILSEQ, E.EDOM])
def test_checksum_error_naming_a_side_is_an_unsupported_algorithm(errno: int) -> None:
    err = from_gerror("copy a -> b", SRC, gerror(errno, "CheckSum error: (source)"), dst=DST)
    assert (err.code, err.transient) == (Code.CONFIG, False)
    assert "not supported by the storage (checksum type or copy mode)" in str(err)


def test_checksum_error_naming_a_side_with_another_errno_is_a_mismatch() -> None:
    err = from_gerror("copy a -> b", SRC, gerror(E.EIO, "checksum error (destination)"), dst=DST)
    assert (err.code, err.url) == (Code.CHECKSUM_MISMATCH, DST)


def test_checksum_words_outside_a_copy_are_not_a_mismatch() -> None:
    err = from_gerror("stat x", SRC, gerror(E.EIO, "checksum mismatch"))
    assert (err.code, err.transient) == (Code.TRANSFER_FAILED, True)


def test_unsupported_copy_mode_says_so() -> None:
    err = from_gerror("copy a -> b", SRC, gerror(E.ENOTSUP, "3rd party copy"), dst=DST)
    assert err.code == Code.CONFIG
    assert str(err) == (
        "copy a -> b failed: not supported by the storage (checksum type or copy mode): "
        "3rd party copy [ENOTSUP]"
    )


@pytest.mark.parametrize(
    ("errno", "message", "unsupported"),
    [
        (E.ENOSYS, "not implemented", True),  # file://
        (E.ENOTSUP, "", True),
        (E.EILSEQ, "Got 'adler32' while expecting 'sha256'", True),  # xrootd
        (E.EILSEQ, "bad bytes", False),
        (E.EIO, "expecting", False),
        (E.ENOENT, "No such file", False),
    ],
)
def test_checksum_algorithm_unsupported(errno: int, message: str, unsupported: bool) -> None:
    err = checksum_unsupported(gerror(errno, message), f"checksum {SRC}", SRC, "sha256")
    if not unsupported:
        assert err is None
        return
    assert err is not None
    assert (err.code, err.transient, err.errno) == (Code.CONFIG, False, errno)
    assert str(err).startswith(f"checksum {SRC} failed: SHA256 not supported there: ")


# ----------------------------------------------------------------------------- messages


def test_messages_are_redacted_and_one_line() -> None:
    secret_src = "root://alice:s3cret@host//f?authz=tok123"
    raw = "open root://alice:s3cret@host//f?authz=tok123 failed\n  second\\x00line\\x00end"
    # gfal2 carries a raw NUL too (one_line below); a GError cannot be built with one
    err = from_gerror(f"copy {secret_src} -> {DST}", secret_src, gerror(E.EIO, raw), dst=DST)
    text = f"{err} {err.url} {err!r}"
    for secret in ("s3cret", "tok123"):
        assert secret not in text
    assert "\n" not in str(err) and "\x00" not in str(err) and "\\x00" not in str(err)
    assert "second line end" in str(err)
    assert err.url == "root://***@host//f?authz=***"


def test_redacted_destination_url() -> None:
    dst = "davs://host/out?access_token=tok456"
    err = from_gerror("copy a -> b", SRC, gerror(E.EACCES, "denied (destination)"), dst=dst)
    assert err.url == "davs://host/out?access_token=***"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a\nb", "a b"),
        ("  a \t b  ", "a b"),
        ("a\x00b", "a b"),
        ("a\\x00b", "a b"),
        ("", ""),
    ],
)
def test_one_line(raw: str, expected: str) -> None:
    assert one_line(raw) == expected


def test_timeout_and_exists_errors() -> None:
    err = timed_out("copy a -> b", SRC, 61.4)
    assert str(err) == "copy a -> b failed: not done within 61 s [ETIMEDOUT]"
    assert (err.errno, err.code, err.transient, err.url) == (
        E.ETIMEDOUT,
        Code.TRANSFER_TIMEOUT,
        True,
        SRC,
    )
    err = exists_error("copy a -> b", DST)
    assert str(err) == "copy a -> b failed: destination exists [EEXIST]"
    assert (err.errno, err.code, err.transient, err.url) == (
        E.EEXIST,
        Code.DEST_WRITE_FAILED,
        False,
        DST,
    )


@pytest.mark.parametrize(
    ("message", "errno"), [("Not a directory", E.ENOTDIR), ("other", E.EILSEQ)]
)
def test_listing_a_file_is_enotdir(message: str, errno: int) -> None:
    exc = gerror(E.EILSEQ, message)  # what xrootd reports
    assert not_a_directory(from_gerror("listdir x", SRC, exc), exc).errno == errno
