"""Running a batch system's submit command without handing it our secrets.

Slurm keeps a copy of the submitting environment for the job, so the submit
command runs without any ``GRIDXFER_*`` variable (the password included): the
job sets its own from the job file or ``job.env``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from GRID_XFER.errors import ConfigError, LaunchError

SUBMIT_TIMEOUT = 120.0


def submit_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment for the submit command, without GRIDXFER_* (the job sets its own)."""
    base = dict(os.environ) if base is None else base
    return {k: v for k, v in base.items() if not k.startswith("GRIDXFER_")}


def run_submit(argv: list[str], what: str, cwd: Path | None = None) -> str:
    """The submit command's stdout; LaunchError (12) quoting its answer when it refuses."""
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=SUBMIT_TIMEOUT,
            env=submit_environment(),
            stdin=subprocess.DEVNULL,
            cwd=cwd,
        )
    except FileNotFoundError:
        raise ConfigError(f"{argv[0]} not found: is the {what} client installed?") from None
    except subprocess.TimeoutExpired:
        raise LaunchError(f"{argv[0]} did not answer within {SUBMIT_TIMEOUT:g}s") from None
    if proc.returncode != 0:
        detail = " ".join((proc.stderr or proc.stdout).split())[:500] or "no output"
        raise LaunchError(f"{argv[0]} failed with status {proc.returncode}: {detail}")
    return proc.stdout
