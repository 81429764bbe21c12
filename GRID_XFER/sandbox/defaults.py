"""The worker defaults a sandbox may carry (``worker.yaml``), and how they meet the job's config.

A sandbox is shared by every job that fetches it, so it may only shape how a
worker works, never where the database is or how to log in: those come from
the job's own configuration, which wins key by key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from GRID_XFER.errors import GridXferError, SandboxError

DEFAULTS_NAME = "worker.yaml"
# Sections the sandbox defaults may set; the database and its credentials come
# from the job's own configuration only.
DEFAULT_SECTIONS = frozenset(
    {"worker", "transfer", "staging", "log_level", "source", "destination"}
)


def load_defaults(
    path: Path, *, error: type[GridXferError] = SandboxError, label: str | None = None
) -> dict[str, Any]:
    """The sandbox's worker defaults; ``error`` lets ``build`` refuse what a node would."""
    label = label or f"sandbox {path.name}"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise error(f"{label}: not readable YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise error(f"{label}: top level must be a mapping")
    bad = sorted(set(data) - DEFAULT_SECTIONS)
    if bad:
        raise error(
            f"{label}: {', '.join(bad)} may not be set by the sandbox (allowed: "
            f"{', '.join(sorted(DEFAULT_SECTIONS))}); the database and its credentials "
            "come from the job's configuration"
        )
    return data


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` wins; mappings are merged key by key, so a job overrides one setting only."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
