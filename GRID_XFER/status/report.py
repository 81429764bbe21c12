"""What ``gridxfer status`` reports: per night, counts by state, errors, rate and ETA.

The shape of ``status --json`` (docs/status.md) and the arithmetic on it; how
the numbers are read from the views is :mod:`.gather`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from GRID_XFER.errors import code_name
from GRID_XFER.token import STATES

HELD_STATES = ("locked", "staging", "archiving")
OPEN_STATES = ("todo", *HELD_STATES)


@dataclass
class ErrorCode:
    """Error tokens of one code in a night, with one sample message."""

    code: int
    count: int
    message: str | None = None
    token: str | None = None

    @property
    def name(self) -> str:
        return code_name(self.code)

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "count": self.count,
            "message": self.message,
            "token": self.token,
        }


@dataclass
class Holder:
    """A worker holding leases on tokens of a night."""

    worker: str | None
    host: str | None
    job_id: str | None
    tokens: int
    lease_expires: float  # the earliest expiry among its tokens
    expired: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.worker,
            "host": self.host,
            "job_id": self.job_id,
            "tokens": self.tokens,
            "lease_expires": self.lease_expires,
            "expired": self.expired,
        }


@dataclass
class NightStatus:
    night: str
    states: dict[str, int]
    bytes_by_state: dict[str, int]
    errors: dict[int, int] = field(default_factory=dict)
    workers: int = 0
    # Completions in the rate window: tokens done, tokens failed, bytes done,
    # and the seconds they were counted over (0: none in the window).
    recent_done: int = 0
    recent_errors: int = 0
    recent_bytes: int = 0
    span: float = 0.0
    # A night's detail (``gather(couch, night)``); None in the overview.
    error_codes: list[ErrorCode] | None = None
    holders: list[Holder] | None = None

    @property
    def total(self) -> int:
        return sum(self.states.values())

    @property
    def remaining(self) -> int:
        return sum(self.states.get(s, 0) for s in OPEN_STATES)

    @property
    def held(self) -> int:
        return sum(self.states.get(s, 0) for s in HELD_STATES)

    @property
    def bytes_total(self) -> int:
        return sum(self.bytes_by_state.values())

    @property
    def bytes_done(self) -> int:
        return self.bytes_by_state.get("done", 0)

    @property
    def fraction(self) -> float:
        """Share of tokens finished (done or error)."""
        return 1.0 - self.remaining / self.total if self.total else 1.0

    @property
    def tokens_per_s(self) -> float:
        return (self.recent_done + self.recent_errors) / self.span if self.span else 0.0

    @property
    def bytes_per_s(self) -> float:
        return self.recent_bytes / self.span if self.span else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until nothing remains at the recent rate; 0 when finished, None
        when nothing finished within the window."""
        if not self.remaining:
            return 0.0
        rate = self.tokens_per_s
        return self.remaining / rate if rate > 0 else None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "night": self.night,
            "states": {s: self.states.get(s, 0) for s in STATES},
            "errors": {str(c): n for c, n in sorted(self.errors.items())},
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "tokens": self.total,
            "workers": self.workers,
            "rate": {
                "tokens_per_s": round(self.tokens_per_s, 6),
                "bytes_per_s": round(self.bytes_per_s, 3),
                "done": self.recent_done,
                "errors": self.recent_errors,
                "bytes": self.recent_bytes,
                "seconds": round(self.span, 3),
            },
            "eta_s": None if self.eta is None else round(self.eta, 1),
        }
        if self.error_codes is not None:
            out["error_codes"] = [e.as_dict() for e in self.error_codes]
        if self.holders is not None:
            out["holders"] = [h.as_dict() for h in self.holders]
        return out


@dataclass
class StatusReport:
    generated: float
    window: float
    nights: list[NightStatus]
    # On a cluster: by how much the open counts differ from a quorum read of the
    # tokens (0: the counts are settled; see gather).
    unsettled: int = 0

    def night(self, name: str) -> NightStatus:
        for n in self.nights:
            if n.night == name:
                return n
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        """The documented ``gridxfer status --json`` shape (docs/status.md)."""
        return {
            "generated": round(self.generated, 3),
            "window_s": self.window,
            "settled": not self.unsettled,
            "unsettled": self.unsettled,
            "nights": [n.as_dict() for n in self.nights],
        }
