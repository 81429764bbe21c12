"""The batch-node side: fetch the recorded sandbox into a private scratch directory, run there.

``launch.sh`` ``exec``s ``gridxfer node run``, which lands here: no token is held
while the sandbox is fetched, so a fetch error (10) or a checksum mismatch (11)
is the job's exit status. Run as a ``command`` task instead (``gridxfer node
fetch``), the same codes reach the token through the command's exit status.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from GRID_XFER.app import App
from GRID_XFER.config import find_config_file
from GRID_XFER.errors import Interrupted, SandboxError
from GRID_XFER.sandbox.build import ARCHIVE_NAME
from GRID_XFER.sandbox.defaults import DEFAULTS_NAME, load_defaults, merge
from GRID_XFER.sandbox.extract import fetch, safe_extract
from GRID_XFER.sandbox.record import lookup

log = logging.getLogger(__name__)


@contextmanager
def interruptible() -> Iterator[None]:
    """Until the worker installs its own handlers, SIGTERM/SIGINT clean up and exit 128+N."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _absolute_env(name: str) -> None:
    value = os.environ.get(name)
    if value:
        os.environ[name] = str(Path(value).expanduser().absolute())


def _resolve_record(app: App, night: str | None) -> tuple[str, str]:
    """The URL and SHA-256 to fetch: set in the environment, else the database's record."""
    url, digest = os.environ.get("GRIDXFER_SANDBOX_URL"), os.environ.get("GRIDXFER_SANDBOX_SHA256")
    if url or digest:
        if not (url and digest):
            raise SandboxError("GRIDXFER_SANDBOX_URL and GRIDXFER_SANDBOX_SHA256 go together")
        return url, digest
    # Like the worker, ride out a database outage rather than lose the job.
    doc = lookup(app.couch(outage=app.config.worker.outage_seconds), night)
    if doc is None:
        raise SandboxError(
            f"no sandbox recorded for {'night ' + night if night else 'any night'}"
            " (run `gridxfer sandbox upload`)"
        )
    return doc["url"], doc["sha256"]


def fetch_into(dest: Path, night: str | None, app: App | None = None) -> Path:
    """Fetch, verify and unpack the recorded sandbox into ``dest/sandbox``; return that."""
    app = app or App()
    storage = app.storage()  # reads the configuration: a bad one fails before anything else
    url, digest = _resolve_record(app, night)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / ARCHIVE_NAME
    if archive.exists():
        raise SandboxError(f"{archive} exists already")
    fetch(storage, url, digest, archive)
    target = dest / "sandbox"
    try:
        safe_extract(archive, target)
    finally:
        archive.unlink(missing_ok=True)
    return target


def job_config(sandbox_dir: Path | None, work: Path) -> Path:
    """The worker's configuration: the sandbox defaults under the job's own file."""
    defaults: dict[str, Any] = {}
    if sandbox_dir is not None and (sandbox_dir / DEFAULTS_NAME).is_file():
        defaults = load_defaults(sandbox_dir / DEFAULTS_NAME)
    own: Any = {}
    path = find_config_file(None)
    if path is not None:
        try:
            own = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, OSError):
            own = None
        if not isinstance(own, dict):
            return path  # the worker's load_config reports what is wrong with it
    merged = merge(defaults, own)
    out = work / "gridxfer.yaml"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(merged, f, sort_keys=False)
    return out


def run(
    night: str | None,
    work: Callable[[Path], int],
    *,
    fetch_mode: str = "fetch",
    scratch: str | None = None,
    keep: bool = False,
) -> int:
    """What ``launch.sh`` does on a node: fetch the sandbox into a private scratch
    directory, then ``work(config path)`` there (one worker); its exit status."""
    for name in ("GRIDXFER_CONFIG", "GRIDXFER_COUCHDB_PASSWORD_FILE"):
        _absolute_env(name)  # we change directory below
    base = scratch or os.environ.get("GRIDXFER_SCRATCH") or None
    job_dir = Path(tempfile.mkdtemp(prefix="gridxfer-job-", dir=base))
    home = os.getcwd()
    try:
        with interruptible():
            sandbox_dir: Path | None = None
            if fetch_mode != "none":
                sandbox_dir = fetch_into(job_dir, night, App())
            config_path = job_config(sandbox_dir, job_dir)
        os.environ["GRIDXFER_CONFIG"] = str(config_path)
        os.chdir(sandbox_dir or job_dir)
        return work(config_path)
    finally:
        os.chdir(home if os.path.isdir(home) else "/")
        if keep:
            log.warning("sandbox work directory kept: %s", job_dir)
        else:
            shutil.rmtree(job_dir, ignore_errors=True)
