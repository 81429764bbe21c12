"""Deciding which alerts go out, and when: once per key, repeated only while still
true, at most so many per hour, a recovery when it is over.

The state (which keys were sent, when, and the send times of the last hour) lives
in one CouchDB document, so a standby that takes over the lease keeps the dedupe
and the rate limit. The database is also what an alert may be about, so the
Alerter never depends on it: when it cannot be read or written the state is kept
in memory and written back when it answers again. docs/alerts.md states the
guarantees and why they hold.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from GRID_XFER.couch import Couch
from GRID_XFER.errors import AlertError, ConfigError, Conflict, GridXferError
from GRID_XFER.nightly.sinks import Sink
from GRID_XFER.redact import one_line, redact

log = logging.getLogger(__name__)

DOC_TYPE = "gridxfer-alerts"
HOUR = 3600.0
SEVERITIES = ("critical", "warning", "info")
# A sent-once key is forgotten this long after it was sent: its night is long over
# (streams look back at most 60 nights), and the document must not grow for ever.
FORGET_ONCE_AFTER = 90 * 86400.0
# After the database failed, the Alerter works from memory this long before it
# asks again: an alert about the outage must not wait for the client's retries.
STORE_RETRY_SECONDS = 60.0

State = dict[str, Any]
Op = Callable[[State], None]


@dataclass(frozen=True)
class Alert:
    """Something to tell a person; ``key`` says what it is about (deduplicated on)."""

    key: str
    subject: str
    body: str
    severity: str = "warning"
    # False: sent once for ever (one alert per error code per night), never repeated
    # nor recovered.
    repeat: bool = True

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")


def empty_state() -> State:
    return {"keys": {}, "sent": [], "held": []}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_state(doc: dict[str, Any] | None) -> State:
    """The state in a stored document; entries a hand edit broke are dropped, so a
    bad document costs at most a repeated alert, never the service."""
    state = empty_state()
    if not doc:
        return state
    if doc.get("type") != DOC_TYPE:
        raise ConfigError(f"document {doc.get('_id')!r} is not the alert state (type {DOC_TYPE})")
    keys = doc.get("keys")
    if isinstance(keys, dict):
        for key, entry in keys.items():
            if isinstance(entry, dict) and _number(entry.get("last_sent")):
                state["keys"][key] = dict(entry)
    state["sent"] = [t for t in doc.get("sent") or [] if _number(t)]
    state["held"] = [k for k in doc.get("held") or [] if isinstance(k, str)]
    return state


# -- changes to the state: replayed onto the stored document on every write attempt
def _sent(alert: Alert, now: float, mentioned: Sequence[str]) -> Op:
    """``alert`` went out at ``now``; the held-back keys it mentioned are told."""

    def op(state: State) -> None:
        old = state["keys"].get(alert.key) or {}
        again = old.get("last_sent") == now  # this op replayed after a lost answer
        state["keys"][alert.key] = {
            "subject": alert.subject,
            "severity": alert.severity,
            "repeat": alert.repeat,
            "first_sent": old.get("first_sent", now),
            "last_sent": now,
            "count": int(old.get("count", 0)) + (0 if again else 1),
        }
        _record(state, now, [alert.key, *mentioned])
        for key, entry in list(state["keys"].items()):
            if not entry.get("repeat", True) and entry["last_sent"] < now - FORGET_ONCE_AFTER:
                del state["keys"][key]

    return op


def _recovered(key: str, now: float, mentioned: Sequence[str]) -> Op:
    def op(state: State) -> None:
        state["keys"].pop(key, None)
        _record(state, now, [key, *mentioned])

    return op


def _record(state: State, now: float, told: Sequence[str]) -> None:
    state["sent"] = [t for t in state["sent"] if t > now - HOUR] + [now]
    state["held"] = [k for k in state["held"] if k not in told]


def _hold(key: str) -> Op:
    def op(state: State) -> None:
        if key not in state["held"]:
            state["held"].append(key)

    return op


def _unhold(key: str) -> Op:
    def op(state: State) -> None:
        state["held"] = [k for k in state["held"] if k != key]

    return op


class AlertStore:
    """The Alerter's state in one document, written by read-modify-write."""

    def __init__(self, couch: Couch, doc_id: str = "gridxfer-alerts", *, attempts: int = 10):
        self.couch = couch
        self.doc_id = doc_id
        self.attempts = attempts

    def load(self) -> State:
        return parse_state(self.couch.get_or_none(self.doc_id))

    def update(self, ops: Sequence[Op]) -> State:
        """Apply ``ops`` to the stored state and save it; on 409 re-read and re-apply
        (another instance wrote meanwhile: its changes are kept, ours added)."""
        for _ in range(self.attempts):
            doc = self.couch.get_or_none(self.doc_id)
            state = parse_state(doc)
            for op in ops:
                op(state)
            new: dict[str, Any] = {"_id": self.doc_id, "type": DOC_TYPE, **state}
            if doc is not None:
                new["_rev"] = doc["_rev"]
            try:
                self.couch.put(new)
            except Conflict:
                continue
            return state
        raise Conflict(f"alert state {self.doc_id}: still changing after {self.attempts} tries")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


class Alerter:
    """Sends alerts through its sinks, deduplicated and rate-limited; never raises
    because a sink or the database failed (it logs one warning line instead)."""

    def __init__(
        self,
        sinks: list[Sink],
        store: AlertStore | None = None,
        *,
        repeat_seconds: float = 86400,
        max_per_hour: int = 20,
        clock: Callable[[], float] = time.time,
        dry_run: bool = False,
    ) -> None:
        self.sinks = list(sinks)
        self.store = store
        self.repeat_seconds = repeat_seconds
        self.max_per_hour = max_per_hour
        self.clock = clock
        self.dry_run = dry_run
        self.would_send: list[tuple[str, str]] = []
        self._state = empty_state()
        self._pending: list[Op] = []  # changes memory has and the database not yet
        self._loaded = False
        self._store_down_since: float | None = None
        self._lock = threading.RLock()

    # -- the state ------------------------------------------------------------
    def _sync(self) -> None:
        """Memory from the database, after writing what memory had that it lacked."""
        if self.store is None or (self.dry_run and self._loaded):
            return
        now = self.clock()
        down = self._store_down_since
        if down is not None and now - down < STORE_RETRY_SECONDS:
            return
        try:
            if self._pending and not self.dry_run:
                self._state = self.store.update(self._pending)
                self._pending = []
            else:
                self._state = self.store.load()
        except GridXferError as exc:
            if down is None:
                log.warning(
                    "alerts: the alert state cannot be read or written (%s); "
                    "working from memory until the database answers",
                    one_line(redact(str(exc))),
                )
            self._store_down_since = now
            return
        self._loaded = True
        if down is not None:
            log.info("alerts: the database answers again; the alert state is written back")
            self._store_down_since = None

    def _commit(self, op: Op) -> None:
        op(self._state)
        if self.dry_run or self.store is None:
            return
        self._pending.append(op)
        self._sync()

    def _room(self, now: float) -> bool:
        recent = [t for t in self._state["sent"] if t > now - HOUR]
        return len(recent) < self.max_per_hour

    def _held_note(self, key: str) -> tuple[list[str], str]:
        others = [k for k in self._state["held"] if k != key]
        if not others:
            return others, ""
        n = len(others)
        were = "alert was" if n == 1 else "alerts were"
        return others, (
            f"\n\n{n} further {were} held back by the rate limit (at most "
            f"{self.max_per_hour} per hour); each follows when the limit allows, if still true."
        )

    def _deliver(self, what: str, subject: str, body: str, severity: str) -> bool:
        """True when at least one sink took the message (in dry_run: noted only)."""
        if self.dry_run:
            self.would_send.append((subject, body))
            return True
        took = 0
        for sink in self.sinks:
            try:
                sink.send(subject, body, severity)
                took += 1
            except AlertError as exc:
                log.warning("alert %s: %s failed: %s", what, sink.name, one_line(redact(str(exc))))
            except Exception as exc:  # a sink's bug must not stop the service
                log.warning("alert %s: %s failed: %s", what, sink.name, type(exc).__name__)
        if self.sinks and not took:
            log.warning("alert %s: no sink took it; it is tried again next time", what)
        return took > 0

    def _limited(self, key: str, now: float) -> bool:
        """True (and ``key`` noted as held back) when the hour's sends are used up."""
        if self._room(now):
            return False
        if key not in self._state["held"]:
            log.warning(
                "alert %s held back by the rate limit (%d per hour)", key, self.max_per_hour
            )
            self._commit(_hold(key))
        return True

    # -- the interface ---------------------------------------------------------------
    def raise_alert(self, alert: Alert) -> bool:
        """Send ``alert`` unless already sent (and not due again); True if sent now."""
        with self._lock:
            self._sync()
            now = self.clock()
            entry = self._state["keys"].get(alert.key)
            note = ""
            if entry is not None:
                if not entry.get("repeat", True) or now - entry["last_sent"] < self.repeat_seconds:
                    return False
                note = (
                    f"\n\nStill so: first sent {_when(entry.get('first_sent', now))}; "
                    f"this is message {int(entry.get('count', 1)) + 1} about it."
                )
            if self._limited(alert.key, now):
                return False
            mentioned, held = self._held_note(alert.key)
            if not self._deliver(
                alert.key, alert.subject, alert.body + note + held, alert.severity
            ):
                return False
            self._commit(_sent(alert, now, mentioned))
            return True

    def resolve(self, key: str, subject: str, body: str) -> bool:
        """Announce that ``key``'s alert is over, once; a key not active is a no-op."""
        with self._lock:
            self._sync()
            entry = self._state["keys"].get(key)
            if entry is None or not entry.get("repeat", True):
                if key in self._state["held"]:
                    self._commit(_unhold(key))
                return False
            now = self.clock()
            if self._limited(key, now):
                return False
            was = entry.get("subject", key)
            mentioned, held = self._held_note(key)
            text = (
                f"{subject}\n\n{body}".strip() + f"\n\nThe alert was: {was} (first sent "
                f"{_when(entry.get('first_sent', now))}, {entry.get('count', 1)} message(s))."
            )
            if not self._deliver(key, f"RECOVERED: {was}", text + held, "info"):
                return False
            self._commit(_recovered(key, now, mentioned))
            return True

    def notify(self, subject: str, body: str, severity: str = "info") -> bool:
        """A one-off message (the morning report): no dedupe, no rate limit."""
        with self._lock:
            return self._deliver("notify", subject, body, severity)

    def already_sent(self, key: str) -> bool:
        """Did ``key``'s alert go out (and not end since)? For a once-kind key: ever."""
        with self._lock:
            self._sync()
            return key in self._state["keys"]

    def active(self) -> set[str]:
        """Keys whose alert went out and is not resolved (repeating kind only)."""
        with self._lock:
            self._sync()
            return {k for k, e in self._state["keys"].items() if e.get("repeat", True)}
