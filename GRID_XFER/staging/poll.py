"""The one poll shape for tokens that wait on tape without a lease.

The recall poll (``staging`` tokens: back to todo once online) and the archive
poll (``archiving`` tokens: done once on tape) differ only in which tokens they
read, what they ask the storage and what a verdict does to a token. The loop is
the same and lives here: read the waiting tokens, take a verdict per token, apply
it and save the token against the revision read, so that when two pollers (any
worker between claims, ``gridxfer stage --poll``) settle the same token, one
wins and the other counts a conflict instead of overwriting it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

PENDING = "pending"


@dataclass(frozen=True)
class Verdict:
    """What one poll decided for one token.

    ``bucket`` names the :class:`PollReport` list the token is counted in:
    ``pending`` leaves the token as it is; any other bucket is a transition, with
    the error ``code``, ``message`` and ``file`` when it is a failure.
    """

    bucket: str
    code: int | None = None
    message: str = ""
    file: str | None = None


@dataclass
class PollReport:
    staged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # archive confirmed
    conflicts: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: (len(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()}


class TokenPoll(Protocol):
    """What a poll of waiting tokens supplies to :func:`run_poll`."""

    def waiting(self, pool: Any, night: str | None) -> list[dict[str, Any]]:
        """The tokens in the state this poll moves on (of ``night``, or all)."""

    def verdicts(
        self, docs: list[dict[str, Any]], now: float
    ) -> Iterator[tuple[dict[str, Any], Verdict]]:
        """A verdict per token; tokens that cannot be judged now are left out."""

    def settle(self, doc: dict[str, Any], verdict: Verdict, now: float) -> None:
        """Apply a verdict other than pending to the token (not saved yet)."""


def run_poll(
    poll: TokenPoll, pool: Any, night: str | None, clock: Callable[[], float]
) -> PollReport:
    """Read the waiting tokens, judge each, save those that change; count the outcomes."""
    report = PollReport()
    docs = poll.waiting(pool, night)
    if not docs:
        return report
    now = clock()
    for doc, verdict in poll.verdicts(docs, now):
        if verdict.bucket == PENDING:
            report.pending.append(doc["_id"])
            continue
        poll.settle(doc, verdict, now)
        if pool.save(doc):  # against the revision read: 409 if another poller was first
            getattr(report, verdict.bucket).append(doc["_id"])
            log.info("%s: %s", doc["_id"], describe(doc))
        else:
            report.conflicts += 1
    return report


def describe(doc: dict[str, Any]) -> str:
    """A settled token in a few words: its last event, or its error."""
    if doc.get("state") == "error":
        return f"error {doc['error']['code']}: {doc['error']['message']}"
    history = doc.get("history") or [{}]
    return str(history[-1].get("event", doc.get("state")))
