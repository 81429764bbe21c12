"""One exception root for the package, and the error codes written into tokens.

Every failure a worker can meet maps to one code of DESIGN.md's table, so a data
manager reads the same number in the token, the view and the docs. ``transient``
tells the pool whether a retry with backoff can help.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """Token error codes (stored in ``output`` and ``error.code``)."""

    OK = 0
    CONFIG = 1
    INVALID_TOKEN = 2
    SANDBOX_FETCH = 10
    SANDBOX_CHECKSUM = 11
    SOURCE_MISSING = 20
    TRANSFER_FAILED = 21
    NOT_STAGED = 22
    STAGING_TIMEOUT = 23
    TRANSFER_TIMEOUT = 24
    CHECKSUM_MISMATCH = 30
    MANIFEST_MISSING = 31
    MISSING_AT_SOURCE = 32
    NOT_IN_MANIFEST = 33
    # A link at the source leaves the exposure directory, leads nowhere or loops.
    SOURCE_NOT_CONTAINED = 34
    DEST_WRITE_FAILED = 40
    DEST_EXISTS_DIFFERENT = 41
    ARCHIVE_FAILED = 50
    ARCHIVE_TIMEOUT = 51
    LEASE_EXPIRED = 90
    INTERRUPTED = 91
    UNEXPECTED = 99

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


# Codes for which a later attempt can succeed without anyone changing anything.
TRANSIENT_CODES = frozenset(
    {
        Code.TRANSFER_FAILED,
        Code.TRANSFER_TIMEOUT,
        Code.SANDBOX_FETCH,
        Code.DEST_WRITE_FAILED,
        Code.STAGING_TIMEOUT,
        Code.ARCHIVE_TIMEOUT,
        Code.LEASE_EXPIRED,
        Code.UNEXPECTED,
    }
)


def code_name(code: int) -> str:
    try:
        return Code(code).name
    except ValueError:
        return f"CODE_{code}"


class GridXferError(Exception):
    """Root of every exception GRID_XFER raises on purpose."""

    code: Code = Code.UNEXPECTED
    # CLI exit status; see docs/cli.md (exit status).
    exit_status: int = 1

    def __init__(self, message: str, *, code: Code | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ConfigError(GridXferError):
    code = Code.CONFIG
    exit_status = 3


class DatabaseUnavailable(GridXferError):
    """The CouchDB server did not answer (connection refused, timeout, 5xx)."""

    code = Code.CONFIG
    exit_status = 4


class DatabaseError(GridXferError):
    """The server answered with an error we cannot retry (auth, bad request)."""

    code = Code.CONFIG
    exit_status = 4


class ViewError(DatabaseError):
    """A view the server could not answer (HTTP 500): a document its map or reduce
    cannot handle, or a broken view. Asking again gives the same answer: no outage."""


class NotFound(GridXferError):
    exit_status = 5


class InvalidToken(GridXferError):
    code = Code.INVALID_TOKEN
    exit_status = 6


class Rejected(InvalidToken):
    """The database's write check (``validate_doc_update``) refused a token."""


class InvalidInput(GridXferError):
    exit_status = 6


class ServerError(GridXferError):
    """The embedded server could not be started or stopped."""

    code = Code.CONFIG
    exit_status = 7


class Conflict(GridXferError):
    """A save lost against a newer revision (HTTP 409).

    ``retried`` is set when the request was sent more than once: the 409 may
    then be our own earlier attempt that succeeded unseen.
    """

    exit_status = 1
    retried = False


class LeaseLost(GridXferError):
    """Our claim on a token was taken away (expired and reaped, or reset)."""

    code = Code.LEASE_EXPIRED


class TaskError(GridXferError):
    """A task failed with a token error code, optionally naming a file."""

    def __init__(
        self,
        code: Code | int,
        message: str,
        *,
        file: str | None = None,
        transient: bool | None = None,
    ) -> None:
        code = Code(code)
        super().__init__(message, code=code)
        self.file = file
        self.transient = code in TRANSIENT_CODES if transient is None else transient


class Interrupted(GridXferError):
    """A signal asked the worker to stop."""

    code = Code.INTERRUPTED

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum
        self.exit_status = 128 + signum
