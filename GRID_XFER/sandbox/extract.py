"""Fetching a sandbox archive and unpacking it on a batch node without trusting it.

The archive comes from storage that others may write to, so it is checked
twice: its SHA-256 against the record (11 on a mismatch), then every member
before the first byte is written (10 for absolute names, ``..``, links that
leave the directory, devices, duplicates): a bad archive changes nothing.
"""

from __future__ import annotations

import logging
import os
import re
import tarfile
import zlib
from pathlib import Path
from typing import IO, TYPE_CHECKING

from GRID_XFER.checksum import Hasher
from GRID_XFER.errors import SandboxChecksumError, SandboxError, StorageError
from GRID_XFER.urls import redact

if TYPE_CHECKING:  # storage pulls in gfal2; building a sandbox needs none
    from GRID_XFER.storage import Storage

log = logging.getLogger(__name__)

# Bounds for what a node agrees to download and unpack.
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
MAX_MEMBERS = 10_000
_READ_CHUNK = 1024 * 1024
_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def as_url(location: str) -> str:
    """A plain path becomes a ``file://`` URL; URLs pass through."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", location):
        return location
    return f"file://{Path(location).expanduser().resolve()}"


def read_sha256(
    storage: Storage, url: str, *, limit: int = MAX_ARCHIVE_BYTES, out: IO[bytes] | None = None
) -> tuple[str, int]:
    """SHA-256 and size of ``url`` (copied to ``out`` on the way); refuses more than ``limit``."""
    hasher = Hasher("sha256")
    size = 0
    for chunk in storage.open_read(url, _READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise SandboxError(f"sandbox {redact(url)} is larger than {limit} bytes")
        hasher.update(chunk)
        if out is not None:
            out.write(chunk)
    return hasher.hexdigest(), size


def fetch(
    storage: Storage, url: str, sha256: str, dest: Path, limit: int = MAX_ARCHIVE_BYTES
) -> Path:
    """Download ``url`` to the file ``dest`` and check its SHA-256 (10 / 11 on failure)."""
    try:
        with open(dest, "wb") as out:
            got, size = read_sha256(storage, as_url(url), limit=limit, out=out)
    except StorageError as exc:
        raise SandboxError(f"sandbox fetch failed: {exc}") from None
    except OSError as exc:
        raise SandboxError(f"sandbox fetch failed: cannot write {dest}: {exc.strerror}") from None
    want = sha256.strip().lower()
    if got != want:
        raise SandboxChecksumError(
            f"sandbox {redact(url)} has SHA-256 {got}, recorded {want} (corrupted or replaced)"
        )
    log.info("fetched sandbox %s (%d bytes, sha256 ok)", redact(url), size)
    return dest


# --------------------------------------------------------------------------- member checks


def _clean_name(name: str, what: str = "member") -> str:
    """A member name as a relative path inside the directory, or SandboxError."""
    if not name or "\x00" in name:
        raise SandboxError(f"unsafe sandbox: empty or NUL in {what} name {name!r}")
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name):
        raise SandboxError(f"unsafe sandbox: absolute {what} name {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise SandboxError(f"unsafe sandbox: {what} name {name!r} contains '..'")
    if not parts:
        return "."
    return "/".join(parts)


def _link_escapes(link: str, target: str, links: set[str]) -> str | None:
    """Why the symlink ``link -> target`` is unsafe, or None.

    Its target is resolved lexically from the link's directory; it must stay
    inside, and never pass through another link (``a -> .`` then ``b -> a/a/..``
    escapes although its lexical path looks inside).
    """
    if not target or "\x00" in target:
        return "an empty target"
    if target.startswith("/"):
        return f"the absolute target {target!r}"
    stack = link.split("/")[:-1]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return f"the target {target!r}, which leaves the directory"
            stack.pop()
            continue
        stack.append(part)
        if "/".join(stack) in links:
            return f"the target {target!r}, which passes through another link"
    return None


def _check_kind(
    name: str, m: tarfile.TarInfo, links: set[str], seen: dict[str, tarfile.TarInfo]
) -> int:
    """Refuse a member that is no plain file, directory or contained link; its size in bytes."""
    if m.isreg():
        if m.size < 0:
            raise SandboxError(f"unsafe sandbox: {name!r} has a negative size")
        return m.size
    if m.issym():
        why = _link_escapes(name, m.linkname, links)
        if why:
            raise SandboxError(f"unsafe sandbox: symbolic link {name!r} has {why}")
    elif m.islnk():
        target = _clean_name(m.linkname, "hard link target")
        if target not in seen or not seen[target].isreg():
            raise SandboxError(
                f"unsafe sandbox: hard link {name!r} -> {m.linkname!r} does not "
                "name an earlier regular file of the sandbox"
            )
    elif not m.isdir():
        raise SandboxError(f"unsafe sandbox: {name!r} is a device, FIFO or other special file")
    return 0


def check_members(
    members: list[tarfile.TarInfo],
    *,
    max_members: int = MAX_MEMBERS,
    max_bytes: int = MAX_UNPACKED_BYTES,
) -> list[tuple[str, tarfile.TarInfo]]:
    """Check every member before anything is written; return (clean name, member)."""
    if len(members) > max_members:
        raise SandboxError(f"unsafe sandbox: more than {max_members} members")
    names = [_clean_name(m.name) for m in members]
    links = {n for n, m in zip(names, members, strict=True) if m.issym() or m.islnk()}
    seen: dict[str, tarfile.TarInfo] = {}
    total = 0
    plan = []
    for name, m in zip(names, members, strict=True):
        if name == ".":
            if not m.isdir():
                raise SandboxError(f"unsafe sandbox: member {m.name!r} is the directory itself")
            continue
        if name in seen:
            raise SandboxError(
                f"unsafe sandbox: {name!r} appears twice (a later member would "
                "replace an earlier one)"
            )
        parts = name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in links:
                raise SandboxError(f"unsafe sandbox: {name!r} lies beneath the link {prefix!r}")
            if prefix in seen and not seen[prefix].isdir():
                raise SandboxError(f"unsafe sandbox: {name!r} lies beneath the file {prefix!r}")
        total += _check_kind(name, m, links, seen)
        if total > max_bytes:
            raise SandboxError(f"unsafe sandbox: unpacks to more than {max_bytes} bytes")
        seen[name] = m
        plan.append((name, m))
    return plan


# --------------------------------------------------------------------------- extraction


def _inside(root: Path, path: Path) -> bool:
    real = os.path.realpath(path)
    return real == str(root) or real.startswith(str(root) + os.sep)


def _nofollow_read(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def _write_new(target: Path, src: IO[bytes], mode: int, size: int | None) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(_READ_CHUNK):
            written += len(chunk)
            if size is not None and written > size:
                raise SandboxError(f"sandbox member {target.name!r} is longer than its header says")
            out.write(chunk)
    os.chmod(target, mode, follow_symlinks=False)


def _extract_member(
    tar: tarfile.TarFile, root: Path, dest: Path, name: str, m: tarfile.TarInfo
) -> None:
    """Create one checked member below parents that still resolve inside ``root``."""
    target = root / name
    if not _inside(root, target.parent):
        raise SandboxError(f"unsafe sandbox: {name!r} would land outside {dest}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not _inside(root, target.parent):
        raise SandboxError(f"unsafe sandbox: {name!r} would land outside {dest}")
    if m.isdir():
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise SandboxError(f"unsafe sandbox: {name!r} is not a directory")
        target.mkdir(mode=0o755, exist_ok=True)
    elif m.issym():
        os.symlink(m.linkname, target)
    elif m.islnk():
        source = root / _clean_name(m.linkname)
        with open(source, "rb", opener=_nofollow_read) as linked:
            _write_new(target, linked, 0o644, m.size if m.size else None)
    else:
        src = tar.extractfile(m)
        if src is None:
            raise SandboxError(f"sandbox member {name!r} cannot be read")
        with src:
            _write_new(target, src, 0o755 if m.mode & 0o111 else 0o644, m.size)


def safe_extract(archive: Path, dest: Path) -> list[str]:
    """Unpack ``archive`` into the new or empty directory ``dest``; nothing outside it is touched.

    Every member is checked before the first byte is written (``check_members``);
    files are then created with O_EXCL|O_NOFOLLOW below parents verified to
    resolve inside ``dest``, with plain 0644/0755 modes.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.realpath(dest))
    if any(root.iterdir()):
        raise SandboxError(f"cannot unpack the sandbox into {dest}: not empty")
    try:
        tar = tarfile.open(archive, mode="r:gz")
    except _ARCHIVE_ERRORS as exc:
        raise SandboxError(
            f"sandbox {Path(archive).name} is not a readable tar.gz: {exc}"
        ) from None
    written: list[str] = []
    with tar:
        try:
            members = tar.getmembers()
        except _ARCHIVE_ERRORS as exc:
            raise SandboxError(f"sandbox {Path(archive).name} is damaged: {exc}") from None
        plan = check_members(members)
        try:
            for name, m in plan:
                _extract_member(tar, root, dest, name, m)
                written.append(name)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise SandboxError(f"sandbox {Path(archive).name} is damaged: {exc}") from None
        except OSError as exc:
            raise SandboxError(
                f"cannot unpack the sandbox into {dest}: {exc.strerror or exc}"
                f" ({getattr(exc, 'filename', '') or ''})"
            ) from None
    return written
