"""The central pause (GRID_XFER/pause.py, `gridxfer pause|resume`): real `gridxfer
worker` processes on real tokens stop claiming when it is set and claim again when
it is lifted; a stream's pause holds only that stream's workers."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from GRID_XFER import pause as pz
from GRID_XFER.cli import exits
from GRID_XFER.config import CouchDBConfig
from GRID_XFER.couch import Couch
from GRID_XFER.token import is_token, parse_spec
from tests.conftest import Database, cli_env, gridxfer, make_database, spawn_worker, wait_for
from tests.plugins.couchdb import CouchDB3
from tests.test_worker import recording_command

NIGHT = "n1"
STREAMS = {
    "nightly": {
        "streams": [
            {
                "name": s,
                "source": f"file:///data/{s}",
                "destination": f"file:///archive/{s}",
                "night_format": f"{s}-%Y%m%d",
            }
            for s in ("s1", "s2")
        ]
    }
}


# -- the document ---------------------------------------------------------------------
def test_pause_and_resume_all_and_streams(db: Database) -> None:
    couch = db.couch
    assert not pz.paused(couch) and not pz.paused(couch, "s1")
    state = pz.pause(couch, "s1")
    assert state["streams"] == ["s1"] and not state["all"] and "@" in state["by"]
    assert pz.paused(couch, "s1") and not pz.paused(couch, "s2") and not pz.paused(couch)
    assert pz.pause(couch, "s1")["streams"] == ["s1"]  # twice is once
    state = pz.pause(couch)
    assert state["all"] and state["streams"] == ["s1"]
    assert pz.paused(couch) and pz.paused(couch, "s2")
    # Resuming one stream while all are paused: it stays paused, and the result says so.
    state = pz.resume(couch, "s2")
    assert state["all"] and "every stream is paused" in state["note"]
    assert pz.paused(couch, "s2")
    state = pz.resume(couch, "s1")
    assert state["streams"] == [] and state["all"]
    state = pz.resume(couch)
    assert (state["all"], state["streams"]) == (False, []) and "note" not in state
    assert not pz.paused(couch) and not pz.paused(couch, "s1")
    doc = couch.get(pz.DOC_ID)
    assert doc["type"] == "gridxfer-pause" and not is_token(doc)


def _branch(couch: Couch, base: dict[str, Any], digest: str, **fields: Any) -> None:
    """Plant a second child of ``base``, as a race on a cluster leaves one."""
    gen, _, parent = base["_rev"].partition("-")
    doc = {**base, **fields, "_rev": f"{int(gen) + 1}-{digest}"}
    doc["_revisions"] = {"start": int(gen) + 1, "ids": [digest, parent]}
    couch.request("POST", "_bulk_docs", body={"docs": [doc], "new_edits": False})


def test_branches_two_writers_left_are_merged_keeping_both_changes(db: Database) -> None:
    if db.engine == "pouchdb":  # one copy never branches, and drops planted branches
        pytest.skip("pouchdb-server keeps no branch planted with new_edits=false")
    couch = db.couch
    pz.pause(couch, "s1")
    base = couch.get(pz.DOC_ID)
    # One resumed s1, the other paused s2, both from the same revision.
    _branch(couch, base, "a" * 32, streams=[], updated=base["updated"] + 1)
    _branch(couch, base, "b" * 32, streams=["s1", "s2"], updated=base["updated"] + 2)
    assert len(couch.get(pz.DOC_ID, conflicts="true")["_conflicts"]) == 1
    assert pz.state(couch)["streams"] == ["s2"]
    assert not pz.paused(couch, "s1") and pz.paused(couch, "s2")
    # The next write goes on from the merged state.
    assert pz.pause(couch, "s3")["streams"] == ["s2", "s3"]


def _pause_at_once(cfg: CouchDBConfig, names: list[str]) -> None:
    """Each name paused from its own thread and connection, spread over the coordinators."""
    barrier = threading.Barrier(len(names))
    urls = list(cfg.url)

    def run(i: int) -> None:
        k = i % len(urls)
        couch = Couch(cfg.model_copy(update={"url": urls[k:] + urls[:k]}))
        barrier.wait()
        pz.pause(couch, names[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_concurrent_pauses_of_different_streams_all_land(db: Database) -> None:
    """Each writer retries on 409 against what the other wrote."""
    names = [f"s{i}" for i in range(8)]
    _pause_at_once(db.cfg, names)
    assert pz.state(db.couch)["streams"] == names


@pytest.mark.slow
def test_on_a_cluster_concurrent_pauses_all_land_and_leave_one_branch(
    couchdb_cluster: CouchDB3, tmp_path: Path
) -> None:
    db = make_database(couchdb_cluster.urls, tmp_path, couchdb_cluster)
    for round_ in range(10):
        names = [f"r{round_}s{i}" for i in range(9)]
        _pause_at_once(db.cfg, names)
        assert set(names) <= set(pz.state(db.couch)["streams"]), round_
        live = [x for x in db.couch.leaves(pz.DOC_ID) if not x.get("_deleted")]
        assert len(live) == 1, round_
        pz.resume(db.couch)
        assert not pz.paused(db.couch, names[0])


def test_a_pause_that_cannot_be_read_or_makes_no_sense_counts_as_no_pause(
    db: Database, tmp_path: Path
) -> None:
    pz.pause(db.couch)
    assert pz.PauseWatch(db.couch, None, every=0.0).paused()
    if db.engine == "couchdb":  # refused (401): a database error, logged, not a pause
        wrong = tmp_path / "wrong.password"
        wrong.write_text("not-the-password\n")
        wrong.chmod(0o600)
        refused = Couch(db.cfg.model_copy(update={"password_file": wrong}))
        assert not pz.PauseWatch(refused, None, every=0.0).paused()
    doc = db.couch.get(pz.DOC_ID)
    db.couch.put({**doc, "all": "yes", "streams": "s1"})  # a hand edit
    assert not pz.paused(db.couch) and not pz.paused(db.couch, "s1")
    assert pz.state(db.couch)["streams"] == []


# -- workers ----------------------------------------------------------------------------
def _config(db: Database, record: Path, sleep: float = 0) -> Path:
    return db.write_config(
        worker={"command": recording_command(record, sleep), "idle_sleep": 0.5},
        **STREAMS,
    )


def _ran(record: Path) -> int:
    return len(record.read_text().splitlines()) if record.exists() else 0


def _states(db: Database) -> Counter[str]:
    return Counter(d["state"] for d in db.pool().select(NIGHT))


def _worker(cfg: Path, log: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    with open(log, "w") as err:
        return spawn_worker(cfg, "--night", NIGHT, *args, stderr=err, env=cli_env(cfg, **env))


@pytest.mark.slow
def test_a_running_worker_stops_claiming_on_pause_and_claims_again_on_resume(
    db: Database, tmp_path: Path
) -> None:
    db.pool().create(NIGHT, [parse_spec(f"e{i:03d}") for i in range(300)])
    record = tmp_path / "ran.txt"
    cfg = _config(db, record, sleep=0.2)
    log = tmp_path / "worker.log"
    w = _worker(cfg, log)
    try:
        wait_for(lambda: _ran(record) >= 3, timeout=60, what="the worker running tokens")
        out = gridxfer("pause", config=cfg, check=True)
        assert out.stdout.strip() == "paused: every stream"
        wait_for(lambda: "paused" in log.read_text(), timeout=30, what="the worker paused")
        # The token in progress is finished; then nothing more is claimed.
        wait_for(lambda: _states(db)["locked"] == 0, timeout=30, what="no token locked")
        ran, states = _ran(record), _states(db)
        time.sleep(3)  # six looks at the pause
        assert (_ran(record), _states(db)) == (ran, states)
        assert states["todo"] > 0 and w.poll() is None
        assert log.read_text().count("claiming nothing") == 1  # said once
        gridxfer("resume", config=cfg, check=True)
        wait_for(lambda: _ran(record) > ran + 2, timeout=30, what="claiming again")
        assert "claiming again" in log.read_text()
    finally:
        w.send_signal(signal.SIGTERM)
        w.wait(timeout=60)
    assert sorted(Counter(record.read_text().split()[::2]).values())[-1] == 1  # each once


@pytest.mark.slow
def test_a_paused_worker_with_idle_exit_exits_0_and_leaves_no_token_locked(
    db: Database, tmp_path: Path
) -> None:
    db.pool().create(NIGHT, [parse_spec(f"e{i:03d}") for i in range(300)])
    record = tmp_path / "ran.txt"
    cfg = _config(db, record, sleep=0.2)
    w = _worker(cfg, tmp_path / "worker.log", "--idle-exit", "--json")
    wait_for(lambda: _ran(record) >= 3, timeout=60, what="the worker running tokens")
    gridxfer("pause", config=cfg, check=True)
    out, _ = w.communicate(timeout=60)
    assert w.returncode == 0
    report = json.loads(out)
    assert report["paused"] is True
    assert report["done"] == report["processed"] == _ran(record) > 0
    states = _states(db)
    assert states["locked"] == 0 and states["todo"] == 300 - report["done"] > 0


@pytest.mark.slow
def test_a_stream_pause_holds_only_that_streams_workers(db: Database, tmp_path: Path) -> None:
    db.pool().create(NIGHT, [parse_spec(f"e{i:03d}") for i in range(20)])
    record = tmp_path / "ran.txt"
    cfg = _config(db, record)
    gridxfer("pause", "s1", config=cfg, check=True)

    def work(*args: str, **env: str) -> dict[str, Any]:
        w = _worker(cfg, tmp_path / "worker.log", "--idle-exit", "--json", *args, **env)
        out, _ = w.communicate(timeout=120)
        assert w.returncode == 0, (tmp_path / "worker.log").read_text()
        report: dict[str, Any] = json.loads(out)
        return report

    for held in (work("--stream", "s1"), work(GRIDXFER_STREAM="s1")):
        assert held["paused"] is True and held["processed"] == 0
    assert _ran(record) == 0 and _states(db) == {"todo": 20}
    free = work("--stream", "s2", "--max-tokens", "5")
    assert free["paused"] is False and free["done"] == 5
    free = work("--max-tokens", "5")  # a worker of no stream: only a pause of all holds it
    assert free["paused"] is False and free["done"] == 5
    gridxfer("pause", config=cfg, check=True)
    for held in (work("--stream", "s2"), work()):
        assert held["paused"] is True and held["processed"] == 0
    gridxfer("resume", config=cfg, check=True)
    assert work("--stream", "s1")["done"] == 10
    assert _states(db) == {"done": 20}


# -- the commands -------------------------------------------------------------------------
def test_pause_commands_name_known_streams_only_and_print_the_state(db: Database) -> None:
    cfg = db.write_config(**STREAMS)
    bad = gridxfer("pause", "nope", config=cfg)
    assert bad.returncode == exits.INVALID == 6
    assert bad.stderr.strip().splitlines() == [
        "gridxfer: error: unknown stream 'nope' (nightly.streams: s1, s2)"
    ]
    assert gridxfer("resume", "nope", config=cfg).returncode == exits.INVALID
    assert not pz.paused(db.couch, "nope")

    state = json.loads(gridxfer("pause", "s2", "--json", config=cfg, check=True).stdout)
    assert (state["all"], state["streams"]) == (False, ["s2"])
    assert gridxfer("pause", config=cfg, check=True).stdout.strip() == "paused: every stream"
    out = gridxfer("resume", "s2", config=cfg, check=True)
    assert out.stdout.strip() == "paused: every stream"
    assert "s2 stays paused" in out.stderr
    state = json.loads(gridxfer("resume", "--json", config=cfg, check=True).stdout)
    assert (state["all"], state["streams"]) == (False, [])
    assert gridxfer("resume", config=cfg, check=True).stdout.strip() == "not paused"
