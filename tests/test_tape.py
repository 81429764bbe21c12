"""Tape: state-all, staging (gfal2 and an LTA-style stager), archive confirmation.

Everything runs against the tape testbed (``scripts/tape``: XRootD + FRM in front
of an emulated MSS, recall latency ~1.5 s) and drives the real CLI in
subprocesses. The LTA stager is remote in production (webportal.astron.nl);
here tests/stager_service.py stands in for it: the same XML-RPC API and basic
authentication, staging through gfal2 from the same tape testbed.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from GRID_XFER.errors import Code
from tests.conftest import Database, cli_env, gridxfer
from tests.nightgen import make_night, tree
from tests.plugins.tape import STAGER_PASSWORD, STAGER_USER, TapeServer
from tests.plugins.xrootd import XRootDServer

NIGHT = "20261128"


def unique(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:40] + f"-{time.monotonic_ns()}"


def tape_night(
    tape: TapeServer,
    tmp: Path,
    base: str,
    *,
    exposures: int = 2,
    files: int = 2,
    size: int = 64 * 1024,
) -> dict[str, Any]:
    """A night on disk and tape at <base>/<NIGHT>/ (so the scan lists it)."""
    local = tmp / "night-src"
    info = make_night(local, NIGHT, exposures=exposures, files_per_exposure=files, size=size)
    for path in sorted((local / NIGHT).rglob("*")):
        rel = Path(base) / path.relative_to(local)
        if path.is_dir():
            tape.mkdir(rel)
        else:
            tape.put(rel, path.read_bytes(), online=True)
    info["local"] = local
    return info


def config(db: Database, **staging: Any) -> Path:
    settings = {"poll_interval": 0.5, "timeout_seconds": 120, **staging}
    return db.write_config(staging=settings, worker={"idle_sleep": 0.5, "lease_seconds": 60})


def state_all(
    cfg: Path, target: str, env: dict[str, str] | None = None, expect: int = 0
) -> dict[str, Any]:
    proc = gridxfer("state-all", target, "--json", config=cfg, env=env)
    assert proc.returncode == expect, proc.stderr
    return json.loads(proc.stdout)


def work(
    cfg: Path, env: dict[str, str] | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return gridxfer(
        "worker", "--night", NIGHT, "--idle-exit", config=cfg, env=env, check=check, timeout=timeout
    )


def docs(db: Database) -> dict[str, dict[str, Any]]:
    return {d["exposure"]: d for d in db.pool().select(NIGHT)}


def events(doc: dict[str, Any]) -> list[str]:
    return [h["event"] for h in doc["history"]]


def states(doc: dict[str, Any]) -> list[str]:
    """The states a token went through, repeats collapsed."""
    out: list[str] = []
    for h in doc["history"]:
        if not out or out[-1] != h["state"]:
            out.append(h["state"])
    return out


def stager_env(cfg: Path, home: Path, password: str = STAGER_PASSWORD) -> dict[str, str]:
    """Credentials the LOFAR way: ~/.stagingrc with user= and password= lines."""
    home.mkdir(exist_ok=True)
    (home / ".stagingrc").write_text(f"user={STAGER_USER}\npassword={password}\n")
    return cli_env(cfg, HOME=str(home))


# ----------------------------------------------------------------------------- staging


@pytest.mark.slow
def test_night_on_tape_only_is_staged_with_gfal2_then_copied_and_pins_released(
    db: Database, tape: TapeServer, tmp_path: Path
) -> None:
    base = unique("gfal2")
    info = tape_night(tape, tmp_path, base)
    dst = tmp_path / "dst"
    cfg = config(db, method="gfal2")
    gridxfer(
        "tokens",
        "create",
        NIGHT,
        "--source",
        tape.url_for(base),
        "--dest",
        f"file://{dst}",
        config=cfg,
        check=True,
    )
    tape.evict(base)  # the disk buffer purged the night: on tape only

    before = state_all(cfg, NIGHT)
    assert before["total"] == 2 * 3 and before["counts"]["NEARLINE"] == 6, before
    assert (before["percent_online"], before["percent_on_tape"]) == (0.0, 100.0)

    work(cfg)

    assert tree(dst / NIGHT) == tree(info["local"] / NIGHT)
    for _exp, doc in docs(db).items():
        assert doc["state"] == "done", doc.get("error")
        assert states(doc) == ["todo", "locked", "staging", "todo", "locked", "done"], doc[
            "history"
        ]
        assert doc["stage_request"]["method"] == "gfal2" and doc["stage_request"]["online"] > 0
        assert doc["attempts"] == 1  # waiting for tape is not a failed attempt
    # The pins were released: the buffer drops the recalled copies again.
    deadline = time.monotonic() + 20
    while (after := state_all(cfg, NIGHT))["counts"]["NEARLINE"] != 6:
        assert time.monotonic() < deadline, f"{after}\n{tape.logs()}"
        time.sleep(0.3)


@pytest.mark.slow
def test_stage_command_and_worker_with_the_lta_stager(
    db: Database, tape: TapeServer, lta_stager: Any, tmp_path: Path
) -> None:
    base = unique("stager")
    data = {f"L{i}_SB{i:03d}.tar": bytes([i]) * (20_000 + i) for i in range(12)}
    for name, content in data.items():
        tape.put(f"{base}/{name}", content, online=True)
    surls = tmp_path / "srm.txt"
    surls.write_text("".join(tape.url_for(f"{base}/{n}") + "\n" for n in data))
    dst = tmp_path / "dst"
    cfg = config(db, method="stager", stager_url=lta_stager.url)
    env = stager_env(cfg, tmp_path / "home")
    gridxfer(
        "tokens",
        "create",
        NIGHT,
        "--surls",
        str(surls),
        "--group",
        "5",
        "--dest",
        f"file://{dst}",
        config=cfg,
        env=env,
        check=True,
    )
    tape.evict(base)
    assert state_all(cfg, str(surls), env)["counts"]["NEARLINE"] == 12

    out = json.loads(gridxfer("stage", NIGHT, "--json", config=cfg, env=env, check=True).stdout)
    assert out["files"] == 12 and len(out["tokens"]) == 3, out
    rid = out["request"]["id"]
    assert out["request"]["method"] == "stager" and lta_stager.calls.count("add_getid") == 1
    status = json.loads(
        gridxfer("stage", "--status", rid, "--json", config=cfg, env=env, check=True).stdout
    )
    assert len(status["tokens"]) == 3
    assert status["stager_status"] in ("scheduled", "in progress", "success")

    work(cfg, env)

    for doc in docs(db).values():
        assert doc["state"] == "done", doc.get("error")
        assert doc["stage_request"]["id"] == rid
        assert states(doc) == ["todo", "staging", "todo", "locked", "done"], doc["history"]
    assert {p.name: p.read_bytes() for p in (dst / NIGHT).rglob("*.tar")} == data
    assert lta_stager.rejected == 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gfal2", "stager"])
def test_a_file_missing_on_tape_ends_in_22_naming_it(
    method: str, db: Database, tape: TapeServer, lta_stager: Any, tmp_path: Path
) -> None:
    base = unique(f"missing-{method}")
    tape_night(tape, tmp_path, base, exposures=1, files=2)
    cfg = config(db, method=method, stager_url=lta_stager.url)
    env = stager_env(cfg, tmp_path / "home")
    gridxfer(
        "tokens",
        "create",
        NIGHT,
        "--source",
        tape.url_for(base),
        "--dest",
        f"file://{tmp_path / 'dst'}",
        config=cfg,
        env=env,
        check=True,
    )
    tape.evict(base)
    (doc,) = docs(db).values()
    victim = doc["files"][0]["name"]
    (tape.mss / base / NIGHT / doc["exposure"] / victim).unlink()  # the tape copy is gone

    report = state_all(cfg, NIGHT, env, expect=8)
    assert report["counts"]["LOST"] == 1 and report["counts"]["NEARLINE"] == 2

    work(cfg, env)

    (doc,) = docs(db).values()
    assert doc["state"] == "error" and doc["output"] == Code.NOT_STAGED, doc.get("error")
    assert doc["error"]["file"] == victim, doc["error"]
    assert victim in doc["error"]["message"]


@pytest.mark.slow
def test_a_recall_slower_than_the_staging_timeout_ends_in_23(
    db: Database, tape: TapeServer, tmp_path: Path
) -> None:
    base = unique("slow")
    tape_night(tape, tmp_path, base, exposures=1, files=1)
    cfg = config(db, method="gfal2", timeout_seconds=2)
    gridxfer(
        "tokens",
        "create",
        NIGHT,
        "--source",
        tape.url_for(base),
        "--dest",
        f"file://{tmp_path / 'dst'}",
        config=cfg,
        check=True,
    )
    tape.evict(base)
    tape.set_delay(8)
    try:
        work(cfg)
    finally:
        tape.set_delay(1.5)
    (doc,) = docs(db).values()
    assert doc["state"] == "error" and doc["output"] == Code.STAGING_TIMEOUT, doc.get("error")
    assert "not online after" in doc["error"]["message"]
    assert "staging" in states(doc)
    # `tokens reset --code 23` is the documented way out; it clears the request.
    gridxfer("tokens", "reset", NIGHT, "--code", "23", config=cfg, check=True)
    (doc,) = docs(db).values()
    assert doc["state"] == "todo" and doc["stage_request"] is None


# ----------------------------------------------------------------------------- archive


@pytest.mark.slow
def test_tape_destination_tokens_are_done_only_after_migration(
    db: Database, tape: TapeServer, tmp_path: Path
) -> None:
    info = make_night(tmp_path / "src", NIGHT, exposures=2, files_per_exposure=2, size=50_000)
    base = unique("archive")
    tape.mkdir(base)
    cfg = config(db, tape_destination=True, archive_timeout=120)
    gridxfer(
        "tokens",
        "create",
        NIGHT,
        "--source",
        f"file://{tmp_path / 'src'}",
        "--dest",
        tape.url_for(base),
        config=cfg,
        check=True,
    )

    work(cfg)

    for exp, doc in docs(db).items():
        assert doc["state"] == "done", doc.get("error")
        assert states(doc) == ["todo", "locked", "archiving", "done"], doc["history"]
        assert doc["archived"] >= doc["archiving_since"]
        for f in doc["files"]:  # done only once migrated
            assert tape.on_tape(f"{base}/{NIGHT}/{exp}/{f['name']}"), f["name"]
    source = tree(tmp_path / "src" / NIGHT)
    arrived = tree(tape.disk / base / NIGHT)  # FRM may keep marker files beside them
    assert {name: arrived.get(name) for name in source} == source
    assert not [n for n in arrived if ".gridxfer-part-" in n]
    listing = tmp_path / "dst-urls.txt"
    names = [
        f"{base}/{NIGHT}/{exp}/{name}"
        for exp, e in info["exposures"].items()
        for name in e["files"]
    ]
    listing.write_text("\n".join(tape.url_for(n) for n in names) + "\n")
    report = state_all(cfg, str(listing))
    assert report["counts"]["ONLINE_AND_NEARLINE"] == len(names)
    assert report["percent_on_tape"] == 100.0


@pytest.mark.slow
def test_a_destination_that_never_migrates_ends_in_51(
    db: Database, xrootd: XRootDServer, tmp_path: Path
) -> None:
    make_night(tmp_path / "src", NIGHT, exposures=1, files_per_exposure=1, size=1000)
    base = unique("never")
    cfg = config(db, tape_destination=True, archive_timeout=1)
    gridxfer(
        "tokens",
        "create",
        NIGHT,
        "--source",
        f"file://{tmp_path / 'src'}",
        "--dest",
        xrootd.url_for(base),
        config=cfg,
        check=True,
    )
    work(cfg)
    (doc,) = docs(db).values()
    assert doc["state"] == "error" and doc["output"] == Code.ARCHIVE_TIMEOUT, doc.get("error")
    assert states(doc) == ["todo", "locked", "archiving", "error"]


# ----------------------------------------------------------------------------- credentials


@pytest.mark.slow
def test_stager_credentials_never_appear_in_logs_tokens_or_errors(
    db: Database, tape: TapeServer, lta_stager: Any, tmp_path: Path
) -> None:
    base = unique("creds")
    tape.put(f"{base}/f.bin", b"x" * 5000, online=True)
    surls = tmp_path / "srm.txt"
    surls.write_text(tape.url_for(f"{base}/f.bin") + "\n")
    cfg = config(db, method="stager", stager_url=lta_stager.url, stager_retries=0)
    wrong = "Wr0ng-pa55word-xyz"
    env = stager_env(cfg, tmp_path / "home", password=wrong)
    gridxfer(
        "tokens",
        "create",
        NIGHT,
        "--surls",
        str(surls),
        "--dest",
        f"file://{tmp_path / 'dst'}",
        config=cfg,
        env=env,
        check=True,
    )
    tape.evict(base)

    outputs = []
    for args in (
        ("stage", NIGHT, "--json"),
        ("--debug", "stage", str(surls)),
        ("stage", "--status", "31415", "--method", "stager"),
    ):
        proc = gridxfer(*args, config=cfg, env=env)
        assert proc.returncode != 0
        outputs.append(proc.stdout + proc.stderr)
    assert "rejected the credentials" in outputs[1]
    worker = gridxfer("--debug", "worker", "--night", NIGHT, "--idle-exit", config=cfg, env=env)
    outputs.append(worker.stdout + worker.stderr)
    assert lta_stager.rejected >= 3

    (doc,) = docs(db).values()
    assert doc["state"] == "error" and doc["output"] == Code.NOT_STAGED
    assert "rejected the credentials" in doc["error"]["message"]
    logs = [db.couch.get_attachment(doc["_id"], n).decode() for n in doc.get("_attachments", {})]
    everything = "\n".join([json.dumps(doc), *logs, *outputs])
    basic = base64.b64encode(f"{STAGER_USER}:{wrong}".encode()).decode()
    for secret in (wrong, STAGER_PASSWORD, basic):
        assert secret not in everything

    # With the right password the same token goes through (after a reset).
    good = stager_env(cfg, tmp_path / "home")
    gridxfer("tokens", "reset", NIGHT, config=cfg, env=good, check=True)
    proc = gridxfer(
        "--debug", "worker", "--night", NIGHT, "--idle-exit", config=cfg, env=good, check=True
    )
    (doc,) = docs(db).values()
    assert doc["state"] == "done", doc.get("error")
    assert STAGER_PASSWORD not in proc.stdout + proc.stderr + json.dumps(doc)


def test_credentials_come_from_awe_environment_cfg_or_the_environment(tmp_path: Path) -> None:
    from GRID_XFER.errors import ConfigError
    from GRID_XFER.lta import load_credentials

    home = tmp_path / "home"
    (home / ".awe").mkdir(parents=True)
    with pytest.raises(ConfigError) as exc:
        load_credentials({}, home)
    assert ".stagingrc" in str(exc.value)
    (home / ".awe" / "Environment.cfg").write_text(
        "database_user : alice\ndatabase_password : pw1\n"
    )
    c = load_credentials({}, home)
    assert (c.user, c.password) == ("alice", "pw1") and "pw1" not in repr(c)
    (home / ".stagingrc").write_text("user=bob\npassword=pw2\n")
    assert load_credentials({}, home).user == "bob"
    env = {"GRIDXFER_STAGER_USER": "carol", "GRIDXFER_STAGER_PASSWORD": "pw3"}
    assert load_credentials(env, home).password == "pw3"
    shutil.rmtree(home)


@pytest.mark.slow
def test_state_all_in_processes_agrees_with_threads(tape: TapeServer) -> None:
    """The path `state-all` takes for a slow storage: one XRootD connection per process."""
    from GRID_XFER.staging import state_all, state_all_processes
    from GRID_XFER.storage import Storage

    base = unique("procs")
    for i in range(6):
        tape.put(f"{base}/f{i}", b"p" * (100 + i), online=i % 2 == 0)
    urls = [tape.url_for(f"{base}/f{i}") for i in range(6)] + [tape.url_for(f"{base}/missing")]
    threads = [(f.url, f.state) for f in state_all(Storage(), urls, threads=4)]
    procs = [(f.url, f.state) for f in state_all_processes(urls, processes=2, threads=2)]
    assert procs == threads
    assert [s for _, s in procs] == ["ONLINE_AND_NEARLINE", "NEARLINE"] * 3 + ["LOST"]


@pytest.mark.slow
def test_stage_a_file_of_urls_by_hand_and_poll(
    db: Database, tape: TapeServer, tmp_path: Path
) -> None:
    base = unique("byhand")
    for i in range(3):
        tape.put(f"{base}/f{i}", b"h" * (500 + i))  # tape only
    surls = tmp_path / "srm.txt"
    surls.write_text("".join(tape.url_for(f"{base}/f{i}") + "\n" for i in range(3)))
    cfg = config(db)
    assert state_all(cfg, str(surls))["counts"]["NEARLINE"] == 3
    out = json.loads(
        gridxfer("stage", str(surls), "--method", "gfal2", "--json", config=cfg, check=True).stdout
    )
    assert out["files"] == 3 and out["request"]["method"] == "gfal2" and out["refused"] == {}
    deadline = time.monotonic() + 30
    while (report := state_all(cfg, str(surls)))["percent_online"] != 100.0:
        assert time.monotonic() < deadline, report
        time.sleep(0.3)
    assert report["counts"]["ONLINE_AND_NEARLINE"] == 3
    # Nothing is waiting in the pool: a poll by hand moves nothing.
    polled = json.loads(gridxfer("stage", "--poll", "--json", config=cfg, check=True).stdout)
    assert polled["staging"]["staged"] == 0 and polled["archive"]["done"] == 0


@pytest.mark.slow
def test_stager_client_speaks_the_ltastager_api(tape: TapeServer, lta_stager: Any) -> None:
    from GRID_XFER.errors import StagerError
    from GRID_XFER.lta import Credentials, LtaClient

    base = unique("api")
    tape.put(f"{base}/a", b"a" * 700)
    url = tape.url_for(f"{base}/a")
    client = LtaClient(
        lta_stager.url, credentials=Credentials(STAGER_USER, STAGER_PASSWORD), timeout=10, retries=0
    )
    rid = client.stage([url])
    assert rid.isdigit() and client.status(rid) in ("scheduled", "in progress", "success")
    deadline = time.monotonic() + 30
    while client.status(rid) != "success":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert client.staged_urls(rid) == [url]
    assert client.progress()[rid]["Files done"] == 1
    client.reschedule(rid)
    client.abort(rid)
    assert client.status(rid) == "aborted"
    with pytest.raises(StagerError) as exc:
        client.status("999")  # unknown request: the service's fault, scrubbed
    assert STAGER_PASSWORD not in str(exc.value) and "refused getstatus" in str(exc.value)
