"""`gridxfer nightly` end to end: a real source filling up over time, the real
service and its real workers, a real SMTP server (aiosmtpd) and a real HTTP
receiver for the webhook, on pouchdb-server and on Apache CouchDB 3."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest

from GRID_XFER.nightly.nights import night_date
from GRID_XFER.nightly.workforce import _local_pids
from GRID_XFER.nightly_config import StreamConfig
from tests.conftest import Database, cli_env, free_port, gridxfer, wait_for
from tests.nightgen import flip_byte, tree, write_exposure, write_manifest
from tests.receivers import webhook_receiver

pytestmark = pytest.mark.slow  # starts servers and runs the CLI

# A rollover half a day away from now: the night does not change name mid-test.
ROLLOVER = (dt.datetime.now(dt.UTC).hour + 12) % 24


def _stream(tmp: Path, **kw: Any) -> dict[str, Any]:
    return {
        "name": "cam",
        "source": (tmp / "src").as_uri(),
        "destination": (tmp / "dst").as_uri(),
        "timezone": "UTC",
        "rollover_hour": ROLLOVER,
        "catch_up_nights": 1,
        "ready": {"quiet_seconds": 2},
        "min_workers": 1,
        "max_workers": 2,
        "tokens_per_worker": 3,
        "workdir": str(tmp / "jobs"),
        **kw,
    }


def _tonight(stream: dict[str, Any], days_back: int = 0) -> str:
    d = night_date(StreamConfig.model_validate(stream), time.time())
    return (d - dt.timedelta(days=days_back)).strftime("%Y%m%d")


def _configure(
    db: Database,
    tmp: Path,
    stream: dict[str, Any],
    *,
    worker: dict[str, Any] | None = None,
    **nightly: Any,
) -> Path:
    return db.write_config(
        nightly={
            "streams": [stream],
            "interval": 1,
            "leader_lease": 8,
            "kill_file": str(tmp / "STOP"),
            "log_file": str(tmp / "log" / "nightly.log"),
            **nightly,
        },
        worker={
            "lease_seconds": 30,
            "idle_sleep": 1,
            "max_attempts": 1,
            "backoff_base": 0,
            **(worker or {}),
        },
        transfer={"mismatch_retries": 0},
    )


def _service(config: Path, log: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "GRID_XFER.cli", "nightly", *args],
        env=cli_env(config),
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),  # noqa: SIM115 - the service's lifetime
        text=True,
    )


def _tokens(db: Database, night: str) -> dict[str, dict[str, Any]]:
    rows = db.couch.all_docs(include_docs=True, startkey=f"{night}_", endkey=f"{night}_\ufff0")
    return {r["id"]: r["doc"] for r in rows if r["doc"].get("type") == "token"}


def _no_workers_left() -> bool:
    return not _local_pids("nightly-cam-")


def _stop(proc: subprocess.Popen[str], tmp: Path, timeout: float = 90) -> int:
    (tmp / "STOP").write_text("")
    return proc.wait(timeout=timeout)


@pytest.fixture
def cleanup_workers() -> Iterator[None]:
    yield
    for pid in _local_pids("nightly-cam-"):  # a failed test leaves none behind
        os.kill(pid, signal.SIGKILL)


# -- a season's night ---------------------------------------------------------------


class Writer(threading.Thread):
    """Writes an exposure a second; some get a late file after their token exists."""

    def __init__(self, root: Path, db: Database, night: str, count: int, late: set[str]) -> None:
        super().__init__(daemon=True)
        self.root, self.db, self.night, self.count, self.late = root, db, night, count, late
        self.written: dict[str, float] = {}  # exposure -> its last write before the token
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i in range(self.count):
                exp = f"e{i:03d}"
                files = {f"{exp}-{k}.fits": os.urandom(20_000) for k in range(2)}
                write_exposure(self.root / self.night / exp, files)
                self.written[exp] = time.time()
                time.sleep(1)
            for exp in sorted(self.late):
                token_id = f"{self.night}_{exp}"
                wait_for(lambda t=token_id: t in _tokens(self.db, self.night), 60)
                d = self.root / self.night / exp
                files = {p.name: p.read_bytes() for p in d.glob("*.fits")}
                files[f"{exp}-late.fits"] = os.urandom(5_000)
                (d / f"{exp}-late.fits").write_bytes(files[f"{exp}-late.fits"])
                write_manifest(d, files)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def test_a_night_filling_up_ends_done_with_late_files_and_stops_clean(
    db: Database, tmp_path: Path, cleanup_workers: None
) -> None:
    stream = _stream(tmp_path)
    config = _configure(db, tmp_path, stream)
    night = _tonight(stream)
    (tmp_path / "src").mkdir()
    (tmp_path / "log").mkdir()
    service = _service(config, tmp_path / "service.err")
    writer = Writer(tmp_path / "src", db, night, count=6, late={"e001", "e004"})
    seen_created: dict[str, float] = {}
    try:
        writer.start()

        def finished() -> bool:
            toks = _tokens(db, night)
            for t in toks.values():
                seen_created.setdefault(t["exposure"], t["created"])
            late_ok = all(
                any(f["name"].endswith("late.fits") for f in toks[f"{night}_{e}"]["files"])
                for e in writer.late
                if f"{night}_{e}" in toks
            )
            return (
                len(toks) == 6
                and all(t["state"] == "done" for t in toks.values())
                and late_ok
                and not writer.is_alive()
            )

        wait_for(finished, 240, every=0.5, what="the night done with its late files")
        assert writer.error is None
        assert _stop(service, tmp_path) == 0
    finally:
        if service.poll() is None:
            service.kill()
    log = (tmp_path / "log" / "nightly.log").read_text()
    assert "started worker" in log and "acting as the leader" in log
    # Ready means quiet for 2 s after the last write: never a token before that.
    for exp, created in seen_created.items():
        assert created >= writer.written[exp] + 2 - 0.5, exp
    assert tree(tmp_path / "dst" / night) == tree(tmp_path / "src" / night)
    assert all(t["state"] == "done" for t in _tokens(db, night).values())
    assert _no_workers_left()


# -- the kill file mid-work -----------------------------------------------------------


def _old_exposures(root: Path, count: int) -> None:
    """Exposures written long ago: ready at once."""
    for i in range(count):
        d = root / f"e{i:03d}"
        write_exposure(d, {f"e{i:03d}.fits": os.urandom(1000)})
        for p in [d, *d.iterdir()]:
            os.utime(p, (time.time() - 600, time.time() - 600))


def test_the_kill_file_hands_every_token_back_and_stops_every_worker(
    db: Database, tmp_path: Path, cleanup_workers: None
) -> None:
    stream = _stream(tmp_path)
    config = _configure(db, tmp_path, stream, worker={"task": "command", "command": "sleep 30"})
    night = _tonight(stream)
    _old_exposures(tmp_path / "src" / night, 8)
    service = _service(config, tmp_path / "service.err")
    try:
        wait_for(
            lambda: sum(t["state"] == "locked" for t in _tokens(db, night).values()) >= 2,
            90,
            what="two workers busy",
        )
        assert _stop(service, tmp_path) == 0
    finally:
        if service.poll() is None:
            service.kill()
    toks = _tokens(db, night)
    assert len(toks) == 8
    assert not [t["_id"] for t in toks.values() if t["state"] == "locked"]
    assert _no_workers_left()
    leader = db.couch.get_or_none("gridxfer-leader")
    assert leader is None or leader["expires"] <= time.time()  # released, not left to expire


# -- alerts and the morning report ----------------------------------------------------


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]


@pytest.fixture
def smtp() -> Iterator[tuple[int, Mailbox]]:
    from aiosmtpd.controller import Controller

    box = Mailbox()
    port = free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield port, box
    finally:
        ctl.stop()


@pytest.fixture
def hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with webhook_receiver() as received:
        yield received


def _count(subjects: list[str], needle: str) -> int:
    return sum(needle in s for s in subjects)


def test_one_alert_per_error_code_per_night_and_one_morning_report(
    db: Database,
    tmp_path: Path,
    smtp: tuple[int, Mailbox],
    hook: tuple[str, list[dict[str, Any]]],
    cleanup_workers: None,
) -> None:
    port, box = smtp
    url, posts = hook
    stream = _stream(tmp_path, deadline_hours=24, catch_up_nights=2)
    url_file = tmp_path / "webhook.url"
    url_file.write_text(url + "\n")
    url_file.chmod(0o600)
    alerts = {
        "smtp": {"host": "127.0.0.1", "port": port, "starttls": False, "to": ["ops@example.org"]},
        "webhook": {"url_file": str(url_file)},
    }
    config = _configure(db, tmp_path, stream, alerts=alerts)
    night = _tonight(stream, days_back=1)  # yesterday: over (its rollover is ~12 h ago)
    root = tmp_path / "src" / night
    _old_exposures(root, 7)
    for i in (1, 2, 3):  # changed after their manifest: 30
        flip_byte(root / f"e{i:03d}" / f"e{i:03d}.fits")
        os.utime(root / f"e{i:03d}" / f"e{i:03d}.fits", (time.time() - 600, time.time() - 600))
    for i in (4, 5):  # the manifest names a file that is not there: 32
        d = root / f"e{i:03d}"
        write_manifest(
            d, {f"e{i:03d}.fits": (d / f"e{i:03d}.fits").read_bytes(), "gone.fits": b"x"}
        )
        os.utime(d, (time.time() - 600, time.time() - 600))
        os.utime(d / f"checksum-e{i:03d}.sha256sum", (time.time() - 600, time.time() - 600))
    service = _service(config, tmp_path / "service.err")
    try:
        wait_for(lambda: _count(box.subjects(), "morning report") >= 1, 180, what="the report")
        time.sleep(5)  # more cycles: nothing more may be sent for the same codes
        assert _stop(service, tmp_path) == 0
    finally:
        if service.poll() is None:
            service.kill()
    subjects = box.subjects()
    assert _count(subjects, "error 30") == 1, subjects
    assert _count(subjects, "error 32") == 1, subjects
    assert _count(subjects, "morning report") == 1, subjects
    texts = [p["text"] for p in posts]
    assert _count(texts, "error 30") == 1 and _count(texts, "error 32") == 1, texts
    assert _count(texts, "morning report") == 1, texts
    mail = next(m for m in box.messages if "error 30" in str(m["Subject"]))
    body = mail.get_payload(decode=True).decode()
    # The count when the code first appeared (the report has the night's final one).
    assert "exposure(s) in error 30 (CHECKSUM_MISMATCH)" in body
    assert any(f"{night}_e00{i}" in body for i in (1, 2, 3))
    report = db.couch.get(f"gridxfer-report-{night}")
    assert report["exposures"] == {"total": 7, "done": 2, "error": 5, "remaining": 0}
    assert {e["code"]: e["count"] for e in report["errors"]} == {30: 3, 32: 2}
    assert report["sent"] is not None
    assert "secret-key" not in (tmp_path / "log" / "nightly.log").read_text()


# -- one active service ---------------------------------------------------------------


def test_a_standby_takes_over_within_a_lease_when_the_leader_is_killed(
    db: Database, tmp_path: Path, cleanup_workers: None
) -> None:
    _takeover(db, tmp_path)


def test_on_a_cluster_a_standby_takes_over_within_a_lease(
    couchdb_cluster: Any, tmp_path: Path, cleanup_workers: None
) -> None:
    from tests.conftest import make_database

    _takeover(make_database(couchdb_cluster.urls, tmp_path, couchdb_cluster), tmp_path)


def _takeover(db: Database, tmp_path: Path) -> None:
    """Two services on one database: one leads; SIGKILLed, the other leads within
    lease + margin + its polling interval and finishes the night."""
    stream = _stream(tmp_path)
    config = _configure(db, tmp_path, stream)
    night = _tonight(stream)
    _old_exposures(tmp_path / "src" / night, 4)
    first = _service(config, tmp_path / "first.err")
    second: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: len(_tokens(db, night)) == 4, 60, what="tokens from the first")
        holder = db.couch.get("gridxfer-leader")["holder"]
        assert f":{first.pid}:" in holder
        second = _service(config, tmp_path / "second.err")
        wait_for(lambda: "standing by" in (tmp_path / "second.err").read_text(), 30, what="standby")
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        wait_for(
            lambda: f":{second.pid}:" in db.couch.get("gridxfer-leader")["holder"],
            8 + 2 + 10,
            what="takeover within a lease",
        )
        assert time.monotonic() - killed <= 8 + 2 + 10
        wait_for(
            lambda: all(t["state"] == "done" for t in _tokens(db, night).values()),
            120,
            what="the night done by the new leader's workers",
        )
        assert _stop(second, tmp_path) == 0
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
    assert _no_workers_left()


# -- a dry run --------------------------------------------------------------------------


def _snapshot(db: Database, tmp: Path) -> tuple[Any, Any]:
    docs = {r["id"]: r["doc"] for r in db.couch.all_docs(include_docs=True)}
    dest = tree(tmp / "dst") if (tmp / "dst").exists() else {}
    return docs, dest


def test_a_dry_run_changes_nothing(db: Database, tmp_path: Path) -> None:
    stream = _stream(tmp_path)
    config = _configure(db, tmp_path, stream)
    night = _tonight(stream)
    _old_exposures(tmp_path / "src" / night, 3)
    gridxfer(
        *("tokens", "create", night, "--source", (tmp_path / "src").as_uri()),
        *("--dest", (tmp_path / "dst").as_uri()),
        config=config,
        check=True,
    )
    d = tmp_path / "src" / night / "e100"
    write_exposure(d, {"e100.fits": b"new"})
    for p in [d, *d.iterdir()]:
        os.utime(p, (time.time() - 600, time.time() - 600))
    before = _snapshot(db, tmp_path)
    out = gridxfer("nightly", "--once", "--dry-run", "--json", config=config, check=True)
    after = _snapshot(db, tmp_path)
    assert before == after
    assert not (tmp_path / "jobs").exists()
    cycle, _end = json.JSONDecoder().raw_decode(out.stdout)
    nights = cycle["streams"]["cam"]["nights"]
    assert "e100" in nights[night]["ready"]
    assert cycle["streams"]["cam"]["staffing"]["wanted"][night] >= 1
    assert "would create token" in out.stderr and f"{night}_e100" in out.stderr
    assert _no_workers_left()


# -- Slurm ------------------------------------------------------------------------------


def test_on_slurm_a_restarted_service_adopts_the_jobs_and_never_exceeds_max_workers(
    couchdb_server: Any, tmp_path: Path, slurm: Any
) -> None:
    """A real single-node Slurm (tests/plugins/slurm.py): the service submits arrays,
    counts them by name in squeue, and a second service after a SIGKILL submits none
    beyond what is running; the kill file scancels them warmly."""
    from tests.conftest import make_database

    db = make_database(couchdb_server.url, tmp_path)
    stream = _stream(
        tmp_path, backend="slurm", max_workers=2, tokens_per_worker=2, time_limit="10m"
    )
    config = _configure(db, tmp_path, stream, worker={"task": "command", "command": "sleep 4"})
    night = _tonight(stream)
    _old_exposures(tmp_path / "src" / night, 8)
    env = cli_env(config, SLURM_CONF=slurm.env["SLURM_CONF"])
    name = f"gridxfer-cam-{night}"

    def active() -> int:
        out = slurm.run("squeue", "-h", "-r", "-n", name, "-o", "%i").stdout
        for job in out.split():
            slurm.track(job)
        return len(out.split())

    def service(log: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "GRID_XFER.cli", "nightly"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / log, "w"),  # noqa: SIM115 - the service's lifetime
        )

    most = 0
    first = service("first.err")
    second: subprocess.Popen[str] | None = None
    try:
        most = max(most, wait_for(active, 60, every=0.3, what="Slurm jobs submitted"))
        first.send_signal(signal.SIGKILL)
        first.wait()
        db.couch.delete("gridxfer-leader", db.couch.get("gridxfer-leader")["_rev"])  # no wait
        second = service("second.err")
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            most = max(most, active())
            if all(t["state"] == "done" for t in _tokens(db, night).values()):
                break
            time.sleep(0.3)
        assert all(t["state"] == "done" for t in _tokens(db, night).values())
        assert _stop(second, tmp_path) == 0
        wait_for(lambda: active() == 0, 60, what="no Slurm job left")
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
    assert 1 <= most <= 2
    assert "submitted" in (tmp_path / "log" / "nightly.log").read_text()


# -- cron: --once ---------------------------------------------------------------------


def test_once_makes_tokens_starts_workers_that_outlive_it_and_a_second_run_adds_none(
    db: Database, tmp_path: Path, cleanup_workers: None
) -> None:
    stream = _stream(tmp_path, max_workers=2, tokens_per_worker=1)
    config = _configure(db, tmp_path, stream, worker={"task": "command", "command": "sleep 3"})
    night = _tonight(stream)
    _old_exposures(tmp_path / "src" / night, 4)
    gridxfer("nightly", "--once", config=config, check=True, timeout=120)
    assert len(_tokens(db, night)) == 4
    running = _local_pids(f"nightly-cam-{night}-")
    assert len(running) == 2  # they outlive the cron run
    gridxfer("nightly", "--once", config=config, check=True, timeout=120)
    assert len(_local_pids(f"nightly-cam-{night}-")) <= 2  # counted, not started again
    wait_for(
        lambda: all(t["state"] == "done" for t in _tokens(db, night).values()),
        90,
        what="the night done by the cron run's workers",
    )
    wait_for(_no_workers_left, 60, what="idle workers leaving")
    leader = db.couch.get_or_none("gridxfer-leader")
    assert leader is None or leader.get("released")


def test_a_database_that_does_not_answer_is_alerted_and_a_cron_run_exits_4(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there
    with webhook_receiver() as (url, posts):
        url_file = tmp_path / "hook.url"
        url_file.write_text(url)
        url_file.chmod(0o600)
        config = tmp_path / "gridxfer.yaml"
        config.write_text(
            __import__("yaml").safe_dump(
                {
                    "couchdb": {"url": f"http://127.0.0.1:{port}", "retries": 0},
                    "nightly": {
                        "streams": [_stream(tmp_path)],
                        "alerts": {"webhook": {"url_file": str(url_file)}},
                    },
                }
            )
        )
        out = gridxfer("nightly", "--once", config=config, timeout=120)
        texts = [p["text"] for p in posts]
    assert out.returncode == 4, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("gridxfer: error: the database")
    assert len(texts) == 1 and "database unreachable" in texts[0]
