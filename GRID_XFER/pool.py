"""The token pool: create token sets, claim with leases, record outcomes, reap.

Safety rests on one CouchDB guarantee: a PUT carrying ``_rev`` succeeds only if
nobody changed the document since that revision. A claim therefore checks the
very revision it read (from the view with ``include_docs``) and saves against
it; a 409 means another worker won, and we try another row. PiCaS re-reads
the document after the view, so it can overwrite a fresh lock: we never do.
"""
from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from GRID_XFER import token as tk
from GRID_XFER.couch import Couch, chunked
from GRID_XFER.errors import Code, Conflict, InvalidToken, LeaseLost, NotFound
from GRID_XFER.views import DDOC

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class CreateReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # held or finished: left alone
    # Done, but the source changed since (late files): left alone until a reset.
    outdated: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.__dict__.items()}


@dataclass
class PoolSettings:
    lease: float = 300.0
    max_attempts: int = 3
    backoff_base: float = 30.0
    backoff_max: float = 3600.0
    window: int = 64


class Pool:
    def __init__(self, couch: Couch, settings: PoolSettings | None = None, *,
                 job_id: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.couch = couch
        self.settings = settings or PoolSettings()
        self.clock = clock
        base = tk.worker_identity(job_id)
        base["id"] = f"{base['id']}:{uuid.uuid4().hex[:6]}"
        self.worker = base
        self._candidates: list[dict[str, Any]] = []
        self._candidates_night: str | None = None

    # -- creating ----------------------------------------------------------
    def create(self, night: str, specs: Iterable[tk.ExposureSpec], *, source: str | None = None,
               destination: str | None = None, batch: int = BATCH) -> CreateReport:
        """Add a night's tokens; re-running adds only what is new (ids are deterministic).

        An exposure whose files changed is updated while nobody holds it and it is
        not done; done and held tokens are never touched.
        """
        report = CreateReport()
        now = self.clock()
        tk.check_id_part(night, "night")
        seen: set[str] = set()
        for chunk in chunked(specs, batch):
            docs = []
            for spec in chunk:
                doc = tk.new_token(night, spec, source=source, destination=destination,
                                   max_attempts=self.settings.max_attempts, now=now)
                if doc["_id"] in seen:
                    raise InvalidToken(f"exposure {spec.exposure!r} listed twice")
                seen.add(doc["_id"])
                docs.append(doc)
            rows = self.couch.all_docs(keys=[d["_id"] for d in docs], include_docs=True)
            existing = {r["key"]: r["doc"] for r in rows if r.get("doc")}
            to_save = []
            for doc in docs:
                old = existing.get(doc["_id"])
                if old is None:
                    to_save.append(doc)
                elif _same_work(old, doc):
                    report.unchanged.append(doc["_id"])
                elif old.get("state") not in ("todo", "error"):
                    report.skipped.append(doc["_id"])
                    if old.get("state") == "done":
                        report.outdated.append(doc["_id"])
                else:
                    # Catch-up: late files or a fixed manifest; an errored token
                    # gets a fresh start since its inputs changed.
                    if old.get("state") == "error":
                        tk.reset(old, now)
                    old.update(files=doc["files"], bytes_total=doc["bytes_total"],
                               source=doc["source"], destination=doc["destination"],
                               payload=doc["payload"], manifest=doc["manifest"])
                    tk._event(old, now, "updated")
                    to_save.append(old)
            for result, doc in zip(self.couch.bulk_docs(to_save), to_save):
                bucket = report.updated if "_rev" in doc else report.created
                if result.get("error") == "conflict":
                    report.skipped.append(doc["_id"])  # changed by someone meanwhile
                elif result.get("error"):
                    raise InvalidToken(f"token {doc['_id']}: server refused it: "
                                       f"{result.get('reason') or result['error']}")
                else:
                    bucket.append(doc["_id"])
        return report

    # -- claiming ----------------------------------------------------------
    def _refill(self, night: str | None, now: float) -> None:
        # Start at a random point of the fresh tokens, wrapping to the front when
        # the tail is short: workers then hold mostly disjoint windows.
        start = round(random.random(), 6)
        if night is None:
            ranges = [([0, start], [now, {}]), ([0], [now, {}])]
            name = "todo_any"
        else:
            ranges = [([night, 0, start], [night, now, {}]), ([night], [night, now, {}])]
            name = "todo"
        rows: list[dict[str, Any]] = []
        for startkey, endkey in ranges:
            rows += self.couch.view(DDOC, name, startkey=startkey, endkey=endkey,
                                    limit=self.settings.window - len(rows),
                                    include_docs=True)["rows"]
            if len(rows) >= self.settings.window:
                break
        unique = {r["id"]: r["doc"] for r in rows if r.get("doc")}
        self._candidates = list(unique.values())
        self._candidates_night = night

    def claim(self, night: str | None = None) -> Lease | None:
        """Take one claimable token under a lease, or None when the night has none."""
        if self._candidates_night != night:
            self._candidates = []
        while True:
            now = self.clock()
            if not self._candidates:
                self._refill(night, now)
                if not self._candidates:
                    return None
            doc = self._candidates.pop(random.randrange(len(self._candidates)))
            if doc.get("state") not in tk.CLAIMABLE or doc.get("not_before", 0) > now:
                continue
            try:
                tk.validate(doc)
            except InvalidToken as exc:
                self._reject(doc, str(exc), now)
                continue
            tk.claim(doc, self.worker, now, self.settings.lease)
            try:
                self.couch.put(doc)
            except Conflict as exc:
                if exc.retried and self._won_anyway(doc):
                    return Lease(self, doc)
                continue
            return Lease(self, doc)

    def _won_anyway(self, doc: dict[str, Any]) -> bool:
        # A PUT retried after a lost answer sees its own success as a 409.
        current = self.couch.get_or_none(doc["_id"])
        if current and (current.get("worker") or {}).get("id") == self.worker["id"] \
                and current.get("state") == "locked" and current.get("claimed") == doc["claimed"]:
            doc.clear()
            doc.update(current)
            return True
        return False

    def _reject(self, doc: dict[str, Any], message: str, now: float) -> None:
        doc.setdefault("attempts", 0)
        tk.fail(doc, Code.INVALID_TOKEN, message, now)
        try:
            self.couch.put(doc)
            log.error("%s", message)
        except Conflict:
            pass

    # -- maintenance -------------------------------------------------------
    def reap(self, night: str | None = None) -> list[str]:
        """Return tokens whose lease expired to todo (or to error 90 after max_attempts).

        Not within a lease of this process riding out a database outage: live
        workers cut off by the same outage could not renew meanwhile, and need
        that long to heartbeat again before their tokens count as lost.
        """
        recovered = self.couch.recovered_at
        if recovered is not None and time.monotonic() - recovered < self.settings.lease:
            log.info("not reaping yet: the database was unreachable until %.0f s ago",
                     time.monotonic() - recovered)
            return []
        now = self.clock()
        reaped: list[str] = []
        rows = self.couch.view(DDOC, "leases", startkey=0.000001, endkey=now,
                               include_docs=True)["rows"]
        docs = [r["doc"] for r in rows if r.get("doc")
                and (night is None or r["doc"].get("token_set") == night)]
        docs = [d for d in docs if tk.is_expired(d, now)]
        for d in docs:
            tk.expire(d, now)
        docs += self._overdue_staging(night, now)
        for chunk in chunked(docs, BATCH):
            for result, doc in zip(self.couch.bulk_docs(chunk), chunk):
                if not result.get("error"):
                    reaped.append(doc["_id"])
                    log.warning("reaped %s (lease of %s expired) -> %s", doc["_id"],
                                doc["history"][-1].get("worker", "?"), doc["state"])
        return reaped

    def _overdue_staging(self, night: str | None, now: float) -> list[dict[str, Any]]:
        """Staging tokens a lease past their deadline: no poller ran (no transfer
        workers left, no `stage --poll`), so time them out here (23) rather than
        let them wait forever; pollers normally do this first, and abort the request."""
        span = {} if night is None else {"startkey": [night], "endkey": [night, {}]}
        rows = self.couch.view(DDOC, "staging", include_docs=True, **span)["rows"]
        out = []
        for r in rows:
            d = r.get("doc")
            deadline = ((d or {}).get("stage_request") or {}).get("deadline")
            if d and d.get("state") == "staging" and deadline and now > deadline + self.settings.lease:
                tk.staging_failed(d, Code.STAGING_TIMEOUT, f"staging request "
                                  f"{d['stage_request'].get('id')} not online "
                                  f"{now - deadline:.0f} s after its deadline, and no poller "
                                  "settled it", now)
                out.append(d)
        return out

    def select(self, night: str, states: Iterable[str] | None = None,
               codes: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """The night's token documents, optionally filtered by state and error code."""
        wanted = list(states) if states else list(tk.STATES)
        code_set = {int(c) for c in codes} if codes else None
        out: list[dict[str, Any]] = []
        for state in wanted:
            for row in self.couch.iter_view(DDOC, "by_state", reduce=False, include_docs=True,
                                            startkey=[night, state], endkey=[night, state, {}]):
                doc = row.get("doc")
                if doc and (code_set is None or (doc.get("error") or {}).get("code") in code_set):
                    out.append(doc)
        return out

    def reset(self, night: str, states: Iterable[str] | None = None,
              codes: Iterable[int] | None = None, *, force: bool = False) -> list[str]:
        """Give tokens a fresh start. Default: every errored token of the night.

        A token a live worker holds (lease not expired) is left alone unless
        ``force``: resetting it would let a second worker run it alongside.
        """
        states = list(states) if states else (["error"] if not codes else ["error", "todo"])
        now = self.clock()
        docs = self.select(night, states, codes)
        live = [d["_id"] for d in docs if d.get("state") in tk.HELD and not tk.is_expired(d, now)]
        if live and not force:
            log.warning("left %d token(s) alone that live workers hold (e.g. %s); "
                        "--force resets them anyway", len(live), live[0])
            docs = [d for d in docs if d["_id"] not in live]
        for d in docs:
            tk.reset(d, now)
        return self._bulk_save(docs)

    def delete(self, night: str) -> list[str]:
        docs = self.select(night)
        for d in docs:
            d["_deleted"] = True
        return self._bulk_save(docs)

    def _bulk_save(self, docs: list[dict[str, Any]]) -> list[str]:
        ok: list[str] = []
        for chunk in chunked(docs, BATCH):
            for result, doc in zip(self.couch.bulk_docs(chunk), chunk):
                if result.get("error"):
                    log.warning("%s changed meanwhile; left as it is", doc["_id"])
                else:
                    ok.append(doc["_id"])
        return ok

    def counts(self, night: str | None = None) -> dict[str, dict[str, dict[str, int]]]:
        """``{night: {state: {"count": n, "bytes": b}}}`` from the reduce view."""
        params: dict[str, Any] = {"group_level": 2}
        if night is not None:
            params.update(startkey=[night], endkey=[night, {}])
        out: dict[str, dict[str, dict[str, int]]] = {}
        for row in self.couch.view(DDOC, "by_state", **params)["rows"]:
            n, state = row["key"][:2]
            out.setdefault(n, {})[state] = {"count": int(row["value"]["count"]),
                                            "bytes": int(row["value"]["sum"])}
        return out

    # -- tape: tokens nobody holds while they wait ---------------------------
    def staging(self, night: str | None = None) -> list[dict[str, Any]]:
        """Tokens waiting for a tape recall (the ``staging`` view)."""
        params: dict[str, Any] = {"include_docs": True}
        if night is not None:
            params.update(startkey=[night], endkey=[night, {}])
        # Not paged: keys repeat (tokens share a request), which paging by key cannot do.
        return [r["doc"] for r in self.couch.view(DDOC, "staging", **params)["rows"]
                if r.get("doc") and r["doc"].get("state") == "staging"]

    def archiving(self, night: str | None = None) -> list[dict[str, Any]]:
        """Tokens copied to a tape-backed destination, waiting for migration."""
        nights = [n for n, states in self.counts(night).items() if states.get("archiving")]
        return [d for n in nights for d in self.select(n, ["archiving"])]

    def waiting(self, night: str | None = None) -> int:
        """How many tokens are staging or archiving (work that will come back)."""
        return sum(states.get(s, {}).get("count", 0) for states in self.counts(night).values()
                   for s in ("staging", "archiving"))

    def save(self, doc: dict[str, Any]) -> bool:
        """Save a token changed by a poll; False if someone else changed it first (409)."""
        try:
            self.couch.put(doc)
        except Conflict:
            return False
        return True

    def get(self, token_id: str) -> dict[str, Any]:
        try:
            return self.couch.get(token_id)
        except NotFound:
            raise NotFound(f"no token {token_id!r}") from None

    def require_night(self, night: str) -> None:
        if night not in self.counts(night):
            raise NotFound(f"unknown night {night!r}: no tokens in database {self.couch.db!r}")


def _work(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Files as the scan would write them (results and empty fields aside), for comparing."""
    out = []
    for f in files:
        entry = {k: v for k, v in f.items() if k != "result" and v not in (None, {}, [])}
        out.append(entry)
    return out


def _same_work(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return (_work(old.get("files", [])) == _work(new["files"])
            and old.get("manifest") == new.get("manifest")
            and old.get("source") == new["source"]
            and old.get("destination") == new["destination"])


class Lease:
    """A claimed token. Every save re-checks that the token is still ours."""

    def __init__(self, pool: Pool, doc: dict[str, Any]) -> None:
        self.pool = pool
        self.doc = doc
        self.lock = threading.RLock()

    @property
    def id(self) -> str:
        return self.doc["_id"]

    def _ours(self, current: dict[str, Any]) -> bool:
        return ((current.get("worker") or {}).get("id") == self.pool.worker["id"]
                and current.get("state") in tk.HELD)

    def _save(self, change: Callable[[dict[str, Any]], None], *, finishing: bool = False) -> None:
        """Apply ``change`` and save; on 409 re-read and re-apply if still ours.

        A finishing save (done/fail) also lands when the token was reaped back to
        todo meanwhile and nobody took it: the work is done, so keep it.
        """
        with self.lock:
            doc = dict(self.doc)
            change(doc)
            for _ in range(5):
                try:
                    self.pool.couch.put(doc)
                    self.doc = doc
                    return
                except Conflict:
                    current = self.pool.couch.get_or_none(self.id)
                    if current is None:
                        raise LeaseLost(f"token {self.id} was deleted") from None
                    free = finishing and current.get("state") == "todo"
                    if not (self._ours(current) or free):
                        raise LeaseLost(f"token {self.id} is no longer ours "
                                        f"(now {current.get('state')})") from None
                    doc = current
                    change(doc)
            raise LeaseLost(f"token {self.id}: too many concurrent updates")

    def heartbeat(self) -> None:
        self._save(lambda d: tk.renew(d, self.pool.clock(), self.pool.settings.lease))

    def update(self, **fields: Any) -> None:
        """Save progress (per-file results) and renew the lease with it."""
        def change(d: dict[str, Any]) -> None:
            d.update(fields)
            tk.renew(d, self.pool.clock(), self.pool.settings.lease)
        self._save(change)

    def done(self, **fields: Any) -> None:
        self._save(lambda d: tk.finish(d, self.pool.clock(), **fields), finishing=True)

    def fail(self, code: int, message: str, *, file: str | None = None,
             transient: bool = False, **fields: Any) -> None:
        s = self.pool.settings

        def change(d: dict[str, Any]) -> None:
            d.update(fields)
            tk.fail(d, code, message, self.pool.clock(), file=file, transient=transient,
                    backoff_base=s.backoff_base, backoff_max=s.backoff_max)
        self._save(change, finishing=True)

    def stage(self, request: dict[str, Any]) -> None:
        """Hand the token to the staging poll (state ``staging``) and give up the lease."""
        self._save(lambda d: tk.to_staging(d, request, self.pool.clock()))

    def archive(self, hold: float, **fields: Any) -> None:
        """Copied; wait for the tape-backed destination to migrate the files."""
        self._save(lambda d: tk.to_archiving(d, self.pool.clock(), hold, **fields), finishing=True)

    def release(self, reason: str) -> None:
        self._save(lambda d: tk.release(d, self.pool.clock(), reason))

    def attach(self, name: str, data: bytes, content_type: str = "text/plain") -> None:
        """Store a log as an attachment (best effort: a log never costs a result)."""
        with self.lock:
            try:
                self.pool.couch.put_attachment(self.id, self.doc["_rev"], name, data,
                                               content_type)
                # Re-read: later saves must carry the stub as the server wrote it.
                self.doc = self.pool.couch.get(self.id)
            except Conflict:
                log.warning("could not attach %s to %s: token changed meanwhile", name, self.id)
