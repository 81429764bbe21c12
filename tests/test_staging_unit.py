"""The pure parts of GRID_XFER.staging, in-process and without servers.

Locality words, chunking and the state-all summary; what a gfal2 or stager poll
answer means for a file; the per-token verdicts of the recall and archive polls;
and the one poll loop (pending left alone, conflicts counted, saved tokens
reported). The end-to-end behaviour against a tape emulation is in test_tape.py.
"""

from __future__ import annotations

import errno as E
from collections.abc import Iterator
from typing import Any

import pytest

from GRID_XFER.config import StagingConfig
from GRID_XFER.errors import Code, StorageError
from GRID_XFER.staging import (
    BOTH,
    LOCALITIES,
    LOST,
    NEARLINE,
    ON_DISK,
    ON_TAPE,
    ONLINE,
    UNAVAILABLE,
    Archive,
    FileState,
    Outcome,
    PollReport,
    StagerMethod,
    Staging,
    StateReport,
    Verdict,
    chunks,
    classify,
    decide_archive,
    decide_recall,
    locality,
    run_poll,
    state_all,
)
from GRID_XFER.staging.methods import gfal2_outcome, stager_outcome
from GRID_XFER.staging.poll import describe

NOW = 1_000_000.0


# -- locality -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "state", "message"),
    [
        ("ONLINE", ONLINE, ""),
        ("NEARLINE", NEARLINE, ""),
        ("ONLINE_AND_NEARLINE", BOTH, ""),
        ("online_and_nearline", BOTH, ""),
        ("LOST", LOST, ""),
        ("UNAVAILABLE", UNAVAILABLE, ""),
        ("UNKNOWN", UNAVAILABLE, "storage says UNKNOWN"),
        ("migrating", UNAVAILABLE, "storage says MIGRATING"),
        ("", UNAVAILABLE, "storage says nothing"),
    ],
)
def test_a_gfal2_status_answer_is_one_of_five_localities(
    answer: str, state: str, message: str
) -> None:
    assert classify(answer) == (state, message)
    assert state in LOCALITIES


class FakeStorage:
    """``status`` answers from a dict; a URL not in it raises the StorageError given."""

    def __init__(self, answers: dict[str, str], errors: dict[str, StorageError] | None = None):
        self.answers = answers
        self.errors = errors or {}

    def status(self, url: str) -> str:
        if url in self.errors:
            raise self.errors[url]
        return self.answers[url]


def test_locality_of_a_missing_file_is_lost_and_of_an_unreachable_one_unavailable() -> None:
    storage: Any = FakeStorage(
        {"root://h//a": "nearline"},
        {
            "root://h//gone": StorageError("no such file", errno=E.ENOENT),
            "root://h//away": StorageError("connection refused", errno=E.ECONNREFUSED),
        },
    )
    assert locality(storage, "root://h//a") == FileState("root://h//a", NEARLINE)
    assert locality(storage, "root://h//gone") == FileState("root://h//gone", LOST, "no such file")
    away = locality(storage, "root://h//away")
    assert away.state == UNAVAILABLE and "connection refused" in away.message


@pytest.mark.parametrize(("n", "size"), [(0, 3), (1, 3), (3, 3), (7, 3), (10, 1), (5, 50)])
def test_chunks_cover_every_item_once_in_order(n: int, size: int) -> None:
    items = list(range(n))
    parts = list(chunks(items, size))
    assert [x for p in parts for x in p] == items
    assert all(len(p) == size for p in parts[:-1])
    assert all(0 < len(p) <= size for p in parts)
    assert len(parts) == -(-n // size)


@pytest.mark.parametrize("threads", [1, 3, 16])
def test_state_all_keeps_the_order_of_the_urls_whatever_the_threads(threads: int) -> None:
    words = [ONLINE, NEARLINE, BOTH, "UNKNOWN"]
    urls = [f"root://h//f{i}" for i in range(23)]
    storage: Any = FakeStorage({u: words[i % 4] for i, u in enumerate(urls)})
    got = state_all(storage, urls, threads=threads, batch=4)
    assert [f.url for f in got] == urls
    assert [f.state for f in got] == [
        [ONLINE, NEARLINE, BOTH, UNAVAILABLE][i % 4] for i in range(23)
    ]
    assert state_all(storage, [], threads=threads) == []


def test_state_report_counts_and_percentages() -> None:
    files = [
        FileState("a", ONLINE),
        FileState("b", NEARLINE),
        FileState("c", NEARLINE),
        FileState("d", BOTH),
        FileState("e", LOST, "no such file"),
        FileState("f", UNAVAILABLE, "timeout"),
    ]
    report = StateReport(files, seconds=1.23456)
    assert report.counts == {ONLINE: 1, NEARLINE: 2, BOTH: 1, UNAVAILABLE: 1, LOST: 1}
    assert report.percent(ON_DISK) == 33.33  # a, d
    assert report.percent(ON_TAPE) == 50.0  # b, c, d
    assert [f.url for f in report.problems] == ["e", "f"]
    data = report.as_dict()
    assert data["total"] == 6 and data["seconds"] == 1.235
    assert (data["percent_online"], data["percent_on_tape"]) == (33.33, 50.0)
    assert data["files"][4] == {"url": "e", "state": LOST, "message": "no such file"}
    assert data["files"][0] == {"url": "a", "state": ONLINE}


def test_an_empty_state_report_is_zero_percent_with_every_locality_counted() -> None:
    report = StateReport([])
    assert report.counts == dict.fromkeys(LOCALITIES, 0)
    assert report.percent(ON_DISK) == 0.0 and report.problems == []


def test_a_file_state_shows_its_url_redacted() -> None:
    shown = FileState("davs://h/f?access_token=SECRET", ONLINE).as_dict()["url"]
    assert "SECRET" not in shown


# -- what a poll answer means -------------------------------------------------------
@pytest.mark.parametrize(
    ("err", "state"),
    [
        (None, "online"),
        (StorageError("gone", errno=E.ENOENT), "failed"),
        (StorageError("no request", errno=E.ENOMSG), "pending"),
        (StorageError("busy", errno=E.EAGAIN), "pending"),
        (StorageError("in progress", errno=E.EINPROGRESS), "pending"),
        (StorageError("hiccup", errno=E.EIO, transient=True), "pending"),
        (StorageError("refused", errno=E.EACCES), "failed"),
    ],
)
def test_gfal2_poll_answers(err: StorageError | None, state: str) -> None:
    outcome = gfal2_outcome(err)
    assert outcome.state == state
    if err is not None and err.errno == E.ENOENT:
        assert outcome.message == "missing on tape"
    elif err is not None:
        assert E.errorcode[err.errno] in outcome.message


@pytest.mark.parametrize(
    ("status", "staged", "state"),
    [
        ("in progress", True, "online"),
        ("in progress", False, "pending"),
        ("scheduled", False, "pending"),
        ("success", False, "failed"),
        ("aborted", False, "failed"),
    ],
)
def test_stager_poll_answers(status: str, staged: bool, state: str) -> None:
    outcome = stager_outcome("42", status, staged)
    assert outcome.state == state
    if state == "failed":
        assert "stager request 42" in outcome.message


# -- the recall poll's verdict per token ---------------------------------------------
def staging_doc(*urls_by_part: list[str], deadline: float = NOW + 60) -> dict[str, Any]:
    files = [{"name": u.rsplit("/", 1)[-1], "url": u} for part in urls_by_part for u in part]
    return {
        "_id": "n1_e1",
        "state": "staging",
        "files": files,
        "stage_request": {
            "method": "gfal2",
            "id": "gfal2-abc",
            "parts": [
                {"key": f"k{i}", "urls": p, "t": NOW - 10} for i, p in enumerate(urls_by_part)
            ],
            "requested": NOW - 100,
            "deadline": deadline,
        },
    }


A, B, C = "root://h//n/a", "root://h//n/b", "root://h//n/c"


def test_recall_verdict_all_online_is_staged() -> None:
    doc = staging_doc([A, B], [C])
    out = {("k0", A): Outcome("online"), ("k0", B): Outcome("online"), ("k1", C): Outcome("online")}
    assert decide_recall(doc, out, NOW) == Verdict("staged")


def test_recall_verdict_a_failed_file_fails_the_token_naming_the_first() -> None:
    doc = staging_doc([A, B, C])
    out = {
        ("k0", A): Outcome("online"),
        ("k0", B): Outcome("failed", "missing on tape"),
        ("k0", C): Outcome("failed", "EIO"),
    }
    v = decide_recall(doc, out, NOW + 10_000)  # a failure wins over the deadline
    assert (v.bucket, v.code, v.file) == ("failed", Code.NOT_STAGED, "b")
    assert v.message == f"staging failed: {B}: missing on tape (and 1 more)"


def test_recall_verdict_waits_until_the_deadline_then_times_out() -> None:
    doc = staging_doc([A, B], deadline=NOW)
    out = {("k0", A): Outcome("online")}  # B not answered: pending
    assert decide_recall(doc, out, NOW).bucket == "pending"
    v = decide_recall(doc, out, NOW + 1)
    assert (v.bucket, v.code, v.file) == ("timed_out", Code.STAGING_TIMEOUT, None)
    assert v.message == "staging request gfal2-abc (gfal2): 1 of 2 file(s) not online after 101 s"


def test_recall_verdict_counts_an_outcome_under_its_own_part_only() -> None:
    doc = staging_doc([A], [B])
    out = {("k0", A): Outcome("online"), ("k0", B): Outcome("online")}  # B asked under k1
    assert decide_recall(doc, out, NOW).bucket == "pending"


# -- the archive poll's verdict per token --------------------------------------------
def archiving_doc(deadline: float = NOW + 60) -> dict[str, Any]:
    return {
        "_id": "n1_e1",
        "state": "archiving",
        "destination": "root://t//arch/n1",
        "files": [{"name": "a"}, {"name": "b"}],
        "archive_deadline": deadline,
        "archiving_since": NOW - 50,
    }


def states(*words: str) -> list[FileState]:
    return [FileState(f"root://t//arch/n1/{n}", w) for n, w in zip("ab", words, strict=True)]


def test_archive_verdicts() -> None:
    doc = archiving_doc(deadline=NOW)
    assert decide_archive(doc, states(NEARLINE, BOTH), NOW) == Verdict("done")
    assert decide_archive(doc, states(ONLINE, BOTH), NOW).bucket == "pending"
    lost = decide_archive(doc, states(ONLINE, LOST), NOW)
    assert (lost.bucket, lost.code, lost.file) == ("failed", Code.ARCHIVE_FAILED, "b")
    assert lost.message == "archive failed: root://t//arch/n1/b: LOST"
    late = decide_archive(doc, states(ONLINE, BOTH), NOW + 1)
    assert (late.bucket, late.code, late.file) == ("timed_out", Code.ARCHIVE_TIMEOUT, "a")
    assert late.message == "1 of 2 file(s) not on tape after 51 s (e.g. a: ONLINE)"


# -- the one poll loop ---------------------------------------------------------------
class FakePool:
    """Saves succeed except for the ids in ``conflicts`` (another poller was first)."""

    def __init__(self, docs: list[dict[str, Any]], conflicts: frozenset[str] = frozenset()):
        self.docs = docs
        self.conflicts = conflicts
        self.saved: list[dict[str, Any]] = []

    def staging(self, night: str | None) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["state"] == "staging"]

    def archiving(self, night: str | None) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["state"] == "archiving"]

    def save(self, doc: dict[str, Any]) -> bool:
        if doc["_id"] in self.conflicts:
            return False
        self.saved.append(doc)
        return True


class ListPoll:
    """A TokenPoll whose verdicts are given per token id."""

    def __init__(self, verdicts: dict[str, Verdict]):
        self.given = verdicts
        self.settled: list[str] = []

    def waiting(self, pool: Any, night: str | None) -> list[dict[str, Any]]:
        return list(pool.docs)

    def verdicts(
        self, docs: list[dict[str, Any]], now: float
    ) -> Iterator[tuple[dict[str, Any], Verdict]]:
        for d in docs:
            if d["_id"] in self.given:  # the others cannot be judged now
                yield d, self.given[d["_id"]]

    def settle(self, doc: dict[str, Any], verdict: Verdict, now: float) -> None:
        self.settled.append(doc["_id"])
        doc.update(state="done", history=[{"event": verdict.bucket}])


def test_the_poll_loop_saves_settled_tokens_and_counts_the_rest() -> None:
    docs = [{"_id": i, "state": "waiting"} for i in ("t1", "t2", "t3", "t4", "t5")]
    pool = FakePool(docs, conflicts=frozenset({"t3"}))
    poll = ListPoll(
        {
            "t1": Verdict("staged"),
            "t2": Verdict("pending"),
            "t3": Verdict("failed", Code.NOT_STAGED, "x"),
            "t4": Verdict("timed_out", Code.STAGING_TIMEOUT, "y"),
        }
    )
    report = run_poll(poll, pool, None, lambda: NOW)
    assert (report.staged, report.pending, report.timed_out) == (["t1"], ["t2"], ["t4"])
    assert report.failed == [] and report.conflicts == 1
    assert poll.settled == ["t1", "t3", "t4"]  # pending ones are not touched
    assert [d["_id"] for d in pool.saved] == ["t1", "t4"]
    assert report.as_dict() == {
        "staged": 1,
        "failed": 0,
        "timed_out": 1,
        "pending": 1,
        "done": 0,
        "conflicts": 1,
    }


def test_a_poll_with_nothing_waiting_reports_nothing() -> None:
    assert run_poll(ListPoll({}), FakePool([]), "n1", lambda: NOW) == PollReport()


def test_describe_a_settled_token() -> None:
    assert describe({"state": "todo", "history": [{"event": "staged"}]}) == "staged"
    assert describe({"state": "error", "error": {"code": 22, "message": "m"}}) == "error 22: m"


class FakeLta:
    """An LtaClient stand-in: request 7 has staged ``staged``, with ``status``."""

    def __init__(self, status: str, staged: list[str]):
        self._status, self._staged = status, staged
        self.aborted: list[str] = []

    def status(self, rid: str) -> str:
        return self._status

    def staged_urls(self, rid: str) -> list[str]:
        return self._staged

    def abort(self, rid: str) -> None:
        self.aborted.append(rid)


def stager_doc(doc_id: str, urls: list[str], deadline: float) -> dict[str, Any]:
    doc = staging_doc(urls, deadline=deadline)
    doc["_id"] = doc_id
    doc["stage_request"].update(method="stager", id="7")
    doc["stage_request"]["parts"][0]["key"] = "7"
    return doc


def test_the_recall_poll_moves_tokens_through_the_loop() -> None:
    lta = FakeLta("in progress", [A, B])
    storage: Any = None  # the stager method never touches the storage
    client: Any = lta
    staging = Staging(storage, StagingConfig(method="stager"), stager=client, clock=lambda: NOW)
    assert isinstance(staging.method(), StagerMethod)
    ready, waiting, late = (
        stager_doc("ready", [A, B], NOW + 60),
        stager_doc("waiting", [C], NOW + 60),
        stager_doc("late", [C], NOW - 1),
    )
    pool = FakePool([ready, waiting, late])
    report = staging.poll(pool)
    assert (report.staged, report.pending, report.timed_out) == (["ready"], ["waiting"], ["late"])
    assert ready["state"] == "todo" and ready["stage_request"]["online"] == NOW
    assert late["state"] == "error" and late["error"]["code"] == Code.STAGING_TIMEOUT
    assert lta.aborted == ["7"]  # the timed-out request is not wanted any more


def test_the_archive_poll_moves_tokens_through_the_loop() -> None:
    dest = "root://t//arch/n1"
    storage: Any = FakeStorage({f"{dest}/a": BOTH, f"{dest}/b": NEARLINE})
    archive = Archive(storage, StagingConfig(tape_destination=True), clock=lambda: NOW)
    doc = archiving_doc()
    pool = FakePool([doc], conflicts=frozenset())
    report = archive.poll(pool, "n1")
    assert report.done == ["n1_e1"] and doc["state"] == "done" and doc["archived"] == NOW
