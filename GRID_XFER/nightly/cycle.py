"""One stream's cycle: discover, reap, tape, staff, watch, report.

``check`` runs between steps (and before each night's tokens are written): it
raises when the service must stop, or when the leader lease is no longer ours,
so a step is never followed by another once either is true.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from GRID_XFER import pause
from GRID_XFER.app import App
from GRID_XFER.couch import Couch
from GRID_XFER.errors import GridXferError, StorageError
from GRID_XFER.nightly import report as rp
from GRID_XFER.nightly.alerts import Alerter
from GRID_XFER.nightly.discover import Discovery, Found
from GRID_XFER.nightly.nights import Night, window
from GRID_XFER.nightly.report import remaining
from GRID_XFER.nightly.sinks import Sink
from GRID_XFER.nightly.watch import Counts, Watch
from GRID_XFER.nightly.workforce import Workforce
from GRID_XFER.nightly_config import StreamConfig
from GRID_XFER.pool import Pool
from GRID_XFER.views import DDOC

log = logging.getLogger(__name__)


@dataclass
class CycleReport:
    time: float
    leader: bool
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self, stream: str) -> str | None:
        """One line of what changed for ``stream`` in this cycle; None if nothing did."""
        s = self.streams.get(stream) or {}
        parts = []
        for night, found in (s.get("nights") or {}).items():
            done = {k: found.get(k) for k in ("created", "updated", "reopened")}
            said = [f"{len(v) if isinstance(v, list) else v} {k}" for k, v in done.items() if v]
            if said:
                parts.append(f"{night}: " + ", ".join(said))
        started = sum(x["count"] for x in (s.get("staffing") or {}).get("started", []))
        for what, n in (
            ("worker(s) started", started),
            ("token(s) reaped", s.get("reaped", 0)),
            ("tape token(s) moved on", sum((s.get("tape") or {}).values())),
            ("report(s) sent", len(s.get("reports") or [])),
        ):
            if n:
                parts.append(f"{n} {what}")
        if s.get("failed"):
            parts.append(f"failed: {s['failed']}")
        return f"{stream}: " + "; ".join(parts) if parts else None


@dataclass
class Context:
    """What every stream's cycle shares with the service."""

    app: App
    couch: Couch
    pool: Pool
    alerter: Alerter
    sinks: list[Sink]
    dry_run: bool
    clock: Callable[[], float]
    check: Callable[[], None]


class StreamCycle:
    """One stream: its discovery, workers and watch, kept from cycle to cycle."""

    def __init__(self, ctx: Context, stream: StreamConfig) -> None:
        cfg = ctx.app.config
        self.ctx = ctx
        self.config = stream
        self.discovery = Discovery(
            stream,
            ctx.app.storage(),
            algo=cfg.transfer.manifest,
            rescan_seconds=cfg.nightly.rescan_seconds,
            threads=cfg.transfer.scan_threads,
            clock=ctx.clock,
        )
        self.workforce = Workforce(cfg, stream, dry_run=ctx.dry_run)
        a = cfg.nightly.alerts
        self.watch = Watch(stream.name, ctx.alerter, a.stall_minutes * 60, a.samples)
        self.samples = a.samples

    def run(self) -> dict[str, Any]:
        ctx = self.ctx
        nights = window(self.config, ctx.clock())
        out: dict[str, Any] = {"nights": {}}
        waiting = self._discover(nights, out)
        ctx.check()
        if not ctx.dry_run:
            out["reaped"] = sum(len(self._reap(n.name)) for n in nights)
            ctx.check()
            out["tape"] = self._tape(nights)
            ctx.check()
        counts = ctx.pool.counts()
        mine: dict[str, Counts] = {n.name: counts.get(n.name, {}) for n in nights}
        out["staffing"] = self._staff(mine)
        ctx.check()
        for n in nights:
            if mine[n.name].get("error", {}).get("count", 0):
                self.watch.errors(n.name, self._codes(n.name), self._samples)
            self.watch.deadline(n, mine[n.name], waiting.get(n.name, 0), ctx.clock())
        self.watch.progress(mine, ctx.clock())
        ctx.check()
        out["reports"] = [
            n.name for n in nights if self._report(n, mine[n.name], waiting.get(n.name, 0))
        ]
        return out

    # -- the steps ---------------------------------------------------------------
    def _discover(self, nights: list[Night], out: dict[str, Any]) -> dict[str, int]:
        """Each night on its own: a night the source cannot list does not hold up the
        others; an exposure it cannot read waits (discover.py)."""
        waiting: dict[str, int] = {}
        problem = None
        for n in nights:
            try:
                found = self.discovery.look(n)
            except StorageError as exc:
                log.warning("%s: night %s: source: %s", self.config.name, n.name, exc)
                problem = str(exc)
                continue
            self.ctx.check()  # the lease may have run out during a long walk
            if self.ctx.dry_run:
                self._would_create(found)
            else:
                self.discovery.make_tokens(self.ctx.pool, n, found)
            waiting[n.name] = len(found.waiting)
            out["nights"][n.name] = found.as_dict()
        self.watch.reachable("source", problem)
        return waiting

    def _would_create(self, found: Found) -> None:
        ids = [f"{found.night}_{r.spec.exposure}" for r in found.ready]
        existing = self.ctx.couch.docs(ids) if ids else {}
        for token_id in ids:
            verb = "update if changed" if existing.get(token_id) else "create"
            log.info("would %s token %s", verb, token_id)

    def _reap(self, night: str) -> list[str]:
        if self.ctx.couch.replicated:
            self.ctx.pool.sweep(night)
        return self.ctx.pool.reap(night)

    def _tape(self, nights: list[Night]) -> dict[str, int]:
        """Move staging and archiving tokens on (workers do it too; either may). A poll
        that fails is logged and tried next cycle, as a worker's is."""
        out = {"staging": 0, "archiving": 0}
        pool = self.ctx.pool
        waiting = [n.name for n in nights if pool.staging(n.name) or pool.archiving(n.name)]
        if not waiting:
            return out
        staging, archive = self.ctx.app.staging(), self.ctx.app.archive()
        for night in waiting:
            for what, poller in (("staging", staging), ("archiving", archive)):
                try:
                    r = poller.poll(pool, night)
                except GridXferError as exc:
                    log.warning("%s poll of night %s failed: %s", what, night, exc)
                    continue
                out[what] += len(r.staged) + len(r.failed) + len(r.timed_out) + len(r.done)
        return out

    def _staff(self, mine: dict[str, Counts]) -> dict[str, Any]:
        if pause.paused(self.ctx.couch, self.config.name):
            log.info("%s is paused: no workers started", self.config.name)
            return {"paused": True}
        # Work a worker can start on now: claimable tokens and the ones being worked.
        # Tokens waiting out a retry's back-off or a tape recall would only make idle
        # workers start and leave again each cycle.
        cap = self.config.max_workers * self.config.tokens_per_worker + 1
        backlogs = {
            night: self.ctx.pool.claimable_count(night, cap) + c.get("locked", {}).get("count", 0)
            if remaining(c)
            else 0
            for night, c in mine.items()
        }
        return self.workforce.staff(backlogs).as_dict()

    def _codes(self, night: str) -> dict[int, int]:
        """Error tokens per code (the errors view: malformed ones count as 2)."""
        rows = self.ctx.couch.view(
            DDOC, "errors", group_level=2, startkey=[night], endkey=[night, {}]
        )["rows"]
        out: dict[int, int] = {}
        for row in rows:
            code = row["key"][1]
            if isinstance(code, (int, float)):
                out[int(code)] = out.get(int(code), 0) + int(row["value"])
        return out

    def _samples(self, night: str, code: int) -> list[tuple[str, str]]:
        rows = self.ctx.couch.view(
            DDOC,
            "errors",
            reduce=False,
            startkey=[night, code],
            endkey=[night, code],
            limit=self.samples,
        )["rows"]
        return [(r["id"], str(r.get("value") or "")) for r in rows]

    def _report(self, night: Night, counts: Counts, waiting: int) -> bool:
        """Write the night's report when it is due, and send it if not yet sent."""
        ctx, now = self.ctx, self.ctx.clock()
        if not rp.due(counts, night, waiting, now):
            return False
        existing = ctx.couch.get_or_none(rp.report_id(night.name))
        if ctx.dry_run:
            if existing is None:
                doc = rp.build(ctx.pool, night, samples=self.samples, now=now)
                ctx.alerter.notify(f"morning report: night {night.name}", doc["text"])
            return False
        if existing is None:
            doc = rp.build(ctx.pool, night, samples=self.samples, now=now)
            if rp.store(ctx.couch, doc):
                log.info("morning report for night %s written", night.name)
        unsent = rp.unsent(ctx.couch, night.name)
        if unsent is None:
            return False
        if not ctx.sinks:  # nowhere to send it: stored (and on the status page) only
            rp.mark_sent(ctx.couch, unsent, now, "stored only")
            return True
        if ctx.alerter.notify(f"morning report: night {night.name}", unsent["text"]):
            rp.mark_sent(ctx.couch, unsent, now, ", ".join(s.name for s in ctx.sinks))
            return True
        return False
