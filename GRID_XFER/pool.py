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
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from GRID_XFER import branches
from GRID_XFER import token as tk
from GRID_XFER.couch import Couch, chunked
from GRID_XFER.errors import Code, Conflict, InvalidToken, NotFound
from GRID_XFER.lease import Lease, adopt
from GRID_XFER.views import DDOC

log = logging.getLogger(__name__)

BATCH = 500
# How long a claimant on a cluster waits for lower claims of the same token to step aside.
CONFIRM_SECONDS = 5.0


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

    @property
    def grace(self) -> float:
        """Slack between clocks: a holder renews this long before its lease runs
        out, and the reaper waits this long after it."""
        return min(30.0, self.lease / 10)


class Pool:
    def __init__(
        self,
        couch: Couch,
        settings: PoolSettings | None = None,
        *,
        job_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.couch = couch
        self.settings = settings or PoolSettings()
        self.clock = clock
        base = tk.worker_identity(job_id)
        base["id"] = f"{base['id']}:{uuid.uuid4().hex[:6]}"
        self.worker = base
        self._candidates: list[dict[str, Any]] = []
        self._candidates_night: str | None = None
        # How claims went on a cluster (201, 202, 409, lost, gave up): for tests and benchmarks.
        self.stats: Counter[str] = Counter()

    # -- creating ----------------------------------------------------------
    def create(
        self,
        night: str,
        specs: Iterable[tk.ExposureSpec],
        *,
        source: str | None = None,
        destination: str | None = None,
        batch: int = BATCH,
    ) -> CreateReport:
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
                doc = tk.new_token(
                    night,
                    spec,
                    source=source,
                    destination=destination,
                    max_attempts=self.settings.max_attempts,
                    now=now,
                )
                if doc["_id"] in seen:
                    raise InvalidToken(f"exposure {spec.exposure!r} listed twice")
                seen.add(doc["_id"])
                docs.append(doc)
            rows = self.couch.all_docs(keys=[d["_id"] for d in docs], include_docs=True)
            existing = {r["key"]: r["doc"] for r in rows if r.get("doc")}
            to_save = []
            for doc in docs:
                old = existing.get(doc["_id"])
                if old is not None and not (tk.is_token(old) and old["token_set"] == night):
                    log.warning(
                        "%s: the id is taken by a document that is no token of night "
                        "%s; left alone",
                        doc["_id"],
                        night,
                    )
                    report.skipped.append(doc["_id"])
                    continue
                problem = tk.problem(old) if old is not None else None
                if problem is not None and tk.shown_state(old) in ("todo", "error"):
                    tk.quarantine(old, problem, now)  # then it is updated like any error token
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
                    old.update(
                        files=doc["files"],
                        bytes_total=doc["bytes_total"],
                        source=doc["source"],
                        destination=doc["destination"],
                        payload=doc["payload"],
                        manifest=doc["manifest"],
                        incarnation=tk.new_incarnation(),
                    )  # other work now
                    tk.add_event(old, now, "updated")
                    to_save.append(old)
            for result, doc in zip(self.couch.bulk_docs(to_save), to_save, strict=False):
                bucket = report.updated if "_rev" in doc else report.created
                if result.get("error") == "conflict":
                    report.skipped.append(doc["_id"])  # changed by someone meanwhile
                elif result.get("error"):
                    raise InvalidToken(
                        f"token {doc['_id']}: server refused it: "
                        f"{result.get('reason') or result['error']}"
                    )
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
            rows += self.couch.view(
                DDOC,
                name,
                startkey=startkey,
                endkey=endkey,
                limit=self.settings.window - len(rows),
                include_docs=True,
            )["rows"]
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
            if not tk.ready(doc, now):
                continue
            problem = tk.problem(doc)
            if problem is not None:  # before anything reads its fields
                self._quarantine(doc, problem, now)
                continue
            tk.claim(doc, self.worker, now, self.settings.lease)
            if self._take(doc):
                return Lease(self, doc)

    def _take(self, doc: dict[str, Any]) -> bool:
        """Save a claim and make sure it is ours alone (docs/tokens.md, claiming).

        One copy: its ``_rev`` check decides; a 409 after a resent PUT may be our
        own unseen success, so look. A cluster: no answer settles it (a 201 can
        race a claim from another branch, a 202 or even a 409 can leave our claim
        on some copies), so every claim is judged from every reachable copy's
        branches (:func:`branches.judge_claim`).
        """
        try:
            write = self.couch.put(doc)
        except Conflict as exc:
            if not self.couch.replicated:
                return exc.retried and self._won_anyway(doc)
            self.stats["claims_409"] += 1
            log.debug(
                "claim %s of %s: 409%s",
                doc["claim"],
                doc["_id"],
                " after a resent PUT" if exc.retried else "",
            )
            # Others are taking our candidates: on a cluster a lost race costs a look
            # at the branches too, so read a fresh window rather than race on.
            self._candidates = []
        else:
            if not self.couch.replicated:
                return True
            self.stats["claims_201" if write.quorum else "claims_202"] += 1
            log.debug(
                "claim %s of %s: %s %s",
                doc["claim"],
                doc["_id"],
                201 if write.quorum else 202,
                write.rev,
            )
        return self._confirm(doc)

    def claimable_now(self, night: str | None = None) -> list[dict[str, Any]]:
        """Todo tokens a quorum read finds claimable, for a worker about to go idle.

        On a cluster the todo view answers from one copy per shard range, which can
        lag: a token released or retried a moment ago may be missing there. So the
        night's tokens (every night with open tokens, without one) are read from a
        quorum of copies, and the claimable ones become the next claim candidates.
        """
        nights = (
            [night]
            if night is not None
            else sorted(
                n
                for n, states in self.counts().items()
                if any(states.get(s, {}).get("count") for s in ("todo", "locked", "staging"))
            )
        )
        now = self.clock()
        found = [d for n in nights for d in self._night_tokens(n) if tk.ready(d, now)]
        if found:
            self._candidates, self._candidates_night = found, night
        return found

    def _won_anyway(self, doc: dict[str, Any]) -> bool:
        # A PUT resent after a lost answer sees its own success as a 409.
        current = self.couch.get_or_none(doc["_id"])
        if current and current.get("claim") == doc["claim"] and current.get("state") == "locked":
            doc.clear()
            doc.update(current)
            return True
        return False

    def _confirm(self, doc: dict[str, Any]) -> bool:
        """Look at every branch until ours is the only live one, or we step aside."""
        delay, waited = 0.05, 0.0
        while True:
            verdict = branches.judge_claim(
                self.couch.leaves(doc["_id"]), doc["claim"], self.clock()
            )
            clean = self._delete_leaves(doc["_id"], verdict.delete)
            log.debug(
                "claim %s of %s: %s, deleted %s%s",
                doc["claim"],
                doc["_id"],
                verdict.outcome,
                verdict.delete,
                "" if clean else " (not all)",
            )
            if verdict.outcome == "own" and clean:
                assert verdict.current is not None
                doc.clear()
                doc.update(adopt(verdict.current))
                return True
            if verdict.outcome == "lost":
                self.stats["claims_lost"] += 1
                return False
            if waited >= CONFIRM_SECONDS:
                # A lower live claim never stepped aside: an owner that went ahead
                # first. Our branch stays (deleting it could race that owner's
                # cleanup); the owner or the sweeper removes it.
                self.stats["claims_gave_up"] += 1
                log.info(
                    "claim of %s not confirmed within %.0fs; leaving it",
                    doc["_id"],
                    CONFIRM_SECONDS,
                )
                return False
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.8)

    def _delete_leaves(self, doc_id: str, revs: list[str]) -> bool:
        """Delete leaf revisions; False if one of them changed meanwhile."""
        clean = True
        for rev in revs:
            try:
                self.couch.delete(doc_id, rev)
            except (Conflict, NotFound):
                clean = False
        return clean

    def _quarantine(self, doc: dict[str, Any], message: str, now: float) -> bool:
        """Save a malformed token as error 2 (:func:`token.quarantine`); False if it
        changed meanwhile (whoever changed it, or the next look, deals with it)."""
        tk.quarantine(doc, message, now)
        try:
            self.couch.put(doc)
        except Conflict:
            return False
        log.error(
            "%s: set to error %d, never run until it is fixed and reset",
            message,
            Code.INVALID_TOKEN,
        )
        return True

    # -- maintenance -------------------------------------------------------
    def reap(self, night: str | None = None) -> list[str]:
        """Return tokens whose lease expired to todo (or to error 90 after max_attempts),
        and quarantine (error 2) held or staging tokens that are malformed: held
        without a lease, in no known state, or failing validation once expired.

        Not within a lease of this process riding out a database outage: live
        workers cut off by the same outage could not renew meanwhile, and need
        that long to heartbeat again before their tokens count as lost.
        """
        recovered = self.couch.recovered_at
        if recovered is not None and time.monotonic() - recovered < self.settings.lease:
            log.info(
                "not reaping yet: the database was unreachable until %.0f s ago",
                time.monotonic() - recovered,
            )
            return []
        now = self.clock()
        grace = self.settings.grace
        # Key 0: held without a lease, or in no known state (the view's map): malformed.
        rows = self.couch.view(DDOC, "leases", startkey=0, endkey=now - grace)["rows"]
        ids = [r["id"] for r in rows if night is None or (r.get("value") or [None])[0] == night]
        # The view answers from one copy per shard range, which can lag: act on what a
        # quorum of copies says. Conflicted tokens are the sweeper's (sweep) first.
        current = self.couch.docs(ids, conflicts=True) if ids else {}
        docs: list[dict[str, Any]] = []
        invalid: list[dict[str, Any]] = []
        for d in current.values():
            if not d or d.get("_conflicts") or not tk.is_token(d):
                continue
            problem = tk.problem(d)
            if problem is not None:  # quarantined, not reaped: a retry would fail the same way
                d = adopt(d)
                tk.quarantine(d, problem, now)
                invalid.append(d)
            elif tk.is_expired(d, now, grace):
                d = adopt(d)
                tk.expire(d, now)
                docs.append(d)
        staging, bad_staging = self._overdue_staging(night, now)
        docs += staging
        invalid += bad_staging
        quarantined = {d["_id"] for d in invalid}
        reaped = []
        for chunk in chunked(docs + invalid, BATCH):
            for result, doc in zip(self.couch.bulk_docs(chunk), chunk, strict=False):
                if result.get("error"):
                    continue
                reaped.append(doc["_id"])
                if doc["_id"] in quarantined:
                    log.error(
                        "%s: set to error %d, never run until it is fixed and reset",
                        doc["error"]["message"],
                        Code.INVALID_TOKEN,
                    )
                else:
                    log.warning(
                        "reaped %s (lease of %s expired) -> %s",
                        doc["_id"],
                        doc["history"][-1].get("worker", "?"),
                        doc["state"],
                    )
        return reaped

    def sweep(self, night: str | None = None) -> list[str]:
        """Settle conflicted tokens that no claimant or owner is settling.

        Only a cluster makes conflicts (docs/tokens.md); the branch that is the
        token stays and the others go, by :func:`branches.judge_conflict`'s rule.
        """
        span: dict[str, Any] = {} if night is None else {"startkey": [night], "endkey": [night, {}]}
        rows = self.couch.view(DDOC, "conflicts", **span)["rows"]
        swept = []
        for doc_id in sorted({r["id"] for r in rows}):
            verdict = branches.judge_conflict(self.couch.leaves(doc_id), self.clock())
            if verdict.outcome == "skip" or not verdict.delete:
                continue
            if self._delete_leaves(doc_id, verdict.delete):
                swept.append(doc_id)
                log.info(
                    "settled conflicted token %s: kept %s, deleted %d branch(es)",
                    doc_id,
                    verdict.current["_rev"] if verdict.current else "?",
                    len(verdict.delete),
                )
        return swept

    def _overdue_staging(
        self, night: str | None, now: float
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Staging tokens a lease past their deadline: no poller ran (no transfer
        workers left, no `stage --poll`), so time them out here (23) rather than
        let them wait forever; pollers normally do this first, and abort the request.
        Also the malformed ones, quarantined (pollers skip them): (timed out, invalid)."""
        span: dict[str, Any] = {} if night is None else {"startkey": [night], "endkey": [night, {}]}
        rows = self.couch.view(DDOC, "staging", include_docs=True, **span)["rows"]
        out, invalid = [], []
        for r in rows:
            d = r.get("doc")
            if not d or d.get("state") != "staging" or not tk.is_token(d):
                continue
            problem = tk.problem(d)
            if problem is not None:
                tk.quarantine(d, problem, now)
                invalid.append(d)
                continue
            deadline = (d.get("stage_request") or {}).get("deadline")
            if deadline and now > deadline + self.settings.lease:
                tk.staging_failed(
                    d,
                    Code.STAGING_TIMEOUT,
                    f"staging request "
                    f"{d['stage_request'].get('id')} not online "
                    f"{now - deadline:.0f} s after its deadline, and no poller "
                    "settled it",
                    now,
                )
                out.append(d)
        return out, invalid

    def select(
        self, night: str, states: Iterable[str] | None = None, codes: Iterable[int] | None = None
    ) -> list[dict[str, Any]]:
        """The night's token documents, optionally filtered by state and error code.

        On a cluster a view answers from one copy per shard range, and pages of it
        read from copies at different points can skip a token that moved between
        states; so there the night's ids are listed from ``_all_docs`` (ids are
        ``<night>_<exposure>`` and never move) and the documents read from a quorum.
        A malformed token is listed as :func:`token.shown_state` and
        :func:`token.error_code` have it (an unknown state as error 2), as the views
        count it.
        """
        wanted = set(states) if states else set(tk.STATES)
        code_set = {int(c) for c in codes} if codes else None
        if self.couch.replicated:
            docs = sorted(
                self._night_tokens(night),
                key=lambda d: (tk.STATES.index(tk.shown_state(d)), d["_id"]),
            )
        else:
            docs = [
                row["doc"]
                for state in sorted(wanted, key=tk.STATES.index)
                for row in self.couch.iter_view(
                    DDOC,
                    "by_state",
                    reduce=False,
                    include_docs=True,
                    startkey=[night, state],
                    endkey=[night, state, {}],
                )
                if row.get("doc")
            ]
        return [
            d
            for d in docs
            if tk.is_token(d)
            and tk.shown_state(d) in wanted
            and (code_set is None or tk.error_code(d) in code_set)
        ]

    def _night_tokens(self, night: str) -> list[dict[str, Any]]:
        """A night's tokens by id (``<night>_<exposure>``), as a quorum of copies has them."""
        ids = list(self.couch.iter_ids(tk.token_id(night, "")))
        return [
            d
            for d in current_tokens(self.couch, ids, self.clock()).values()
            if d.get("type") == tk.TOKEN_TYPE and d.get("token_set") == night
        ]

    def reset(
        self,
        night: str,
        states: Iterable[str] | None = None,
        codes: Iterable[int] | None = None,
        *,
        force: bool = False,
    ) -> list[str]:
        """Give tokens a fresh start. Default: every errored token of the night.

        A token a live worker holds (lease not expired) is left alone unless
        ``force``: resetting it would let a second worker run it alongside.
        """
        states = list(states) if states else (["error"] if not codes else ["error", "todo"])
        now = self.clock()
        docs = self.select(night, states, codes)
        live = [d["_id"] for d in docs if d.get("state") in tk.HELD and not tk.is_expired(d, now)]
        if live and not force:
            log.warning(
                "left %d token(s) alone that live workers hold (e.g. %s); "
                "--force resets them anyway",
                len(live),
                live[0],
            )
            docs = [d for d in docs if d["_id"] not in live]
        for d in docs:
            problem = tk.problem(d)
            if problem is not None:  # quarantine first: a reset then has the fields it needs
                tk.quarantine(d, problem, now)
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
            for result, doc in zip(self.couch.bulk_docs(chunk), chunk, strict=False):
                if result.get("error") == "forbidden":  # the write check: still malformed
                    log.warning(
                        "%s: refused by the database's write check: %s; fix the "
                        "document and run this again",
                        doc["_id"],
                        result.get("reason"),
                    )
                elif result.get("error"):
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
            out.setdefault(n, {})[state] = {
                "count": int(row["value"]["count"]),
                "bytes": int(row["value"]["sum"]),
            }
        return out

    # -- tape: tokens nobody holds while they wait ---------------------------
    def staging(self, night: str | None = None) -> list[dict[str, Any]]:
        """Tokens waiting for a tape recall (the ``staging`` view)."""
        params: dict[str, Any] = {"include_docs": True}
        if night is not None:
            params.update(startkey=[night], endkey=[night, {}])
        # Not paged: keys repeat (tokens share a request), which paging by key cannot do.
        # Malformed ones are left to the reaper (error 2): a poll never trips over them.
        return [
            r["doc"]
            for r in self.couch.view(DDOC, "staging", **params)["rows"]
            if r.get("doc") and r["doc"].get("state") == "staging" and tk.problem(r["doc"]) is None
        ]

    def archiving(self, night: str | None = None) -> list[dict[str, Any]]:
        """Tokens copied to a tape-backed destination, waiting for migration
        (malformed ones are left to the reaper)."""
        nights = [n for n, states in self.counts(night).items() if states.get("archiving")]
        return [
            d
            for n in nights
            for d in self.select(n, ["archiving"])
            if d.get("state") == "archiving" and tk.problem(d) is None
        ]

    def waiting(self, night: str | None = None) -> int:
        """How many tokens are staging or archiving (work that will come back)."""
        return sum(
            states.get(s, {}).get("count", 0)
            for states in self.counts(night).values()
            for s in ("staging", "archiving")
        )

    def save(self, doc: dict[str, Any]) -> bool:
        """Save a token changed by a poll; False if someone else changed it first (409)."""
        try:
            self.couch.put(doc)
        except Conflict:
            return False
        return True

    def get(self, token_id: str) -> dict[str, Any]:
        """One token; on a cluster, the branch that is the token if it has several."""
        if self.couch.replicated:
            doc = current_tokens(self.couch, [token_id], self.clock()).get(token_id)
            if doc is None:
                raise NotFound(f"no token {token_id!r}")
            return doc
        try:
            return self.couch.get(token_id)
        except NotFound:
            raise NotFound(f"no token {token_id!r}") from None

    def require_night(self, night: str) -> None:
        if night not in self.counts(night):
            raise NotFound(f"unknown night {night!r}: no tokens in database {self.couch.db!r}")


def current_tokens(couch: Couch, ids: list[str], now: float) -> dict[str, dict[str, Any]]:
    """Tokens as a quorum of copies has them; a conflicted one as the branch that
    is the token (:func:`branches.preferred`), not whichever CouchDB shows."""
    out: dict[str, dict[str, Any]] = {}
    for doc_id, doc in couch.docs(list(dict.fromkeys(ids)), conflicts=True).items():
        if doc and doc.get("_conflicts"):
            doc = branches.preferred(couch.leaves(doc_id), now)
        if doc:
            out[doc_id] = adopt(doc)
    return out


def _work(files: Any) -> list[Any] | None:
    """Files as the scan would write them (results and empty fields aside), for comparing;
    None for a list that is no list of files (a malformed token: not the same work)."""
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        return None
    out = []
    for f in files:
        entry = {k: v for k, v in f.items() if k != "result" and v not in (None, {}, [])}
        out.append(entry)
    return out


def _same_work(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return (
        _work(old.get("files", [])) == _work(new["files"])
        and old.get("manifest") == new.get("manifest")
        and old.get("source") == new["source"]
        and old.get("destination") == new["destination"]
    )
