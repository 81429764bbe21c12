"""The CLI contract: exit codes, one-line errors and ``--json`` shapes.

Every test runs the real ``gridxfer`` in a subprocess against a real
pouchdb-server (the session server from conftest, or one the test starts
through ``gridxfer server start``). Exit codes are those of
GRID_XFER/cli/exits.py and docs/cli.md:
3 configuration, 4 database unavailable or refused, 5 not found,
6 invalid input or token, 7 embedded server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from GRID_XFER.config import ServerConfig
from GRID_XFER.server import EmbeddedServer
from GRID_XFER.token import STATES
from tests.conftest import Database, cli_env, free_port, gridxfer

pytestmark = pytest.mark.slow  # starts servers or runs the CLI

SECRET = "Pa55-w0rd-never-shown"


# -- helpers -------------------------------------------------------------------
def error_line(proc: subprocess.CompletedProcess[str], *, only_line: bool = True) -> str:
    """The single ``gridxfer: error:`` line; no traceback, nothing else when only_line."""
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in lines if ln.startswith("gridxfer: error: ")]
    assert len(errors) == 1, proc.stderr
    if only_line:
        assert lines == errors, proc.stderr
    else:  # log lines (retry warnings) may come first; the error is the last line
        assert lines[-1] == errors[0], proc.stderr
    return errors[0]


def user_docs(db: Database) -> list[str]:
    return [r["id"] for r in db.couch.all_docs() if not r["id"].startswith("_design/")]


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pids_using(marker: str) -> list[int]:
    """PIDs whose command line mentions ``marker`` (a test's own tmp path)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker.encode() in (p / "cmdline").read_bytes() and pid_alive(int(p.name)):
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


# -- gridxfer server start|status|stop -----------------------------------------
class ServerSetup:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.data_dir = tmp / "srv" / "data"
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "server.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "server": {"port": self.port, "data_dir": str(self.data_dir)},
                    "couchdb": {"url": self.url, "retries": 1, "backoff": 0.1},
                }
            )
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return gridxfer("server", *args, config=self.config)

    def status(self) -> tuple[int, dict[str, Any]]:
        proc = self.run("status", "--json")
        return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[ServerSetup]:
    setup = ServerSetup(tmp_path)
    try:
        yield setup
    finally:
        EmbeddedServer(ServerConfig(port=setup.port, data_dir=setup.data_dir)).stop()
        # Whatever a failed test left behind: only processes started on this
        # test's own tmp directory, ended by PID.
        for pid in pids_using(str(setup.tmp / "srv")):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_server_start_status_stop(srv: ServerSetup, couchdb_server: EmbeddedServer) -> None:
    rc, st = srv.status()
    assert rc == 7 and st["running"] is False and st["pid"] is None
    assert st["port"] == srv.port

    proc = srv.run("start", "--json")
    assert proc.returncode == 0, proc.stderr
    started = json.loads(proc.stdout)
    assert started["running"] is True and started["started_now"] is True
    pid = started["pid"]
    assert isinstance(pid, int) and pid_alive(pid)
    assert started["url"] == srv.url and answers(srv.url)

    rc, st = srv.status()
    assert rc == 0 and st["running"] is True and st["pid"] == pid
    text = srv.run("status")
    assert text.returncode == 0 and f"pid {pid}" in text.stdout

    again = srv.run("start", "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["started_now"] is False
    assert json.loads(again.stdout)["pid"] == pid

    stop = srv.run("stop", "--json")
    assert stop.returncode == 0 and json.loads(stop.stdout) == {"stopped": True}
    assert not pid_alive(pid)
    assert not answers(srv.url)
    # Only our PID was stopped: the session's pouchdb-server still answers.
    assert answers(couchdb_server.url)

    rc, st = srv.status()
    assert rc == 7 and st["running"] is False
    text = srv.run("status")
    assert text.returncode == 7 and "not running" in text.stdout
    stop = srv.run("stop", "--json")
    assert stop.returncode == 0 and json.loads(stop.stdout) == {"stopped": False}


@pytest.mark.parametrize("listening", [True, False], ids=["listening", "bound-only"])
def test_server_start_refused_when_port_taken(srv: ServerSetup, listening: bool) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", srv.port))
        if listening:
            sock.listen()
        proc = srv.run("start")
        assert proc.returncode == 7
        line = error_line(proc)
        assert str(srv.port) in line
        if listening:
            assert f"port {srv.port}" in line and "in use" in line
        rc, st = srv.status()
        assert rc == 7 and st["running"] is False
    assert pids_using(str(srv.tmp / "srv")) == []


def test_concurrent_starts_agree_on_one_live_server(srv: ServerSetup) -> None:
    # Two `server start` racing on one config must agree on one live server:
    # exactly one live PID reported and recorded; the other start says
    # "already running" with that PID, or exits 7 (server.py serialises starts).
    for _ in range(3):
        cmd = [sys.executable, "-m", "GRID_XFER.cli", "server", "start", "--json"]
        procs = [
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=cli_env(srv.config),
            )
            for _ in range(2)
        ]
        results = [(p, *p.communicate(timeout=120)) for p in procs]
        rc, st = srv.status()
        assert rc == 0 and st["running"] and pid_alive(st["pid"])
        for p, out, err in results:
            if p.returncode == 0:
                assert json.loads(out)["pid"] == st["pid"], (out, st)
            else:
                assert p.returncode == 7, err
        assert srv.run("stop").returncode == 0
        assert pids_using(str(srv.tmp / "srv")) == []


# -- configuration errors: exit 3 ------------------------------------------------
@pytest.mark.parametrize(
    "text, key",
    [
        ("colour: red\n", "colour: unknown key"),
        ("worker: {max_attempts: many}\n", "worker.max_attempts"),
        ("couchdb: {timeout: fast}\n", "couchdb.timeout"),
        ("server: {prot: 6000}\n", "server.prot: unknown key"),
        ("couchdb: {url: 'http://dm:pw@db.example:5984'}\n", "couchdb.url"),
    ],
    ids=[
        "unknown-key",
        "wrong-type-int",
        "wrong-type-float",
        "unknown-nested-key",
        "url-with-credentials",
    ],
)
@pytest.mark.parametrize(
    "command",
    [["status"], ["tokens", "list", "n1"], ["server", "status"]],
    ids=lambda c: "-".join(c),
)
def test_bad_config_exits_3_with_one_line_naming_the_key(
    tmp_path: Path, text: str, key: str, command: list[str]
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    proc = gridxfer(*command, config=cfg)
    assert proc.returncode == 3
    line = error_line(proc)
    assert key in line and str(cfg) in line
    assert proc.stdout == ""
    assert "pw@" not in proc.stderr


def test_missing_config_file_exits_3(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    env = cli_env(missing)
    del env["GRIDXFER_CONFIG"]
    proc = gridxfer("--config", str(missing), "status", config=missing, env=env)
    assert proc.returncode == 3
    assert "config file not found" in error_line(proc) and str(missing) in proc.stderr
    # The same through $GRIDXFER_CONFIG.
    proc = gridxfer("status", config=missing)
    assert proc.returncode == 3 and str(missing) in error_line(proc)


def test_debug_adds_the_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("colour: red\n")
    proc = gridxfer("--debug", "status", config=cfg)
    assert proc.returncode == 3
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ConfigError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("gridxfer: error: ")


# -- tokens create with invalid input: exit 6, nothing written -------------------
GOOD = {"exposure": "00001000", "files": [{"name": "a.fits", "size": 10}]}


@pytest.mark.parametrize(
    "content, expected",
    [
        ([GOOD, "bad name!"], ["entry 1", "exposure"]),
        ([GOOD, "-leading"], ["entry 1", "exposure"]),
        (
            [GOOD, {"exposure": "e2", "files": [{"name": "/etc/passwd"}]}],
            ["entry 1", "files.0.name", "relative"],
        ),
        (
            [GOOD, {"exposure": "e2", "files": [{"name": "ok"}, {"name": "x/../../y"}]}],
            ["entry 1", "files.1.name"],
        ),
        (
            [GOOD, {"exposure": "e2", "files": [{"name": "a", "checksums": {"sha256": "xyz!"}}]}],
            ["entry 1", "files.0.checksums", "sha256", "hex"],
        ),
        (
            [GOOD, {"exposure": "e2", "files": [{"name": "a", "size": -1}]}],
            ["entry 1", "files.0.size"],
        ),
        ([GOOD, {"exposure": "e2", "colour": "red"}], ["entry 1", "colour"]),
        ([GOOD, {"files": [{"name": "a"}]}], ["entry 1", "exposure"]),
        ({"00001000": {"files": []}}, ["expected a list"]),
        ("just a string", ["expected a list"]),
        ([GOOD, GOOD], ["listed twice"]),
    ],
    ids=[
        "exposure-name",
        "exposure-symbol",
        "absolute-file",
        "dotdot-file",
        "checksum-not-hex",
        "negative-size",
        "unknown-field",
        "no-exposure",
        "mapping",
        "scalar",
        "duplicate",
    ],
)
def test_create_with_invalid_exposures_exits_6_and_writes_nothing(
    db: Database, content: Any, expected: list[str]
) -> None:
    spec = db.tmp / "exposures.yaml"
    spec.write_text(yaml.safe_dump(content))
    proc = gridxfer("tokens", "create", "n1", "--from", str(spec), config=db.config_file)
    assert proc.returncode == 6, proc.stderr
    line = error_line(proc)
    for word in expected:
        assert word in line
    assert user_docs(db) == []


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("bad.yaml", "- a\n- [b, c\n", "not valid YAML"),
        ("bad.yaml", "exposures: {a: 1\n", "not valid YAML"),
        ("bad.json", '["a", ', "not valid JSON"),
    ],
    ids=["yaml-list", "yaml-mapping", "json"],
)
def test_create_from_unparsable_file_exits_6(
    db: Database, name: str, text: str, expected: str
) -> None:
    spec = db.tmp / name
    spec.write_text(text)
    proc = gridxfer("tokens", "create", "n1", "--from", str(spec), config=db.config_file)
    assert proc.returncode == 6
    line = error_line(proc)
    assert expected in line and str(spec) in line
    assert user_docs(db) == []


def test_create_bad_night_or_missing_file_exits_6(db: Database) -> None:
    spec = db.tmp / "ok.yaml"
    spec.write_text("- a\n- b\n")
    proc = gridxfer("tokens", "create", "bad night", "--from", str(spec), config=db.config_file)
    assert proc.returncode == 6 and "night" in error_line(proc)
    proc = gridxfer(
        "tokens", "create", "n1", "--from", str(db.tmp / "none.yaml"), config=db.config_file
    )
    assert proc.returncode == 6 and "cannot read" in error_line(proc)
    assert user_docs(db) == []


def test_create_keeps_zero_padded_numeric_exposure_names(db: Database) -> None:
    # YAML 1.1 would read an unquoted zero-padded exposure number such as
    # 00012345 as octal (5349); DESI-style exposure ids are exactly such numbers.
    # Expected: the names as written, or exit 6 asking to quote them -- never a
    # different exposure.
    spec = db.tmp / "numeric.yaml"
    spec.write_text("- 00012345\n- 00000100\n")
    proc = gridxfer("tokens", "create", "n1", "--from", str(spec), "--json", config=db.config_file)
    if proc.returncode == 6:
        assert user_docs(db) == []
    else:
        assert proc.returncode == 0, proc.stderr
        assert sorted(user_docs(db)) == ["n1_00000100", "n1_00012345"]


# -- not found: exit 5 -------------------------------------------------------------
@pytest.mark.parametrize(
    "command",
    [
        ["tokens", "list", "n9"],
        ["tokens", "list", "n9", "--json"],
        ["tokens", "reset", "n9"],
        ["tokens", "delete", "n9", "--yes"],
        ["status", "n9"],
    ],
    ids=lambda c: "-".join(c),
)
def test_unknown_night_exits_5(db: Database, command: list[str]) -> None:
    spec = db.tmp / "n1.yaml"
    spec.write_text("- a\n- b\n")
    gridxfer("tokens", "create", "n1", "--from", str(spec), config=db.config_file, check=True)
    proc = gridxfer(*command, config=db.config_file)
    assert proc.returncode == 5
    assert "unknown night 'n9'" in error_line(proc)
    assert proc.stdout == ""
    assert sorted(user_docs(db)) == ["n1_a", "n1_b"]


def test_show_missing_token_exits_5(db: Database) -> None:
    for extra in ([], ["--json"]):
        proc = gridxfer("tokens", "show", "n1_nope", *extra, config=db.config_file)
        assert proc.returncode == 5
        assert "n1_nope" in error_line(proc)


def test_delete_without_yes_and_no_terminal_exits_6(db: Database) -> None:
    spec = db.tmp / "n1.yaml"
    spec.write_text("- a\n")
    gridxfer("tokens", "create", "n1", "--from", str(spec), config=db.config_file, check=True)
    proc = gridxfer("tokens", "delete", "n1", config=db.config_file, input="y\n")
    assert proc.returncode == 6 and "--yes" in error_line(proc)
    assert user_docs(db) == ["n1_a"]


# -- database unavailable: exit 4, credentials never shown --------------------------
@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["status", "--json"],
        ["init"],
        ["tokens", "list", "n1"],
        ["tokens", "show", "n1_a"],
        ["tokens", "reap"],
        ["tokens", "create", "n1", "--from", "FILE"],
        ["--debug", "status"],
    ],
    ids=lambda c: "-".join(c),
)
def test_unreachable_server_exits_4_without_showing_the_password(
    tmp_path: Path, command: list[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    cfg = tmp_path / "gone.yaml"
    cfg.write_text(yaml.safe_dump({"couchdb": {"url": url, "retries": 1, "backoff": 0.1}}))
    spec = tmp_path / "e.yaml"
    spec.write_text("- a\n")
    command = [str(spec) if c == "FILE" else c for c in command]
    env = cli_env(cfg, GRIDXFER_COUCHDB_USER="dm", GRIDXFER_COUCHDB_PASSWORD=SECRET)
    proc = gridxfer(*command, config=cfg, env=env)
    assert proc.returncode == 4, proc.stderr
    assert SECRET not in proc.stdout and SECRET not in proc.stderr
    if "--debug" in command:
        last = proc.stderr.strip().splitlines()[-1]
        assert "Traceback" in proc.stderr and last.startswith("gridxfer: error: ")
    else:
        last = error_line(proc, only_line=False)
        assert proc.stdout == ""
    assert "unavailable" in last and url in last


@pytest.mark.parametrize("auth", ["cookie", "basic"])
def test_refused_login_exits_4_without_showing_the_password(db: Database, auth: str) -> None:
    # pouchdb-server runs as an admin party, so any named user is refused.
    cfg = db.write_config(couchdb={"user": "dm", "auth": auth, "retries": 0})
    proc = gridxfer("status", config=cfg, env=cli_env(cfg, GRIDXFER_COUCHDB_PASSWORD=SECRET))
    assert proc.returncode == 4
    line = error_line(proc)
    assert "401" in line
    assert SECRET not in proc.stdout and SECRET not in proc.stderr


# -- --json shapes ----------------------------------------------------------------
def test_tokens_list_json_is_an_array_of_token_documents(db: Database) -> None:
    spec = db.tmp / "n1.yaml"
    spec.write_text(
        yaml.safe_dump(
            [
                {
                    "exposure": "e1",
                    "files": [{"name": "a.fits", "size": 100, "checksums": {"sha256": "AB" * 32}}],
                },
                {"exposure": "e2", "files": [{"name": "b.fits", "size": 50}]},
                "e3",
            ]
        )
    )
    created = gridxfer(
        "tokens", "create", "n1", "--from", str(spec), "--json", config=db.config_file, check=True
    )
    report = json.loads(created.stdout)
    assert {k: report[k] for k in ("night", "created", "updated", "unchanged", "skipped")} == {
        "night": "n1",
        "created": 3,
        "updated": 0,
        "unchanged": 0,
        "skipped": 0,
    }

    proc = gridxfer("tokens", "list", "n1", "--json", config=db.config_file, check=True)
    docs = json.loads(proc.stdout)
    assert isinstance(docs, list) and len(docs) == 3
    assert sorted(d["_id"] for d in docs) == ["n1_e1", "n1_e2", "n1_e3"]
    for d in docs:
        assert d["type"] == "token" and d["token_set"] == "n1" and d["state"] == "todo"
        assert d["lock"] == 0 and d["done"] == 0 and d["output"] == 0
        assert "_rev" in d and isinstance(d["files"], list)
    e1 = next(d for d in docs if d["_id"] == "n1_e1")
    assert e1["files"][0]["checksums"] == {"sha256": "ab" * 32} and e1["bytes_total"] == 100

    empty = gridxfer(
        "tokens", "list", "n1", "--state", "error", "--json", config=db.config_file, check=True
    )
    assert json.loads(empty.stdout) == []

    show = gridxfer("tokens", "show", "n1_e2", "--json", config=db.config_file, check=True)
    assert json.loads(show.stdout)["_id"] == "n1_e2"


def test_status_json_shape(db: Database) -> None:
    assert (
        json.loads(gridxfer("status", "--json", config=db.config_file, check=True).stdout)["nights"]
        == []
    )
    for night, sizes in (("n1", [100, 50, 7]), ("n2", [1])):
        spec = db.tmp / f"{night}.yaml"
        spec.write_text(
            yaml.safe_dump(
                [
                    {"exposure": f"e{i}", "files": [{"name": "f", "size": s}]}
                    for i, s in enumerate(sizes)
                ]
            )
        )
        gridxfer("tokens", "create", night, "--from", str(spec), config=db.config_file, check=True)
    lease = db.pool().claim("n1")
    assert lease is not None
    done_bytes = lease.doc["bytes_total"]
    lease.done()

    data = json.loads(gridxfer("status", "--json", config=db.config_file, check=True).stdout)
    # The stable core (docs/status.md); later versions may add keys.
    core = ("night", "states", "errors", "bytes_done", "bytes_total")
    assert "nights" in data
    assert [n["night"] for n in data["nights"]] == ["n1", "n2"]
    for n in data["nights"]:
        assert set(core) <= set(n) and n["errors"] == {}
        assert set(n["states"]) == set(STATES)
    n1, n2 = data["nights"]
    assert n1["states"]["todo"] == 2 and n1["states"]["done"] == 1
    assert sum(n1["states"].values()) == 3
    assert n1["bytes_total"] == 157 and n1["bytes_done"] == done_bytes
    assert n2["states"]["todo"] == 1 and n2["bytes_total"] == 1 and n2["bytes_done"] == 0

    one = json.loads(gridxfer("status", "n2", "--json", config=db.config_file, check=True).stdout)
    assert [{k: n[k] for k in core} for n in one["nights"]] == [{k: n2[k] for k in core}]
