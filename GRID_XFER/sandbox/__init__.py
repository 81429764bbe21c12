"""The worker sandbox: what a batch node fetches before it runs a worker.

A sandbox is a directory (``launch.sh``, the worker defaults in ``worker.yaml``,
any scripts a ``command`` task runs) packed into a reproducible tar.gz
(:mod:`.build`), uploaded and recorded as ``{url, sha256}`` in the token
database (:mod:`.record`), and on a node fetched, verified and unpacked with
every member checked first (:mod:`.extract`) before one worker runs in a private
scratch directory (:mod:`.node`, called by ``gridxfer node fetch|run``).
"""

from GRID_XFER.errors import SandboxBuildError, SandboxChecksumError, SandboxError
from GRID_XFER.sandbox.build import (
    ARCHIVE_NAME,
    LAUNCH_NAME,
    Built,
    build,
    check_no_credentials,
    default_source_dir,
    sha256_file,
)
from GRID_XFER.sandbox.defaults import DEFAULT_SECTIONS, DEFAULTS_NAME, load_defaults, merge
from GRID_XFER.sandbox.extract import (
    MAX_ARCHIVE_BYTES,
    MAX_MEMBERS,
    MAX_UNPACKED_BYTES,
    as_url,
    check_members,
    fetch,
    safe_extract,
)
from GRID_XFER.sandbox.node import fetch_into, interruptible, job_config, run
from GRID_XFER.sandbox.record import DOC_TYPE, lookup, record_id, save_record, upload

__all__ = [
    "ARCHIVE_NAME",
    "DEFAULTS_NAME",
    "DEFAULT_SECTIONS",
    "DOC_TYPE",
    "LAUNCH_NAME",
    "MAX_ARCHIVE_BYTES",
    "MAX_MEMBERS",
    "MAX_UNPACKED_BYTES",
    "Built",
    "SandboxBuildError",
    "SandboxChecksumError",
    "SandboxError",
    "as_url",
    "build",
    "check_members",
    "check_no_credentials",
    "default_source_dir",
    "fetch",
    "fetch_into",
    "interruptible",
    "job_config",
    "load_defaults",
    "lookup",
    "merge",
    "record_id",
    "run",
    "safe_extract",
    "save_record",
    "sha256_file",
    "upload",
]
