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

import logging
import time
from collections.abc import Callable
from typing import Any

from GRID_XFER import token as tk
from GRID_XFER.config import StagingConfig
from GRID_XFER.errors import Code
from GRID_XFER.staging import LOST, ON_TAPE, PollReport, destination_urls, state_all
from GRID_XFER.storage import Storage, redact

log = logging.getLogger(__name__)


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
        report = PollReport()
        now = self.clock()
        for doc in pool.archiving(night):
            named = destination_urls(doc)
            states = state_all(self.storage, [u for _, u in named], threads=self.cfg.threads)
            gone = [(n, s) for (n, _), s in zip(named, states, strict=False) if s.state == LOST]
            if gone:
                name, s = gone[0]
                tk.archive_failed(
                    doc,
                    Code.ARCHIVE_FAILED,
                    f"archive failed: {redact(s.url)}: {s.message or s.state}",
                    now,
                    file=name,
                )
                bucket = report.failed
            elif all(s.state in ON_TAPE for s in states):
                tk.archived(doc, now)
                bucket = report.done
            elif now > doc.get("archive_deadline", float("inf")):
                waiting = [
                    (n, s)
                    for (n, _), s in zip(named, states, strict=False)
                    if s.state not in ON_TAPE
                ]
                tk.archive_failed(
                    doc,
                    Code.ARCHIVE_TIMEOUT,
                    f"{len(waiting)} of {len(states)} file(s) not on tape after "
                    f"{now - doc.get('archiving_since', now):.0f} s (e.g. "
                    f"{waiting[0][0]}: {waiting[0][1].state})",
                    now,
                    file=waiting[0][0],
                )
                bucket = report.timed_out
            else:
                report.pending.append(doc["_id"])
                continue
            if pool.save(doc):
                bucket.append(doc["_id"])
                log.info("%s: %s", doc["_id"], doc["state"])
            else:
                report.conflicts += 1
        return report
