"""Checksum manifests and streaming hashes, in pure Python.

Manifests come from the telescope side (``sha256sum`` output, DESI style, or
the same layout with adler32 values), so the parser accepts what real tools and
editors produce (CRLF, upper-case hex, ``*`` binary markers, ``./`` prefixes,
GNU escaped names) and rejects anything that could silently skip or
misattribute a file. Hashing reads fixed-size chunks into one reusable buffer
so memory stays constant whatever the file size.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable
from os import PathLike

from GRID_XFER.errors import ConfigError, ManifestError

CHUNK_SIZE = 4 * 1024 * 1024

# Hex digits per algorithm; the keys are the names used in manifests and config.
ALGORITHMS: dict[str, int] = {"sha256": 64, "adler32": 8}

_MANIFEST_SUFFIX = {"sha256": "sha256sum", "adler32": "adler32"}

# "<hex>  <name>" (text mode) or "<hex> *<name>" (binary mode); a leading
# backslash marks a GNU-escaped name (one containing "\\" or a newline).
_LINE = re.compile(r"(?P<esc>\\?)(?P<hex>[0-9A-Fa-f]+)(?: (?P<sep>[ *]?)(?P<name>.*))?")
_UNESCAPE = {"\\\\": "\\", "\\n": "\n", "\\r": "\r"}


def normalise_algo(algo: str) -> str:
    """Lower-case algorithm name, so "ADLER32" (gfal2 style) and "adler32" agree."""
    name = algo.strip().lower()
    if name not in ALGORITHMS:
        raise ConfigError(
            f"unsupported checksum algorithm {algo!r}; use one of {', '.join(ALGORITHMS)}"
        )
    return name


def manifest_name(exposure: str, algo: str) -> str:
    """File name of an exposure's manifest: ``checksum-<EXPOSURE>.sha256sum`` or ``.adler32``."""
    return f"checksum-{exposure}.{_MANIFEST_SUFFIX[normalise_algo(algo)]}"


def _clean_name(name: str, escaped: bool) -> str | None:
    """Return the relative file name, or None if it would escape the exposure directory."""
    if escaped:
        name = re.sub(r"\\[\\nr]", lambda m: _UNESCAPE[m.group(0)], name)
    while name.startswith("./"):
        name = name[2:]
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    return name


def parse_manifest(text: str, algo: str, *, source: str = "manifest") -> dict[str, str]:
    """Map relative file name -> lower-case hex checksum.

    Any malformed line is an error rather than skipped: a silently dropped line
    would let a file travel unverified. ``source`` names the manifest in messages.
    """
    algo = normalise_algo(algo)
    width = ALGORITHMS[algo]
    if text.startswith("\ufeff"):
        text = text[1:]
    result: dict[str, str] = {}
    # Split on "\n" only: str.splitlines() would also break names at \x1c, \u2028, ...
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{source} line {lineno}"
        match = _LINE.fullmatch(line.lstrip())
        if match is None:
            raise ManifestError(
                f"{where}: expected '<{algo} hex>  <file name>', got {_excerpt(stripped)}"
            )
        digest = match["hex"]
        if len(digest) != width:
            raise ManifestError(
                f"{where}: {algo} checksum must have {width} hex digits, got {len(digest)}"
            )
        if not (match["name"] or "").strip():
            raise ManifestError(f"{where}: checksum {digest.lower()} has no file name")
        name = _clean_name(match["name"], escaped=bool(match["esc"]))
        if name is None:
            raise ManifestError(
                f"{where}: file name {_excerpt(match['name'])} is not a relative path"
            )
        digest = digest.lower()
        if result.get(name, digest) != digest:
            raise ManifestError(f"{where}: {_excerpt(name)} listed again with a different checksum")
        result[name] = digest
    return result


def _excerpt(text: str, limit: int = 60) -> str:
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)  # repr keeps the message on one line whatever the name holds


class Hasher:
    """Incremental sha256 or adler32 with one interface, for streaming data."""

    def __init__(self, algo: str) -> None:
        self.algo = normalise_algo(algo)
        self._sha = hashlib.sha256() if self.algo == "sha256" else None
        self._adler = 1

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._sha is not None:
            self._sha.update(data)
        else:
            self._adler = zlib.adler32(data, self._adler)

    def hexdigest(self) -> str:
        if self._sha is not None:
            return self._sha.hexdigest()
        return f"{self._adler:08x}"


def hash_chunks(chunks: Iterable[bytes | bytearray | memoryview], algo: str) -> str:
    """Hex digest of the concatenation of ``chunks`` (e.g. ``Storage.open_read``)."""
    hasher = Hasher(algo)
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.hexdigest()


def hash_file(path: str | PathLike[str], algo: str, *, chunk_size: int = CHUNK_SIZE) -> str:
    """Hex digest of a local file, reading into one reused buffer (no per-chunk allocation)."""
    hasher = Hasher(algo)
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            hasher.update(view[:n])
    return hasher.hexdigest()
