"""Archive confirmation: a copy to a tape-backed destination is done only once on tape.

The disk buffer in front of tape accepts a file long before it is migrated,
and a file lost before migration is lost for good. With
``staging.tape_destination`` set, a worker moves a copied token to
``archiving`` and goes on with other work; the archive poll (run by workers
between claims, and by ``gridxfer stage --poll``) asks the destination for
each file's locality and ends the token ``done`` once every file reports
NEARLINE or ONLINE_AND_NEARLINE, in error 50 when a file is gone, or in error
51 when migration did not happen within ``staging.archive_timeout``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from GRID_XFER import token as tk
from GRID_XFER.config import StagingConfig
from GRID_XFER.errors import Code
from GRID_XFER.staging.locality import LOST, ON_TAPE, FileState, destination_urls, state_all
from GRID_XFER.staging.poll import PENDING, PollReport, Verdict, run_poll
from GRID_XFER.storage import Storage
from GRID_XFER.urls import redact


class Archive:
    def __init__(
        self, storage: Storage, cfg: StagingConfig, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.storage = storage
        self.cfg = cfg
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return self.cfg.tape_destination

    def hold(self, lease: float) -> float:
        """How long an archiving token stays held: past its timeout, so the poll decides."""
        return self.cfg.archive_timeout + lease

    def fields(self) -> dict[str, Any]:
        return {"archive_deadline": self.clock() + self.cfg.archive_timeout}

    def poll(self, pool: Any, night: str | None = None) -> PollReport:
        """Move archiving tokens on: done when on tape, error 50/51 when not to be."""
        return run_poll(self, pool, night, self.clock)

    def waiting(self, pool: Any, night: str | None) -> list[dict[str, Any]]:
        return list(pool.archiving(night))

    def verdicts(
        self, docs: list[dict[str, Any]], now: float
    ) -> Iterator[tuple[dict[str, Any], Verdict]]:
        for doc in docs:
            urls = [u for _, u in destination_urls(doc)]
            yield (
                doc,
                decide_archive(doc, state_all(self.storage, urls, threads=self.cfg.threads), now),
            )

    def settle(self, doc: dict[str, Any], verdict: Verdict, now: float) -> None:
        if verdict.bucket == "done":
            tk.archived(doc, now)
        else:
            assert verdict.code is not None
            tk.archive_failed(doc, verdict.code, verdict.message, now, file=verdict.file)


def decide_archive(doc: dict[str, Any], states: list[FileState], now: float) -> Verdict:
    """An archiving token's verdict from its destination files' localities (in file
    order): a file gone fails it (50), all on tape makes it done, past its
    deadline it times out (51)."""
    named = [(n, s) for (n, _), s in zip(destination_urls(doc), states, strict=False)]
    gone = [(n, s) for n, s in named if s.state == LOST]
    if gone:
        name, s = gone[0]
        message = f"archive failed: {redact(s.url)}: {s.message or s.state}"
        return Verdict("failed", Code.ARCHIVE_FAILED, message, name)
    if all(s.state in ON_TAPE for s in states):
        return Verdict("done")
    if now > doc.get("archive_deadline", float("inf")):
        waiting = [(n, s) for n, s in named if s.state not in ON_TAPE]
        return Verdict(
            "timed_out",
            Code.ARCHIVE_TIMEOUT,
            f"{len(waiting)} of {len(states)} file(s) not on tape after "
            f"{now - doc.get('archiving_since', now):.0f} s (e.g. "
            f"{waiting[0][0]}: {waiting[0][1].state})",
            waiting[0][0],
        )
    return Verdict(PENDING)
