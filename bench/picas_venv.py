"""The python of a separate virtualenv holding PiCaS, for bench/claim.py and the tests.

PiCaS (and its ``couchdb`` client) never enters our own virtualenv: both stacks
are driven as separate processes. Looked for at ``$PICAS_PYTHON`` (a python or a
virtualenv), then the given default places; else made at ``own`` with
``python3 -m venv`` and ``pip install picas==1.1.2`` (PyPI must be reachable).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PICAS_VERSION = "1.1.2"
REPO = Path(__file__).resolve().parents[1]
OWN = REPO / ".gridxfer" / "picas-venv"


class PicasUnavailable(Exception):
    """No python with picas could be found or made; the message says why."""


def picas_facts(python: str) -> dict[str, str] | None:
    """``{"prefix", "version"}`` of a python that imports picas, else None."""
    code = (
        "import sys, importlib.metadata as m, picas, couchdb; "
        "print(sys.prefix); print(m.version('picas'))"
    )
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    prefix, version = out.stdout.split()[:2]
    return {"prefix": prefix, "version": version}


def _candidates(explicit: str | None, defaults: list[str], own: Path) -> list[tuple[str, str]]:
    if explicit:
        return [(explicit, "explicit")]
    out: list[tuple[str, str]] = []
    env = os.environ.get("PICAS_PYTHON")
    if env:
        p = Path(env)
        out.append((str(p / "bin" / "python") if p.is_dir() else env, "$PICAS_PYTHON"))
    out += [(d, "default location") for d in defaults]
    out.append((str(own / "bin" / "python"), "own virtualenv"))
    return out


def find_picas_python(
    explicit: str | None = None, *, defaults: list[str] | None = None, own: Path = OWN
) -> tuple[str, str]:
    """``(python, picas version)``; creates the virtualenv at ``own`` if none is found."""
    ours = os.path.realpath(sys.prefix)
    for python, origin in _candidates(explicit, defaults or [], own):
        facts = picas_facts(python)
        if facts is None:
            if origin == "explicit":
                raise PicasUnavailable(f"{python} cannot import picas")
            continue
        if os.path.realpath(facts["prefix"]) == ours:
            raise PicasUnavailable(f"{python} is our own virtualenv; picas must stay apart")
        return python, facts["version"]
    base = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3")
    if not base:
        raise PicasUnavailable("no python3 to create the picas virtualenv with")
    own.parent.mkdir(parents=True, exist_ok=True)
    pip = [str(own / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    try:
        subprocess.run([base, "-m", "venv", str(own)], check=True, capture_output=True)
        subprocess.run([*pip, f"picas=={PICAS_VERSION}"], check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
        raise PicasUnavailable(f"cannot make {own} with picas {PICAS_VERSION}: {tail}") from None
    facts = picas_facts(str(own / "bin" / "python"))
    if facts is None:
        raise PicasUnavailable(f"picas did not install into {own}")
    return str(own / "bin" / "python"), facts["version"]
