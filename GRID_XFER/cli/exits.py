"""Exit statuses: the one place the exception tree meets the process's end.

docs/cli.md (exit status) is tested against this table.
"""

from __future__ import annotations

from GRID_XFER.errors import (
    AlertError,
    ConfigError,
    DatabaseError,
    DatabaseUnavailable,
    GridXferError,
    Interrupted,
    InvalidInput,
    InvalidToken,
    LaunchError,
    NotFound,
    SandboxBuildError,
    SandboxChecksumError,
    SandboxError,
    ServerError,
    StagerError,
)

OK = 0
FAILED = 1
USAGE = 2
CONFIG = 3
DATABASE = 4
NOT_FOUND = 5
INVALID = 6
SERVER_NOT_RUNNING = 7
TAPE_PROBLEM = 8  # state-all: a file LOST or UNAVAILABLE
STAGER = 9
SANDBOX_FETCH = 10
SANDBOX_CHECKSUM = 11
LAUNCH_REFUSED = 12
ALERT_FAILED = 13
INTERRUPTED = 130

# Most specific first: the first class an exception is an instance of decides.
_BY_CLASS: tuple[tuple[type[GridXferError], int], ...] = (
    (SandboxChecksumError, SANDBOX_CHECKSUM),
    (SandboxError, SANDBOX_FETCH),
    (SandboxBuildError, INVALID),
    (ConfigError, CONFIG),
    (DatabaseUnavailable, DATABASE),
    (DatabaseError, DATABASE),
    (NotFound, NOT_FOUND),
    (InvalidToken, INVALID),
    (InvalidInput, INVALID),
    (ServerError, SERVER_NOT_RUNNING),
    (StagerError, STAGER),
    (LaunchError, LAUNCH_REFUSED),
    (AlertError, ALERT_FAILED),
)


def exit_status(exc: GridXferError) -> int:
    """The documented exit status for an error (docs/cli.md)."""
    if isinstance(exc, Interrupted):
        return 128 + exc.signum
    for cls, status in _BY_CLASS:
        if isinstance(exc, cls):
            return status
    return FAILED
