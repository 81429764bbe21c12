"""The one exception tree of the package, and the error codes written into tokens.

Every failure a worker can meet maps to one code of DESIGN.md's table, so a data
manager reads the same number in the token, the view and the docs. ``transient``
(on the root, so every handler can ask) tells the pool whether a retry with backoff
can help. Exit statuses are the CLI's business: ``GRID_XFER.cli.exits`` maps this
tree to them, so the library never decides how a process ends.
"""

from __future__ import annotations

import errno as E
from enum import IntEnum

from GRID_XFER.redact import one_line, redact


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
    transient: bool = False

    def __init__(
        self, message: str, *, code: Code | None = None, transient: bool | None = None
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if transient is not None:
            self.transient = transient


# -- configuration and input ----------------------------------------------------
class ConfigError(GridXferError):
    code = Code.CONFIG


class InvalidInput(GridXferError):
    """A user's argument or input file that cannot be used as given."""


class InvalidToken(GridXferError):
    code = Code.INVALID_TOKEN


class Rejected(InvalidToken):
    """The database's write check (``validate_doc_update``) refused a token."""


class NotFound(GridXferError):
    """A night, token, sandbox or request that is not there."""


# -- the database ----------------------------------------------------------------
class DatabaseUnavailable(GridXferError):
    """The CouchDB server did not answer (connection refused, timeout, 5xx)."""

    code = Code.CONFIG
    transient = True


class DatabaseError(GridXferError):
    """The server answered with an error we cannot retry (auth, bad request).

    ``status`` is the HTTP status when there was one: callers decide on it, never
    on the message, which holds the URL (a port such as 24120 contains "412").
    """

    code = Code.CONFIG

    def __init__(
        self,
        message: str,
        status: int | None = None,
        *,
        code: Code | None = None,
        transient: bool | None = None,
    ) -> None:
        super().__init__(message, code=code, transient=transient)
        self.status = status


class ViewError(DatabaseError):
    """A view the server could not answer (HTTP 500): a document its map or reduce
    cannot handle, or a broken view. Asking again gives the same answer: no outage."""


class Conflict(GridXferError):
    """A save lost against a newer revision (HTTP 409).

    ``retried`` is set when the request was sent more than once: the 409 may
    then be our own earlier attempt that succeeded unseen.
    """

    retried = False


class ServerError(GridXferError):
    """The embedded server could not be started or stopped."""

    code = Code.CONFIG


# -- workers and tasks -------------------------------------------------------------
class LeaseLost(GridXferError):
    """Our claim on a token was taken away (expired and reaped, or reset)."""

    code = Code.LEASE_EXPIRED
    transient = True


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
        super().__init__(
            message,
            code=code,
            transient=code in TRANSIENT_CODES if transient is None else transient,
        )
        self.file = file


class Interrupted(GridXferError):
    """A signal asked the worker to stop."""

    code = Code.INTERRUPTED
    transient = True

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


class ManifestError(GridXferError):
    """A manifest that cannot be trusted as a complete list of files."""

    code = Code.MANIFEST_MISSING


# -- storage -----------------------------------------------------------------------
class StorageError(GridXferError):
    """A storage operation failed; ``transient`` says whether retrying later can help.

    ``code`` is a default guess from the errno (e.g. ENOENT -> SOURCE_MISSING);
    callers who know better (a missing *destination* directory) may reassign it.
    Message and URL are redacted and made one line here, whoever raises: a
    credential in a URL never reaches a token, a log or the terminal.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str = "",
        errno: int = 0,
        transient: bool = False,
        code: Code = Code.TRANSFER_FAILED,
    ) -> None:
        super().__init__(one_line(redact(message)), code=code, transient=transient)
        self.url = redact(url)
        self.errno = errno


class Cancelled(StorageError):
    """The operation was stopped by ``Storage.cancel`` (e.g. on SIGTERM)."""

    def __init__(self, message: str, *, url: str = "", errno: int = E.ECANCELED) -> None:
        super().__init__(message, url=url, errno=errno, transient=True, code=Code.INTERRUPTED)


class NotContained(StorageError):
    """An entry leads outside the directory being walked, nowhere, or round in a loop (34).

    Permanent: the source has to change. ``path`` is the entry, relative to the walk.
    """

    def __init__(self, message: str, *, url: str, path: str) -> None:
        super().__init__(
            message, url=url, errno=E.ELOOP, transient=False, code=Code.SOURCE_NOT_CONTAINED
        )
        self.path = path


# -- tape ------------------------------------------------------------------------
class StagerError(GridXferError):
    """The LTA stager refused or failed a call; ``transient`` says whether a retry helps."""

    code = Code.NOT_STAGED


# -- sandbox and launch ------------------------------------------------------------
class SandboxError(GridXferError):
    """The sandbox could not be fetched or unpacked safely (token code 10)."""

    code = Code.SANDBOX_FETCH


class SandboxChecksumError(SandboxError):
    """The fetched sandbox is not the one recorded (token code 11)."""

    code = Code.SANDBOX_CHECKSUM


class SandboxUploadError(GridXferError):
    """The storage did not take the sandbox (the message says why)."""

    code = Code.CONFIG


class SandboxBuildError(GridXferError):
    """The sandbox directory cannot be packed (a credential, a link, no launch.sh)."""

    code = Code.CONFIG


class LaunchError(GridXferError):
    """The batch system refused or failed to take the job."""

    code = Code.CONFIG


# -- the nightly service -------------------------------------------------------------
class AlertError(GridXferError):
    """An alert sink (mail server, webhook) did not take a message; says why, never
    with the sink's credentials (the SMTP password, the webhook URL)."""

    code = Code.CONFIG
    transient = True
