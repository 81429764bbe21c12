"""``gridxfer status`` as text: rich renderables for a :class:`StatusReport`.

Gathering the numbers is :mod:`.gather`; this module only lays them out (the
CLI prints what it builds, the status page reuses the text helpers).
"""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Group
from rich.filesize import decimal
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from GRID_XFER.status.report import NightStatus, StatusReport
from GRID_XFER.token import STATES


def human_bytes(n: float) -> str:
    return decimal(int(n))


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def rate_text(ns: NightStatus) -> str:
    if not ns.span:
        return "-"
    return f"{ns.tokens_per_s * 60:.1f}/min {human_bytes(ns.bytes_per_s)}/s"


def eta_text(ns: NightStatus) -> str:
    if not ns.remaining:
        return "finished"
    return human_duration(ns.eta)


def nights_table(report: StatusReport, *, bars: bool = False, limit: int | None = None) -> Any:
    """The nights table; ``bars`` adds a progress bar, ``limit`` keeps the nights
    with work left or recent completions first and at most that many rows."""
    colours = {
        "todo": "",
        "locked": "cyan",
        "staging": "magenta",
        "archiving": "blue",
        "done": "green",
        "error": "red",
    }
    table = Table(expand=False)
    table.add_column("night", no_wrap=True)
    if bars:
        table.add_column("progress", no_wrap=True, min_width=12)
        table.add_column("%", justify="right", no_wrap=True)
    for s in STATES:
        table.add_column(s, justify="right", style=colours[s], no_wrap=True)
    table.add_column("bytes done/total", justify="right", no_wrap=True)
    table.add_column("rate", justify="right", no_wrap=True)
    table.add_column("ETA", justify="right", no_wrap=True)
    shown = report.nights
    hidden = 0
    if limit is not None and len(shown) > limit:
        active = [n for n in shown if n.remaining or n.span]
        shown = (active or shown)[-limit:]
        hidden = len(report.nights) - len(shown)
    for ns in shown:
        cells: list[Any] = [Text(ns.night)]  # data, not markup
        if bars:
            cells += [
                ProgressBar(
                    total=max(ns.total, 1),
                    completed=ns.total - ns.remaining,
                    width=20,
                    complete_style="red" if ns.states.get("error") else "green",
                    finished_style="green",
                ),
                f"{math.floor(100 * ns.fraction)}%",
            ]
        cells += [str(ns.states.get(s, 0)) for s in STATES]
        cells += [
            f"{human_bytes(ns.bytes_done)}/{human_bytes(ns.bytes_total)}",
            rate_text(ns),
            eta_text(ns),
        ]
        table.add_row(*cells)
    if hidden:
        table.caption = f"{hidden} more nights without work left (gridxfer status)"
    return table


def night_detail(ns: NightStatus, now: float) -> Any:
    """Error codes with a sample message, and the workers holding leases."""
    parts: list[Any] = []
    if ns.error_codes:
        errors = Table(title="errors", title_justify="left", expand=False)
        errors.add_column("code", justify="right", style="red")
        errors.add_column("name")
        errors.add_column("tokens", justify="right")
        errors.add_column("sample message", overflow="fold")
        for e in ns.error_codes:
            sample = e.message or ""
            if e.token:
                sample = f"{sample} ({e.token})"
            errors.add_row(str(e.code), e.name, str(e.count), Text(sample))
        parts.append(errors)
    else:
        parts.append(Text("no errors", style="green"))
    if ns.holders:
        holders = Table(title="workers holding leases", title_justify="left", expand=False)
        for col in ("worker", "host", "job", "tokens", "lease"):
            holders.add_column(col, justify="right" if col in ("tokens", "lease") else "left")
        for h in ns.holders:
            left = h.lease_expires - now
            lease = (
                Text("EXPIRED", style="bold red")
                if h.expired
                else Text("no lease", style="bold red")
                if h.lease_expires <= 0
                else Text(f"expires in {human_duration(left)}")
            )
            holders.add_row(
                Text(h.worker or "?"),
                Text(h.host or "?"),
                Text(h.job_id or "-"),
                str(h.tokens),
                lease,
            )
        parts.append(holders)
    else:
        parts.append(Text("no worker holds a lease"))
    return Group(*parts)


def render(
    report: StatusReport,
    *,
    bars: bool = False,
    limit: int | None = None,
    problem: str | None = None,
    morning: str | None = None,
) -> Any:
    """Everything ``gridxfer status`` shows for a report; ``morning`` is the text of
    the night's morning report (:mod:`.reports`), shown after its detail."""
    parts: list[Any] = []
    if not report.nights:
        parts.append(Text("no tokens yet (gridxfer tokens create NIGHT ...)"))
    else:
        parts.append(nights_table(report, bars=bars, limit=limit))
    if len(report.nights) == 1 and report.nights[0].error_codes is not None:
        parts.append(night_detail(report.nights[0], report.generated))
    if morning is not None and len(report.nights) == 1:
        title = Text(f"morning report {report.nights[0].night}")  # data, not markup
        parts.append(Panel(Text(morning), title=title, title_align="left", expand=False))
    if report.unsettled:
        parts.append(
            Text(
                f"not settled: the open counts are off by {report.unsettled} from "
                "what a quorum of the cluster's copies says; they are catching up",
                style="bold yellow",
            )
        )
    if bars:
        stamp = time.strftime("%H:%M:%S", time.localtime(report.generated))
        parts.append(
            Text(
                f"updated {stamp}; rate over the last {human_duration(report.window)}"
                "; Ctrl-C to stop",
                style="dim",
            )
        )
    if problem:
        parts.append(Text(problem, style="bold red"))
    return Group(*parts)
