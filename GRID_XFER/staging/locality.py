"""File locality: where each file of a token is (disk, tape, both, gone), asked in parallel.

gfal2's ``user.status`` answer is one of :data:`LOCALITIES`; anything else (UNKNOWN,
a plugin's own word) counts as UNAVAILABLE, and a missing file as LOST, so callers
only ever see these five words.
"""

from __future__ import annotations

import errno as E
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from GRID_XFER.errors import StorageError
from GRID_XFER.storage import Storage
from GRID_XFER.urls import join, redact

ONLINE, NEARLINE, BOTH = "ONLINE", "NEARLINE", "ONLINE_AND_NEARLINE"
UNAVAILABLE, LOST = "UNAVAILABLE", "LOST"
LOCALITIES = (ONLINE, NEARLINE, BOTH, UNAVAILABLE, LOST)
ON_DISK = frozenset({ONLINE, BOTH})
ON_TAPE = frozenset({NEARLINE, BOTH})
PROBLEMS = frozenset({UNAVAILABLE, LOST})
# Schemes that are never tape-backed: no question asked.
DISK_ONLY_SCHEMES = ("file://",)

# Processes for a large state-all: an XRootD server answers the requests of one
# connection one after the other, and all threads of a process share one
# connection per server, so threads only help while the client's CPU is the limit.
# Each process has its own connection. Worth its start-up (~0.5 s) only when the
# answers are slow: decided from the first PROBE files.
PROBE = 32
PROCESSES_WORTH = 1.5  # seconds the rest would take in threads

T = TypeVar("T")


@dataclass(frozen=True)
class FileState:
    url: str
    state: str
    message: str = ""

    def as_dict(self) -> dict[str, str]:
        out = {"url": redact(self.url), "state": self.state}
        if self.message:
            out["message"] = self.message
        return out


def classify(value: str) -> tuple[str, str]:
    """(locality, message) for a gfal2 ``user.status`` answer: unknown words are UNAVAILABLE."""
    value = value.upper()
    if value not in LOCALITIES:  # UNKNOWN, or a plugin's own word
        return UNAVAILABLE, f"storage says {value or 'nothing'}"
    return value, ""


def locality(storage: Storage, url: str) -> FileState:
    """One file's locality; a missing file is LOST, an unreachable one UNAVAILABLE."""
    try:
        value = storage.status(url)
    except StorageError as err:
        if err.errno == E.ENOENT:
            return FileState(url, LOST, "no such file")
        return FileState(url, UNAVAILABLE, str(err))
    return FileState(url, *classify(value))


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    """``items`` in consecutive slices of ``size`` (the last one shorter)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def state_all(
    storage: Storage,
    urls: Iterable[str],
    *,
    threads: int = 16,
    batch: int = 50,
    executor: ThreadPoolExecutor | None = None,
) -> list[FileState]:
    """Locality of every URL, queried in parallel batches (one gfal2 context per thread).

    A long-lived ``executor`` keeps its threads, and so their gfal2 contexts and
    connections, from one call to the next.
    """
    urls = list(urls)
    if not urls:
        return []

    def run(chunk: list[str]) -> list[FileState]:
        return [locality(storage, u) for u in chunk]

    size = max(1, min(batch, -(-len(urls) // threads)))
    if len(urls) <= size:
        return run(urls)
    if executor is not None:
        return [fs for part in executor.map(run, chunks(urls, size)) for fs in part]
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(urls)))) as ex:
        return [fs for part in ex.map(run, chunks(urls, size)) for fs in part]


_CHILD_STORAGE: Storage | None = None


def _chunk_states(urls: list[str], threads: int) -> list[tuple[str, str, str]]:
    """Run in a child process: its own gfal2 context(s) and XRootD connection."""
    global _CHILD_STORAGE
    if _CHILD_STORAGE is None:
        _CHILD_STORAGE = Storage()
    return [(f.url, f.state, f.message) for f in state_all(_CHILD_STORAGE, urls, threads=threads)]


def state_all_processes(urls: list[str], *, processes: int, threads: int) -> list[FileState]:
    """state_all spread over ``processes`` fresh processes (forkserver: none inherits
    this process's gfal2/XRootD threads)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # children then import nothing
    size = -(-len(urls) // (processes * 4))  # a few chunks each, so none waits on a slow one
    with ProcessPoolExecutor(max_workers=processes, mp_context=ctx) as ex:
        parts = ex.map(_chunk_states, chunks(urls, size), [1] * len(urls))
        return [FileState(*t) for part in parts for t in part]


@dataclass
class StateReport:
    """GRID_LRT's state_all and percent_staged in one: states plus a summary."""

    files: list[FileState]
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in LOCALITIES}
        for f in self.files:
            out[f.state] = out.get(f.state, 0) + 1
        return out

    def percent(self, states: frozenset[str]) -> float:
        if not self.files:
            return 0.0
        return round(100.0 * sum(1 for f in self.files if f.state in states) / len(self.files), 2)

    @property
    def problems(self) -> list[FileState]:
        return [f for f in self.files if f.state in PROBLEMS]

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": len(self.files),
            "counts": self.counts,
            "percent_online": self.percent(ON_DISK),
            "percent_on_tape": self.percent(ON_TAPE),
            "seconds": round(self.seconds, 3),
            "files": [f.as_dict() for f in self.files],
        }


def token_urls(token: dict[str, Any]) -> list[tuple[str, str]]:
    """(file name, source URL) of each file of a token."""
    src = token.get("source") or ""
    return [(f["name"], f.get("url") or join(src, f["name"])) for f in token.get("files", [])]


def destination_urls(token: dict[str, Any]) -> list[tuple[str, str]]:
    """(file name, destination URL) of each file of a token: where the archive poll looks."""
    dst = token.get("destination") or ""
    return [(f["name"], join(dst, f["name"])) for f in token.get("files", [])]


def may_be_on_tape(url: str) -> bool:
    return not url.startswith(DISK_ONLY_SCHEMES)


def name_of(token: dict[str, Any], url: str) -> str | None:
    """The token's name for the file at source ``url`` (for ``error.file``)."""
    return next((name for name, u in token_urls(token) if u == url), None)
