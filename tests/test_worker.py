"""Worker processes (the real `gridxfer worker`) against a real server."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from GRID_XFER.errors import Code
from GRID_XFER.pool import PoolSettings
from GRID_XFER.token import parse_spec
from GRID_XFER.worker import batch_job_id
from tests.conftest import (
    Database,
    cli_env,
    free_port,
    gridxfer,
    make_database,
    spawn_worker,
    start_server,
    wait_for,
)


def recording_command(out: Path, sleep: float = 0) -> str:
    # Each run appends "<token> <worker pid>" (one short O_APPEND write: atomic).
    nap = f"sleep {sleep}; " if sleep else ""
    return f"sh -c '{nap}echo \"$GRIDXFER_TOKEN_ID $PPID\" >> {out}'"


@pytest.mark.slow
def test_eight_workers_drain_2000_tokens_each_exactly_once(db: Database, tmp_path: Path) -> None:
    out = tmp_path / "ran.txt"
    db.pool().create("n1", [parse_spec(f"e{i:05d}") for i in range(2000)])
    cfg = db.write_config(worker={"command": recording_command(out), "lease_seconds": 120})
    workers = [
        spawn_worker(cfg, "--night", "n1", "--idle-exit", "--json", stderr=subprocess.DEVNULL)
        for _ in range(8)
    ]
    for w in workers:
        assert w.wait(timeout=600) == 0
    runs = [line.split() for line in out.read_text().splitlines()]
    ran = Counter(token for token, _ in runs)
    assert len(ran) == 2000
    assert [t for t, n in ran.items() if n > 1] == []
    pids = {w.pid for w in workers}
    assert {int(pid) for _, pid in runs} <= pids
    pool = db.pool()
    counts = pool.counts("n1")["n1"]
    assert counts == {"done": {"count": 2000, "bytes": 0}}
    ran_by = dict(runs)
    for doc in pool.select("n1")[:200]:  # the token names the worker that ran it
        assert doc["worker"]["pid"] == int(ran_by[doc["_id"]])


@pytest.mark.slow
def test_sigkilled_worker_token_is_reaped_and_completed_then_errors_90(
    db: Database, tmp_path: Path
) -> None:
    out = tmp_path / "ran.txt"
    db.pool(max_attempts=2).create("n1", [parse_spec("only")])
    slow = db.write_config(worker={"command": "sleep 30", "lease_seconds": 1.5, "max_attempts": 2})
    fast_cfg = tmp_path / "fast.yaml"
    fast_cfg.write_text(slow.read_text().replace("sleep 30", recording_command(out)))

    # The lease (1.5 s) and the reaper's clock grace have passed.
    expired = 1.5 + PoolSettings(lease=1.5).grace + 0.2

    def kill_while_holding() -> None:
        w = spawn_worker(slow, "--night", "n1")
        wait_for(lambda: db.pool().get("n1_only")["state"] == "locked", timeout=30)
        os.kill(w.pid, signal.SIGKILL)  # the node dies; its `sleep` child is orphaned
        w.wait()

    kill_while_holding()
    assert db.pool().get("n1_only")["state"] == "locked"
    time.sleep(expired)
    reap = gridxfer("tokens", "reap", "--json", config=slow, check=True)
    assert "n1_only" in reap.stdout
    doc = db.pool().get("n1_only")
    assert doc["state"] == "todo" and doc["attempts"] == 1
    assert doc["error"]["code"] == Code.LEASE_EXPIRED

    # Another worker completes it.
    gridxfer("worker", "--night", "n1", "--idle-exit", config=fast_cfg, check=True)
    assert out.read_text().split()[0] == "n1_only"
    assert db.pool().get("n1_only")["state"] == "done"

    # After max_attempts such losses it ends in error 90.
    gridxfer("tokens", "reset", "n1", "--state", "done", config=slow, check=True)
    for _ in range(2):
        kill_while_holding()
        time.sleep(expired)
        gridxfer("tokens", "reap", config=slow, check=True)
    doc = db.pool().get("n1_only")
    assert doc["state"] == "error" and doc["output"] == 90 and doc["attempts"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_task_releases_token_without_attempt(db: Database, signum: int) -> None:
    db.pool().create("n1", [parse_spec("a")])
    cfg = db.write_config(worker={"command": "sleep 60", "lease_seconds": 30})
    w = spawn_worker(cfg, "--night", "n1")
    wait_for(lambda: db.pool().get("n1_a")["state"] == "locked", timeout=30)
    t0 = time.monotonic()
    w.send_signal(signum)
    _, err = w.communicate(timeout=30)
    assert w.returncode == 128 + signum
    assert time.monotonic() - t0 < 20  # the task was stopped, not waited for
    assert "released" in err
    doc = db.pool().get("n1_a")
    assert doc["state"] == "todo" and doc["attempts"] == 0 and doc["lock"] == 0
    assert doc["history"][-1]["event"] == "released"


@pytest.mark.slow
def test_failing_command_records_code_message_and_log(db: Database, tmp_path: Path) -> None:
    db.pool().create("n1", [parse_spec("a")])
    script = tmp_path / "fail.sh"
    script.write_text(
        "#!/bin/sh\necho checking $GRIDXFER_EXPOSURE\necho 'sha256 differs' >&2\nexit 30\n"
    )
    script.chmod(0o755)
    cfg = db.write_config(worker={"command": str(script)})
    gridxfer("worker", "--idle-exit", config=cfg, check=True)
    doc = db.pool().get("n1_a")
    assert doc["state"] == "error" and doc["output"] == 30
    assert "sha256 differs" in doc["error"]["message"]
    (name,) = doc["_attachments"]
    log = db.couch.get_attachment("n1_a", name).decode()
    assert "checking a" in log


@pytest.mark.slow
def test_worker_rides_out_a_server_restart_and_loses_nothing(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", free_port())
    try:
        db = make_database(srv.url, tmp_path)
        out = tmp_path / "ran.txt"
        db.pool().create("n1", [parse_spec(f"e{i:03d}") for i in range(150)])
        cfg = db.write_config(
            worker={
                "command": recording_command(out, 0.02),
                "lease_seconds": 120,
                "outage_seconds": 120,
            }
        )
        logs = [open(tmp_path / f"w{i}.err", "w") for i in range(2)]
        workers = [spawn_worker(cfg, "--night", "n1", "--idle-exit", stderr=f) for f in logs]
        wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 20, timeout=30)
        srv.stop()
        time.sleep(3)
        assert all(w.poll() is None for w in workers)  # still waiting, not dead
        srv.start()
        for w in workers:
            assert w.wait(timeout=300) == 0
        err = "".join((tmp_path / f"w{i}.err").read_text() for i in range(2))
        assert "unavailable" in err and srv.url in err
        ran = Counter(line.split()[0] for line in out.read_text().splitlines())
        assert len(ran) == 150
        assert db.pool().counts("n1")["n1"]["done"]["count"] == 150
        # A token whose result was in flight may have run twice, never zero times.
        assert sum(ran.values()) - 150 <= 2
    finally:
        srv.stop()


@pytest.mark.slow
def test_worker_exits_with_4_when_server_never_returns(db: Database, tmp_path: Path) -> None:
    cfg = tmp_path / "gone.yaml"
    cfg.write_text(
        f"couchdb: {{url: 'http://127.0.0.1:{free_port()}', retries: 1, "
        "backoff: 0.1}\nworker: {outage_seconds: 1, command: 'true'}\n"
    )
    proc = gridxfer("worker", "--idle-exit", config=cfg)
    assert proc.returncode == 4
    assert proc.stderr.strip().splitlines()[-1].startswith("gridxfer: error: database server")


def test_batch_job_id_from_slurm_array_and_plain_jobs() -> None:
    assert (
        batch_job_id({"SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "15"})
        == "12_3"
    )
    assert batch_job_id({"SLURM_JOB_ID": "15"}) == "15"
    assert batch_job_id({}) is None


@pytest.mark.slow
def test_worker_records_batch_job_id_in_token(db: Database) -> None:
    db.pool().create("n1", [parse_spec("a")])
    cfg = db.write_config(worker={"command": "true"})
    env = cli_env(cfg, SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="2")
    gridxfer("worker", "--idle-exit", config=cfg, env=env, check=True)
    doc = db.pool().get("n1_a")
    assert doc["job_id"] == "77_2" and doc["worker"]["job_id"] == "77_2"


@pytest.mark.slow
def test_secret_not_passed_to_task_environment(db: Database, tmp_path: Path) -> None:
    db.pool().create("n1", [parse_spec("a")])
    out = tmp_path / "env.txt"
    cfg = db.write_config(worker={"command": f"sh -c 'env > {out}'"})
    # CouchDB 3 checks the real password; pouchdb-server in admin party ignores one,
    # which must still stay hidden.
    secret = db.cfg.secret() or "s3cret-Pa55"
    env = cli_env(cfg, GRIDXFER_COUCHDB_PASSWORD=secret)
    gridxfer("worker", "--idle-exit", config=cfg, env=env, check=True)
    assert secret not in out.read_text()
    assert "GRIDXFER_TOKEN_ID=n1_a" in out.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("edit", ["reset --force", "delete", "delete and create again"])
def test_a_token_edited_while_its_worker_runs_it_gets_no_stale_result(
    db: Database, edit: str
) -> None:
    """What each edit does to a running worker (docs/tokens.md): the holder drops its
    result and goes on; a reset or re-created token is then run anew."""
    db.pool().create("n1", [parse_spec({"exposure": "a", "payload": {"v": 1}})])
    cfg = db.write_config(worker={"command": "sleep 3", "lease_seconds": 30})
    w = spawn_worker(cfg, "--night", "n1", "--idle-exit")
    try:
        wait_for(lambda: db.pool().get("n1_a")["state"] == "locked", timeout=30)
        if edit == "reset --force":
            gridxfer(
                "tokens", "reset", "n1", "--state", "locked", "--force", config=cfg, check=True
            )
        else:
            gridxfer("tokens", "delete", "n1", "--yes", config=cfg, check=True)
        if edit == "delete and create again":
            db.pool().create("n1", [parse_spec({"exposure": "a", "payload": {"v": 2}})])
        _, err = w.communicate(timeout=60)
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    assert w.returncode == 0, err[-2000:]
    assert "result dropped" in err or "no longer ours" in err, err[-2000:]
    if edit == "delete":
        assert db.couch.get_or_none("n1_a") is None
        return
    doc = db.pool().get("n1_a")
    events = [h["event"] for h in doc["history"]]
    # Done again after the edit, by a claim made after it: not the old run's result.
    assert doc["state"] == "done" and doc["attempts"] == 1, events
    start = events.index("reset") if edit == "reset --force" else 0
    assert events[start:] == [events[start], "claimed", "done"], events
    if edit == "delete and create again":
        assert doc["payload"] == {"v": 2}
