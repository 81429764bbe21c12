"""What is worth waking someone for, turned into alerts each cycle.

Each condition has a key, and the Alerter deduplicates on it: a new error code
in a night is one alert for that night and code however many tokens fail with
it (key ``<night>/code/<n>``, never repeated); a night past its deadline, no
progress while work remains, an unreachable source or database are alerts that
stay raised while true (repeated at most every ``repeat_hours``) and whose end
is announced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from GRID_XFER.errors import code_name
from GRID_XFER.nightly.alerts import Alert, Alerter
from GRID_XFER.nightly.nights import Night
from GRID_XFER.nightly.report import ADVICE, remaining

log = logging.getLogger(__name__)

# Tape codes: a recall refused (files LOST or UNAVAILABLE), too slow, an archived
# file gone, not on tape in time. They are critical: data may be at risk.
TAPE_CODES = frozenset({22, 23, 50, 51})

Counts = dict[str, dict[str, int]]  # state -> {"count", "bytes"}


def finished(counts: Counts) -> int:
    return sum(counts.get(s, {}).get("count", 0) for s in ("done", "error"))


@dataclass
class Watch:
    """One stream's memory between cycles (progress, codes already alerted)."""

    stream: str
    alerter: Alerter
    stall_seconds: float
    samples: int = 3
    _finished: dict[str, int] = field(default_factory=dict)
    _progress_at: float = 0.0
    _codes: set[str] = field(default_factory=set)

    def errors(
        self,
        night: str,
        by_code: dict[int, int],
        samples: Callable[[str, int], list[tuple[str, str]]],
    ) -> None:
        """One alert per error code per night, with the count and sample messages.

        A code is remembered only once its alert went out (or the Alerter says it
        was sent before): one held back by the rate limit is raised again next cycle.
        """
        for code, count in sorted(by_code.items()):
            key = f"{night}/code/{code}"
            if key in self._codes or count <= 0:
                continue
            tape = code in TAPE_CODES
            subject = (
                f"{'tape: ' if tape else ''}night {night}: {count} exposure(s) failed "
                f"with error {code} {code_name(code)}"
            )
            body = "\n".join(
                [
                    f"Stream {self.stream}, night {night}: {count} exposure(s) in error "
                    f"{code} ({code_name(code)}).",
                    f"What to do: {ADVICE.get(code, ADVICE[99])}",
                    "Samples:",
                    *(f"  {token}: {message}" for token, message in samples(night, code)),
                    f"All of them: gridxfer tokens list {night} --state error",
                ]
            )
            severity = "critical" if tape else "warning"
            if self.alerter.raise_alert(Alert(key, subject, body, severity, repeat=False)):
                self._codes.add(key)
            elif self.alerter.already_sent(key):
                self._codes.add(key)

    def deadline(self, night: Night, counts: Counts, waiting: int, now: float) -> None:
        key = f"{night.name}/deadline"
        left = remaining(counts) + waiting
        if now >= night.deadline and left > 0 and counts:
            self.alerter.raise_alert(
                Alert(
                    key,
                    f"night {night.name} not finished by its deadline: {left} exposure(s) left",
                    f"Stream {self.stream}: night {night.name} was due at its deadline and "
                    f"{left} exposure(s) are not finished ({waiting} not yet ready at the "
                    f"source). See `gridxfer status {night.name}`.",
                    "critical",
                )
            )
        elif left == 0:
            self.alerter.resolve(
                key, f"night {night.name} finished", f"Night {night.name} has no work left."
            )

    def progress(self, nights: dict[str, Counts], now: float) -> None:
        """No token finished for ``stall_seconds`` while work remains: an alert.

        Progress is a night's finished count going up; a night leaving the window
        or tokens reset (counts going down) is no progress.
        """
        key = f"{self.stream}/stall"
        left = sum(remaining(c) for c in nights.values())
        done = {n: finished(c) for n, c in nights.items()}
        moved = any(done[n] > self._finished.get(n, done[n]) for n in done)
        first = not self._finished
        self._finished = done
        if first or moved or left == 0:
            if moved:
                self.alerter.resolve(
                    key,
                    f"stream {self.stream} is moving again",
                    f"Stream {self.stream}: tokens are finishing again ({left} left).",
                )
            self._progress_at = now
            return
        idle = now - self._progress_at
        if idle >= self.stall_seconds:
            self.alerter.raise_alert(
                Alert(
                    key,
                    f"stream {self.stream}: no progress for {idle / 60:.0f} min, {left} left",
                    f"Stream {self.stream}: no token finished in {idle / 60:.0f} minutes while "
                    f"{left} remain. Are workers running (`gridxfer status`)? Is it paused?",
                    "critical",
                )
            )

    def reachable(self, what: str, problem: str | None) -> None:
        """``what`` is "source" or "database"; ``problem`` None means it answered."""
        key = f"{self.stream}/{what}" if what != "database" else "database"
        if problem is None:
            self.alerter.resolve(
                key, f"{what} reachable again", f"The {what} of stream {self.stream} answers."
            )
            return
        self.alerter.raise_alert(
            Alert(
                key,
                f"{what} unreachable (stream {self.stream})",
                f"Stream {self.stream}: the {what} does not answer: {problem}",
                "critical",
            )
        )
