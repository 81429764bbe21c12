"""Finding ready exposures and late files, and turning them into tokens.

Incremental: an exposure whose directory has not changed since it last became
(or updated) a token is not walked again, so a cycle over a finished night is
one listing of the night's directory. Every ``rescan_seconds`` a night is
walked in full, which finds what a directory's time cannot show (a file
rewritten in place, a late file in a subdirectory). An exposure becomes a
token only when it is *ready*: its manifest is there and nothing in it changed
for ``quiet_seconds``, or its marker file is there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from GRID_XFER import scan
from GRID_XFER.checksum import manifest_name, normalise_algo
from GRID_XFER.create import apply_template
from GRID_XFER.errors import Code, InvalidToken, StorageError
from GRID_XFER.nightly.nights import Night
from GRID_XFER.nightly_config import StreamConfig
from GRID_XFER.pool import CreateReport, Pool
from GRID_XFER.storage import Stat, Storage
from GRID_XFER.token import ExposureSpec, check_id_part, token_id
from GRID_XFER.urls import join

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ready:
    spec: ExposureSpec
    mtime: float  # of its directory when it was found ready


@dataclass
class Found:
    """One night's cycle: what became tokens and what is still being written."""

    night: str
    ready: list[Ready] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # present, not ready yet
    untouched: int = 0  # not walked: nothing changed since their token
    report: CreateReport = field(default_factory=CreateReport)
    reopened: list[str] = field(default_factory=list)  # done tokens with late files
    problems: dict[str, str] = field(default_factory=dict)  # exposures it could not read

    def as_dict(self) -> dict[str, Any]:
        return {
            "night": self.night,
            "ready": [r.spec.exposure for r in self.ready],
            "waiting": self.waiting,
            "untouched": self.untouched,
            **self.report.as_dict(),
            "reopened": self.reopened,
            "problems": self.problems,
        }


class Discovery:
    """One stream's view of its source; remembers what it already turned into tokens."""

    def __init__(
        self,
        stream: StreamConfig,
        storage: Storage,
        *,
        algo: str = "sha256",
        rescan_seconds: float = 3600.0,
        threads: int = 16,
        clock: Callable[[], float],
    ) -> None:
        self.stream = stream
        self.storage = storage
        self.algo = normalise_algo(algo)
        self.rescan_seconds = rescan_seconds
        self.threads = threads
        self.clock = clock
        self.template = scan.load_template(stream.template) if stream.template else None
        self._seen: dict[tuple[str, str], float] = {}  # (night, exposure) -> dir mtime
        self._full: dict[str, float] = {}  # night -> time of its last full walk
        self._refused: set[tuple[str, str]] = set()  # names said to be no exposure

    def look(self, night: Night) -> Found:
        """What is ready in ``night`` and not yet a token as it is now (no writes).

        StorageError other than a missing night directory propagates: the source is
        unreachable, which the service reports.
        """
        found = Found(night.name)
        url = join(self.stream.source, night.directory)
        try:
            entries = self.storage.scandir(url)
        except StorageError as err:
            if err.code == Code.SOURCE_MISSING:
                return found  # nothing observed yet
            raise
        now = self.clock()
        if now - self._full.get(night.name, 0.0) >= self.rescan_seconds:
            self._full[night.name] = now
            self._seen = {k: v for k, v in self._seen.items() if k[0] != night.name}
        todo = []
        for name, st in entries:
            if not st.is_dir or not self._named(night, name):
                continue
            if self._seen.get((night.name, name)) == st.mtime:
                found.untouched += 1
            else:
                todo.append((name, st))
        # Walked in parallel (gfal2 releases the GIL), as `tokens create` scans.
        with ThreadPoolExecutor(max_workers=max(1, min(self.threads, len(todo)))) as ex:
            futures = [ex.submit(self._ready_spec, night, url, n, st, now) for n, st in todo]
            for (name, st), fut in zip(todo, futures, strict=True):
                try:
                    spec = fut.result()
                except StorageError as err:
                    if err.transient:
                        raise  # the source is away: the service says so
                    # One exposure it cannot read (permissions being fixed, removed
                    # meanwhile) waits; the others go on.
                    log.warning("%s: %s: %s; looked at next cycle", night.name, name, err)
                    found.problems[name] = str(err)
                    spec = None
                if spec is None:
                    found.waiting.append(name)
                else:
                    found.ready.append(Ready(spec, st.mtime))
        return found

    def _named(self, night: Night, name: str) -> bool:
        """A name a token id can hold; any other directory is said once, not skipped
        silently (its data would never move)."""
        try:
            check_id_part(name, "exposure")
        except InvalidToken as err:
            if (night.name, name) not in self._refused:
                self._refused.add((night.name, name))
                log.warning("%s: %s is not moved: %s", night.name, name, err)
            return False
        return True

    def _ready_spec(
        self, night: Night, url: str, exposure: str, st: Stat, now: float
    ) -> ExposureSpec | None:
        exp_url = join(url, exposure)
        refused: dict[str, str] = {}
        present = self.storage.walk(exp_url, refused=refused)
        ready = self.stream.ready
        marker = ready.marker.replace("{exposure}", exposure) if ready.marker else None
        if marker is not None:
            if marker not in present:
                return None
        elif manifest_name(exposure, self.algo) not in present:
            return None
        else:
            # Storage gives whole seconds (gfal2 truncates): a second more makes
            # sure the last write is at least quiet_seconds old.
            newest = max([st.mtime, *(s.mtime for s in present.values())])
            if now - newest < ready.quiet_seconds + 1:
                return None
        spec = scan.scan_exposure(
            self.storage,
            url,
            exposure,
            algo=self.algo,
            destination=join(self.stream.destination, night.name),
            listing=(present, refused),
        )
        if marker is not None:  # the marker says "complete"; it is no data to move
            spec = spec.model_copy(update={"files": [f for f in spec.files if f.name != marker]})
        return spec

    def make_tokens(self, pool: Pool, night: Night, found: Found) -> Found:
        """Create or update the ready exposures' tokens; done ones with late files reopen."""
        if not found.ready:
            return found
        specs = [r.spec for r in found.ready]
        if self.template is not None:
            specs = apply_template(specs, self.template)
        found.report = pool.create(night.name, specs)
        held = set(found.report.skipped)
        if found.report.outdated:
            found.reopened = pool.reopen(found.report.outdated)
            again = [s for s in specs if token_id(night.name, s.exposure) in found.reopened]
            if again:
                second = pool.create(night.name, again)
                found.report.updated += second.updated
                # Claimed between the two writes: the late files wait for the next look.
                held = held - set(found.reopened) | set(second.skipped)
        for r in found.ready:  # a token someone holds is looked at again next cycle
            if token_id(night.name, r.spec.exposure) not in held:
                self._seen[(night.name, r.spec.exposure)] = r.mtime
        return found
