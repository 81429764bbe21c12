"""The worker sandbox: what a batch node fetches before it runs ``gridxfer worker``.

A sandbox is the ``sandbox/`` directory (``launch.sh``, the worker defaults in
``worker.yaml``, any scripts a ``command`` task runs) packed into a
reproducible tar.gz. ``build`` refuses anything that looks like a credential;
``upload`` copies the archive through gfal2, reads it back, and records
``{url, sha256}`` in the token database as the document ``sandbox:<NIGHT>``
(or ``sandbox`` for every night), with ``type: "sandbox"`` so no token view
counts it. On a node, ``launch.sh`` calls ``python -m GRID_XFER.sandbox run``:
fetch, verify the SHA-256 (error 11 on a mismatch), extract with every member
checked first (error 10 for absolute names, ``..``, links that leave the
directory, devices, duplicates), then the worker, in a private scratch
directory that is removed afterwards.

When a token is held (``python -m GRID_XFER.sandbox fetch`` run as a
``command`` task) the code reaches the token through the command's exit
status; otherwise it is the process's exit status.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import re
import shutil
import signal
import socket
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from GRID_XFER.errors import (
    Conflict,
    GridXferError,
    Interrupted,
    SandboxBuildError,
    SandboxChecksumError,
    SandboxError,
    SandboxUploadError,
)
from GRID_XFER.urls import check_plain_url, redact

if TYPE_CHECKING:
    from GRID_XFER.couch import Couch
    from GRID_XFER.storage import Storage

log = logging.getLogger(__name__)

ARCHIVE_NAME = "gridxfer-sandbox.tar.gz"
DEFAULTS_NAME = "worker.yaml"
LAUNCH_NAME = "launch.sh"
DOC_TYPE = "sandbox"
# Bounds for what a node agrees to download and unpack.
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
MAX_MEMBERS = 10_000
# Sections the sandbox defaults may set; the database and its credentials come
# from the job's own configuration only.
DEFAULT_SECTIONS = frozenset(
    {"worker", "transfer", "staging", "log_level", "source", "destination"}
)
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


# --------------------------------------------------------------------------- build


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
    """``sandbox/`` next to the package (a source checkout), else ``./sandbox``."""
    beside = Path(__file__).resolve().parents[1] / "sandbox"
    return beside if (beside / LAUNCH_NAME).is_file() else Path("sandbox")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _walk(src: Path) -> Iterator[tuple[str, Path]]:
    for root, dirs, files in os.walk(src):
        dirs.sort()
        rel_root = Path(root).relative_to(src).as_posix()
        for name in sorted(dirs + files):
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if not _SKIP.search(rel):
                yield rel, Path(root) / name
        dirs[:] = [d for d in dirs if not _SKIP.search(d)]


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
            if key.endswith(("_file", "-file", ".file", "file")) or m["value"].startswith(
                ("$", "{")
            ):
                continue  # a path to a secret, or a variable reference: not a secret
            line = text.count("\n", 0, m.start()) + 1
            raise SandboxBuildError(
                f"sandbox {src}: {rel} line {line} sets {m['key']!r}; "
                "credentials never go into the sandbox"
            )
    defaults = src / DEFAULTS_NAME
    if defaults.is_file():
        load_defaults(defaults, error=SandboxBuildError, label=f"sandbox {src}: {DEFAULTS_NAME}")


def build(src: Path, output: Path, *, secrets: Iterable[str] = ()) -> Built:
    """Pack ``src`` into a reproducible tar.gz at ``output`` (+ ``output.sha256``)."""
    src = Path(src)
    if not (src / LAUNCH_NAME).is_file():
        raise SandboxBuildError(f"{src} is not a sandbox directory: no {LAUNCH_NAME} in it")
    check_no_credentials(src, secrets)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    files: list[str] = []
    try:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
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
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    digest = sha256_file(output)
    Path(f"{output}.sha256").write_text(f"{digest}  {output.name}\n")
    return Built(output, digest, output.stat().st_size, files)


# --------------------------------------------------------------------------- record


def record_id(night: str | None) -> str:
    """``sandbox:<NIGHT>``, or ``sandbox`` for every night (token ids cannot look like either)."""
    if night is None:
        return DOC_TYPE
    from GRID_XFER.token import check_id_part

    return f"{DOC_TYPE}:{check_id_part(night, 'night')}"


def _check_plain_url(url: str) -> None:
    check_plain_url(url, "the sandbox URL", error=SandboxBuildError)


def lookup(couch: Couch, night: str | None) -> dict[str, Any] | None:
    """The record a worker of ``night`` uses: the night's own, else the default."""
    for doc_id in ([record_id(night)] if night else []) + [record_id(None)]:
        doc = couch.get_or_none(doc_id)
        if doc and doc.get("type") == DOC_TYPE and doc.get("url") and doc.get("sha256"):
            return doc
    return None


def save_record(
    couch: Couch, *, url: str, sha256: str, size: int, night: str | None, name: str
) -> dict[str, Any]:
    _check_plain_url(url)
    doc: dict[str, Any] = {
        "_id": record_id(night),
        "type": DOC_TYPE,
        "token_set": night,
        "url": url,
        "sha256": sha256,
        "size": size,
        "name": name,
        "uploaded": time.time(),
        "uploaded_by": socket.gethostname(),
    }
    for _ in range(3):
        current = couch.get_or_none(doc["_id"])
        if current is not None:
            doc["_rev"] = current["_rev"]
        else:
            doc.pop("_rev", None)
        try:
            couch.put(doc)
            return doc
        except Conflict:
            continue
    raise SandboxError(f"could not record the sandbox in {doc['_id']}: changed concurrently")


# --------------------------------------------------------------------------- transfer


def as_url(location: str) -> str:
    """A plain path becomes a ``file://`` URL; URLs pass through."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", location):
        return location
    return f"file://{Path(location).expanduser().resolve()}"


def _remote_sha256(storage: Storage, url: str, limit: int = MAX_ARCHIVE_BYTES) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    for chunk in storage.open_read(url, 1024 * 1024):
        size += len(chunk)
        if size > limit:
            raise SandboxError(f"sandbox {_shown(url)} is larger than {limit} bytes")
        h.update(chunk)
    return h.hexdigest(), size


def _shown(url: str) -> str:
    return redact(url)


def upload(
    storage: Storage,
    couch: Couch,
    archive: Path,
    url: str,
    *,
    night: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Copy ``archive`` to ``url``, check it by reading it back, record it for ``night``."""
    from GRID_XFER.storage import StorageError

    archive = Path(archive)
    if not archive.is_file():
        raise SandboxBuildError(f"no sandbox archive {archive}; run `gridxfer sandbox build` first")
    digest = sha256_file(archive)
    sidecar = Path(f"{archive}.sha256")
    if sidecar.is_file() and sidecar.read_text().split()[:1] != [digest]:
        raise SandboxChecksumError(f"{archive} does not match {sidecar.name}; rebuild it")
    record_id(night)  # a bad night name fails before anything is copied
    url = as_url(url)
    if url.endswith("/"):
        url += archive.name
    _check_plain_url(url)
    size = archive.stat().st_size
    try:
        present = storage.exists(url)
        if present and _remote_sha256(storage, url)[0] == digest:
            log.info("%s already holds this sandbox", _shown(url))
        else:
            if present and not overwrite:
                raise SandboxBuildError(
                    f"{_shown(url)} exists with other content; use --overwrite "
                    "(running workers may then fetch a half-written file) "
                    "or a new name"
                )
            storage.copy(as_url(str(archive)), url, size=size, overwrite=overwrite)
            remote, _ = _remote_sha256(storage, url)
            if remote != digest:
                raise SandboxChecksumError(
                    f"{_shown(url)} reads back with SHA-256 {remote}, not {digest}"
                )
    except StorageError as exc:
        raise SandboxUploadError(f"sandbox upload failed: {exc}") from None
    return save_record(couch, url=url, sha256=digest, size=size, night=night, name=archive.name)


def fetch(
    storage: Storage, url: str, sha256: str, dest: Path, limit: int = MAX_ARCHIVE_BYTES
) -> Path:
    """Download ``url`` to the file ``dest`` and check its SHA-256 (10 / 11 on failure)."""
    from GRID_XFER.storage import StorageError

    h = hashlib.sha256()
    size = 0
    try:
        with open(dest, "wb") as out:
            for chunk in storage.open_read(as_url(url), 1024 * 1024):
                size += len(chunk)
                if size > limit:
                    raise SandboxError(f"sandbox {_shown(url)} is larger than {limit} bytes")
                h.update(chunk)
                out.write(chunk)
    except StorageError as exc:
        raise SandboxError(f"sandbox fetch failed: {exc}") from None
    except OSError as exc:
        raise SandboxError(f"sandbox fetch failed: cannot write {dest}: {exc.strerror}") from None
    got = h.hexdigest()
    if got != sha256.strip().lower():
        raise SandboxChecksumError(
            f"sandbox {_shown(url)} has SHA-256 {got}, recorded "
            f"{sha256.strip().lower()} (corrupted or replaced)"
        )
    log.info("fetched sandbox %s (%d bytes, sha256 ok)", _shown(url), size)
    return dest


# --------------------------------------------------------------------------- extraction


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
    links = {n for n, m in zip(names, members, strict=False) if m.issym() or m.islnk()}
    seen: dict[str, tarfile.TarInfo] = {}
    total = 0
    plan = []
    for name, m in zip(names, members, strict=False):
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
        if m.isreg():
            if m.size < 0:
                raise SandboxError(f"unsafe sandbox: {name!r} has a negative size")
            total += m.size
            if total > max_bytes:
                raise SandboxError(f"unsafe sandbox: unpacks to more than {max_bytes} bytes")
        elif m.issym():
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
        seen[name] = m
        plan.append((name, m))
    return plan


def _inside(root: Path, path: Path) -> bool:
    real = os.path.realpath(path)
    return real == str(root) or real.startswith(str(root) + os.sep)


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
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise SandboxError(
            f"sandbox {Path(archive).name} is not a readable tar.gz: {exc}"
        ) from None
    written: list[str] = []
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise SandboxError(f"sandbox {Path(archive).name} is damaged: {exc}") from None
        plan = check_members(members)
        try:
            for name, m in plan:
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
                    with open(source, "rb", opener=_nofollow_read) as src:
                        _write_new(target, src, 0o644, m.size if m.size else None)
                else:
                    src = tar.extractfile(m)
                    if src is None:
                        raise SandboxError(f"sandbox member {name!r} cannot be read")
                    with src:
                        _write_new(target, src, 0o755 if m.mode & 0o111 else 0o644, m.size)
                written.append(name)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise SandboxError(f"sandbox {Path(archive).name} is damaged: {exc}") from None
        except OSError as exc:
            raise SandboxError(
                f"cannot unpack the sandbox into {dest}: {exc.strerror or exc}"
                f" ({getattr(exc, 'filename', '') or ''})"
            ) from None
    return written


def _nofollow_read(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def _write_new(target: Path, src: io.BufferedIOBase | Any, mode: int, size: int | None) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(1024 * 1024):
            written += len(chunk)
            if size is not None and written > size:
                raise SandboxError(f"sandbox member {target.name!r} is longer than its header says")
            out.write(chunk)
    os.chmod(target, mode, follow_symlinks=False)


# --------------------------------------------------------------------------- defaults


def load_defaults(
    path: Path, *, error: type[GridXferError] = SandboxError, label: str | None = None
) -> dict[str, Any]:
    """The sandbox's worker defaults (``worker.yaml``); only DEFAULT_SECTIONS allowed."""
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
    """``over`` wins; mappings are merged key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- node side


@contextmanager
def interruptible() -> Iterator[None]:
    """Until the worker installs its own handlers, SIGTERM/SIGINT clean up and exit 128+N."""

    def handler(signum: int, frame: Any) -> None:
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


def _resolve_record(couch_factory: Any, night: str | None) -> tuple[str, str]:
    url, digest = os.environ.get("GRIDXFER_SANDBOX_URL"), os.environ.get("GRIDXFER_SANDBOX_SHA256")
    if url or digest:
        if not (url and digest):
            raise SandboxError("GRIDXFER_SANDBOX_URL and GRIDXFER_SANDBOX_SHA256 go together")
        return url, digest
    doc = lookup(couch_factory(), night)
    if doc is None:
        raise SandboxError(
            f"no sandbox recorded for {'night ' + night if night else 'any night'}"
            " (run `gridxfer sandbox upload`)"
        )
    return doc["url"], doc["sha256"]


def fetch_into(dest: Path, night: str | None, *, config: Any = None) -> Path:
    """Fetch, verify and unpack the recorded sandbox into ``dest/sandbox``; return that."""
    from GRID_XFER.config import load_config
    from GRID_XFER.couch import Couch
    from GRID_XFER.storage import Storage

    cfg = config or load_config()
    # Like the worker, ride out a database outage rather than lose the job.
    url, digest = _resolve_record(
        lambda: Couch(cfg.couchdb, outage_seconds=cfg.worker.outage_seconds), night
    )
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / ARCHIVE_NAME
    if archive.exists():
        raise SandboxError(f"{archive} exists already")
    storage = Storage(base_timeout=cfg.transfer.base_timeout, min_rate=cfg.transfer.min_rate)
    fetch(storage, url, digest, archive)
    target = dest / "sandbox"
    try:
        safe_extract(archive, target)
    finally:
        archive.unlink(missing_ok=True)
    return target


def job_config(sandbox_dir: Path | None, work: Path) -> Path:
    """The worker's configuration: the sandbox defaults under the job's own file."""
    from GRID_XFER.config import find_config_file

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
    from GRID_XFER.config import load_config

    for name in ("GRIDXFER_CONFIG", "GRIDXFER_COUCHDB_PASSWORD_FILE"):
        _absolute_env(name)  # we change directory below
    base = scratch or os.environ.get("GRIDXFER_SCRATCH") or None
    job_dir = Path(tempfile.mkdtemp(prefix="gridxfer-job-", dir=base))
    home = os.getcwd()
    try:
        with interruptible():
            sandbox_dir: Path | None = None
            if fetch_mode != "none":
                sandbox_dir = fetch_into(job_dir, night, config=load_config())
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
