"""Packing a sandbox directory into a reproducible tar.gz, refusing anything like a credential.

The archive is fetched by every job of a night, often from storage others can
read, so a password in it would leak to all of them; and the same content must
give the same SHA-256, so a record can be checked against a rebuild.
"""

from __future__ import annotations

import gzip
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from GRID_XFER.checksum import hash_file
from GRID_XFER.errors import SandboxBuildError
from GRID_XFER.sandbox.defaults import DEFAULTS_NAME, load_defaults

ARCHIVE_NAME = "gridxfer-sandbox.tar.gz"
LAUNCH_NAME = "launch.sh"
_SKIP = re.compile(r"(^|/)(__pycache__|\.git|\.svn|\.hg)(/|$)|\.py[co]$|~$|\.swp$")
_SECRET_NAME = re.compile(
    r"(^|[._-])(passw(or)?d|secrets?|credentials?|netrc)([._-]|$)|\.(pem|key|p12|pfx|jks)$"
    r"|^(x509up_.*|id_(rsa|dsa|ecdsa|ed25519)(\.pub)?|\.git-credentials|\.pgpass)$",
    re.I,
)
# `key: value` / `KEY=value` whose key names a password or secret (not *_file paths).
_SECRET_ASSIGNMENT = re.compile(
    r"""^(?!\s*#)\s*(?:export\s+)?["']?(?P<key>[\w.-]*(?:passw(?:or)?d|secret)[\w.-]*)["']?\s*[:=]\s*"""
    r"""["']?(?P<value>[^\s"'#]+)""",
    re.I | re.M,
)


@dataclass(frozen=True)
class Built:
    path: Path
    sha256: str
    size: int
    files: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "size": self.size,
            "files": self.files,
        }


def default_source_dir() -> Path:
    """The sandbox shipped inside the package, so an installed wheel builds and launches too."""
    return Path(__file__).resolve().parent / "files"


def sha256_file(path: Path) -> str:
    return hash_file(path, "sha256")


def _walk(src: Path) -> Iterator[tuple[str, Path]]:
    """Every entry below ``src`` in sorted order (the archive's order), minus editor litter."""
    for root, dirs, files in os.walk(src):
        dirs.sort()
        rel_root = Path(root).relative_to(src).as_posix()
        for name in sorted(dirs + files):
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if not _SKIP.search(rel):
                yield rel, Path(root) / name
        dirs[:] = [d for d in dirs if not _SKIP.search(d)]


def _check_file(src: Path, rel: str, path: Path, literal: list[bytes]) -> None:
    if _SECRET_NAME.search(path.name):
        raise SandboxBuildError(
            f"sandbox {src}: {rel} looks like a credential; credentials "
            "reach jobs through a password file or the environment, "
            "never the sandbox"
        )
    data = path.read_bytes()
    if any(s in data for s in literal):
        raise SandboxBuildError(f"sandbox {src}: {rel} contains the database password")
    text = data.decode("utf-8", errors="replace")
    for m in _SECRET_ASSIGNMENT.finditer(text):
        key = m["key"].lower()
        if key.endswith(("_file", "-file", ".file", "file")) or m["value"].startswith(("$", "{")):
            continue  # a path to a secret, or a variable reference: not a secret
        line = text.count("\n", 0, m.start()) + 1
        raise SandboxBuildError(
            f"sandbox {src}: {rel} line {line} sets {m['key']!r}; "
            "credentials never go into the sandbox"
        )


def check_no_credentials(src: Path, secrets: Iterable[str] = ()) -> None:
    """Refuse credential-looking names, password assignments and known secret values."""
    literal = [s.encode() for s in secrets if s and len(s) >= 4]
    for rel, path in _walk(src):
        if path.is_symlink():
            raise SandboxBuildError(
                f"sandbox {src}: {rel} is a symbolic link; the sandbox holds plain files only"
            )
        if path.is_dir():
            continue
        if not path.is_file():
            raise SandboxBuildError(f"sandbox {src}: {rel} is not a regular file")
        _check_file(src, rel, path, literal)
    defaults = src / DEFAULTS_NAME
    if defaults.is_file():
        load_defaults(defaults, error=SandboxBuildError, label=f"sandbox {src}: {DEFAULTS_NAME}")


def _pack(src: Path, tar: tarfile.TarFile) -> list[str]:
    """Add every entry with no owner and no time, so only the content decides the bytes."""
    files: list[str] = []
    for rel, path in _walk(src):
        info = tarfile.TarInfo(rel)
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if path.is_dir():
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
            continue
        info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
        info.size = path.stat().st_size
        with open(path, "rb") as f:
            tar.addfile(info, f)
        files.append(rel)
    return files


def build(src: Path, output: Path, *, secrets: Iterable[str] = ()) -> Built:
    """Pack ``src`` into a reproducible tar.gz at ``output`` (+ ``output.sha256``)."""
    src = Path(src)
    if not (src / LAUNCH_NAME).is_file():
        raise SandboxBuildError(f"{src} is not a sandbox directory: no {LAUNCH_NAME} in it")
    check_no_credentials(src, secrets)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            files = _pack(src, tar)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    digest = sha256_file(output)
    Path(f"{output}.sha256").write_text(f"{digest}  {output.name}\n")
    return Built(output, digest, output.stat().st_size, files)
