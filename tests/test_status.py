"""`gridxfer status`: counts from the views match the tokens; the text and live displays.

Seeded nights hold tokens in every state and errors of several codes
(tests/status_seed.py); the expected numbers come from the documents themselves.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pty
import select
import signal
import struct
import sys
import termios
import time
from pathlib import Path

import pytest

from GRID_XFER import status, views
from GRID_XFER.errors import Code, code_name
from GRID_XFER.token import STATES, parse_spec
from tests import status_seed
from tests.conftest import ARTIFACTS, Database, cli_env, gridxfer

pytestmark = pytest.mark.slow  # starts servers or runs the CLI


@pytest.fixture
def seeded(db: Database) -> Database:
    status_seed.seed(db.pool())
    return db


def status_json(db: Database, *args: str) -> dict:
    return json.loads(gridxfer("status", *args, "--json", config=db.config_file, check=True).stdout)


def test_json_counts_match_the_tokens(seeded: Database) -> None:
    want = status_seed.expected(seeded.couch)
    data = status_json(seeded)
    assert [n["night"] for n in data["nights"]] == sorted(status_seed.SIZES)
    assert set(data) == {"generated", "window_s", "settled", "unsettled", "nights"}
    assert data["settled"] is True and data["unsettled"] == 0  # one copy: views are current
    for n in data["nights"]:
        e = want[n["night"]]
        assert set(n["states"]) == set(STATES)
        assert n["states"] == e["states"]
        assert n["errors"] == dict(e["errors"])
        assert n["bytes_done"] == e["bytes_done"] and n["bytes_total"] == e["bytes_total"]
        assert n["tokens"] == status_seed.SIZES[n["night"]] == sum(n["states"].values())
        assert n["workers"] == len(e["holders"])
        # Everything finished just now, so the whole night is in the rate window.
        assert n["rate"]["done"] == n["states"]["done"]
        assert n["rate"]["errors"] == n["states"]["error"]
        assert n["rate"]["bytes"] == n["bytes_done"]
        assert n["rate"]["tokens_per_s"] > 0 and n["rate"]["seconds"] >= status.BUCKET
        remaining = sum(n["states"][s] for s in ("todo", "locked", "staging", "archiving"))
        assert n["eta_s"] == pytest.approx(remaining / n["rate"]["tokens_per_s"], rel=1e-3)
        assert "error_codes" not in n and "holders" not in n  # detail only for one night
    # Several codes in one night, and every state somewhere.
    assert data["nights"][0]["errors"] == {"20": 1, "30": 2, "32": 3}
    assert all(any(n["states"][s] for n in data["nights"]) for s in STATES)


def test_overview_cache_follows_changes_and_deletions(seeded: Database) -> None:
    first = status.state_counts(seeded.couch)  # full count, cached with its seq
    assert seeded.couch.get(status.CACHE_ID)["nights"] == first
    pool = seeded.pool()
    pool.create("20261128", [parse_spec("a"), parse_spec("b")])
    lease = pool.claim("20261126")
    assert lease is not None
    lease.done()
    pool.delete("20261127")
    cached = status.state_counts(seeded.couch)  # only the changed nights re-read
    old = seeded.couch.get(status.CACHE_ID)
    seeded.couch.delete(status.CACHE_ID, old["_rev"])
    fresh = status.state_counts(seeded.couch)  # no cache: everything counted
    assert cached == fresh
    assert "20261127" not in fresh and fresh["20261128"]["todo"][0] == 2
    assert fresh["20261126"]["done"][0] == first["20261126"]["done"][0] + 1


def test_one_night_has_error_names_sample_messages_and_lease_holders(seeded: Database) -> None:
    want = status_seed.expected(seeded.couch)
    for night in status_seed.SIZES:
        data = status_json(seeded, night)
        assert [n["night"] for n in data["nights"]] == [night]
        n = data["nights"][0]
        e = want[night]
        assert n["states"] == e["states"] and n["errors"] == dict(e["errors"])
        assert [c["code"] for c in n["error_codes"]] == sorted(int(c) for c in e["errors"])
        for c in n["error_codes"]:
            assert c["count"] == e["errors"][str(c["code"])]
            assert c["name"] == code_name(c["code"]) == Code(c["code"]).name
            assert c["message"] in e["messages"][c["code"]]
            assert c["token"].startswith(night + "_")
        assert {h["id"]: h["tokens"] for h in n["holders"]} == dict(e["holders"])
        for h in n["holders"]:
            assert h["expired"] is False and h["lease_expires"] > time.time()
            assert h["host"] and h["id"].startswith(h["host"] + ":")


def test_expired_lease_shows_in_the_detail(db: Database) -> None:
    pool = db.pool(lease=0.5)
    pool.create("n1", [parse_spec("a")])
    assert pool.claim("n1") is not None
    time.sleep(1.0)
    (holder,) = status.gather(db.couch, "n1").night("n1").holders or []
    assert holder.expired and holder.tokens == 1


def test_text_output_names_the_states_and_errors(seeded: Database) -> None:
    proc = gridxfer("status", config=seeded.config_file, check=True)
    for word in ("night", *STATES, "20261125", "20261126", "20261127", "ETA"):
        assert word in proc.stdout
    detail = gridxfer("status", "20261125", config=seeded.config_file, check=True).stdout
    for code in (Code.SOURCE_MISSING, Code.CHECKSUM_MISMATCH, Code.MISSING_AT_SOURCE):
        assert code.name in detail
    assert "listed in manifest, not at source" in detail
    held = gridxfer("status", "20261126", config=seeded.config_file, check=True).stdout
    assert "workers holding leases" in held and "expires in" in held


def test_empty_database_and_bad_options(db: Database) -> None:
    assert status_json(db)["nights"] == []
    assert "no tokens yet" in gridxfer("status", config=db.config_file, check=True).stdout
    proc = gridxfer("status", "--watch", "--json", config=db.config_file)
    assert proc.returncode == 2 and "do not go together" in proc.stderr


def test_rate_counts_only_the_window(db: Database) -> None:
    pool = db.pool()
    pool.create("n1", [parse_spec(x) for x in "abcd"])
    for _ in range(2):
        lease = pool.claim("n1")
        assert lease is not None
        lease.done()
    now = time.time()
    # An hour later, nothing finished within the window: no rate, no ETA.
    later = status.gather(db.couch, now=now + 3600).night("n1")
    assert later.recent_done == 0 and later.tokens_per_s == 0 and later.eta is None
    soon = status.gather(db.couch, now=now + 1).night("n1")
    assert soon.recent_done == 2 and soon.eta == pytest.approx(2 / soon.tokens_per_s)


# -- the page's attachments ------------------------------------------------------------
def test_init_installs_the_page_and_updates_it_only_when_changed(db: Database) -> None:
    files = views.status_files()
    assert {"status.html", "status.js", "status.css", "codes.json"} <= set(files)
    ddoc = db.couch.get("_design/gridxfer")
    assert set(files) <= set(ddoc["_attachments"])
    for name, (data, _) in files.items():
        assert db.couch.get_attachment("_design/gridxfer", name) == data
    codes = json.loads(db.couch.get_attachment("_design/gridxfer", "codes.json"))
    assert codes["30"]["name"] == "CHECKSUM_MISMATCH"
    rev = ddoc["_rev"]
    assert views.install(db.couch)["gridxfer"] == "unchanged"
    assert db.couch.get("_design/gridxfer")["_rev"] == rev

    # Someone else's attachment survives; a stale page file is replaced.
    rev = db.couch.put_attachment("_design/gridxfer", rev, "notes.txt", b"site notes", "text/plain")
    db.couch.put_attachment(
        "_design/gridxfer", rev, "status.js", b"// old", "application/javascript"
    )
    assert views.install(db.couch)["gridxfer"] == "updated"
    assert db.couch.get_attachment("_design/gridxfer", "status.js") == files["status.js"][0]
    assert db.couch.get_attachment("_design/gridxfer", "notes.txt") == b"site notes"

    # A view update keeps the attachments and does not upload them again.
    before = db.couch.get("_design/gridxfer")
    before["views"]["todo"]["map"] = "function (doc) {}"
    db.couch.put(before)
    assert views.install(db.couch)["gridxfer"] == "updated"
    after = db.couch.get("_design/gridxfer")
    assert after["views"] == views.design_docs()["gridxfer"]["views"]
    for name in files:
        assert after["_attachments"][name]["revpos"] == before["_attachments"][name]["revpos"]
        assert after["_attachments"][name]["digest"] == before["_attachments"][name]["digest"]
    assert "notes.txt" in after["_attachments"]
    assert views.install(db.couch) == {"Monitor": "unchanged", "gridxfer": "unchanged"}


def test_unchanged_when_the_server_digests_differently(db: Database) -> None:
    # CouchDB may report the digest of the compressed bytes it stores: what we
    # recorded at upload time (our MD5, the revision that wrote it) tells that the
    # attachment is ours; a later revision of it is someone else's.
    ddoc = db.couch.get("_design/gridxfer")
    files = views.status_files()
    fake = {
        n: "md5-" + base64.b64encode(b"compressed-" + n.encode()).decode()[:22] + "=="
        for n in files
    }
    for n in files:
        ddoc["_attachments"][n]["digest"] = fake[n]
    ddoc[views._DIGESTS] = {
        n: {"md5": views._md5(data), "revpos": ddoc["_attachments"][n]["revpos"]}
        for n, (data, _) in files.items()
    }
    assert views._changed_files(ddoc, files) == []
    ddoc["_attachments"]["status.js"]["revpos"] += 1
    assert views._changed_files(ddoc, files) == ["status.js"]


# -- --watch in a terminal ---------------------------------------------------------------
def _read_until(fd: int, pid: int, want: bytes, buf: bytearray, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if want in buf:
            return True
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                return want in buf
            if not chunk:
                return want in buf
            buf.extend(chunk)
    return want in buf


def _proc_state(pid: int) -> str:
    """What a process that did not exit is doing (for the failure message)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError as exc:
        return str(exc)
    keep = ("State", "SigBlk", "SigIgn", "SigCgt", "Threads")
    return "; ".join(line for line in status if line.startswith(keep)) + f"; wchan {wchan}"


def test_watch_renders_and_exits_cleanly_on_sigint(seeded: Database) -> None:
    env = cli_env(seeded.config_file, TERM="xterm-256color", COLUMNS="150", LINES="40")
    env.pop("NO_COLOR", None)
    argv = [sys.executable, "-m", "GRID_XFER.cli", "status", "--watch", "--interval", "0.5"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on the terminal's slave side
        try:
            # As a shell would start it: SIGINT neither blocked nor ignored, whatever
            # an earlier test left in this (forked) pytest process.
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execve(sys.executable, argv, env)
        finally:
            os._exit(127)
    buf = bytearray()
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
        assert _read_until(fd, pid, b"20261127", buf, 60), buf.decode(errors="replace")
        assert _read_until(fd, pid, b"Ctrl-C to stop", buf, 30)
        # A night created meanwhile shows up in a later frame.
        mark = len(buf)
        seeded.pool().create("20261128", [parse_spec("late")])
        found = False
        deadline = time.monotonic() + 30
        while not found and time.monotonic() < deadline:
            _read_until(fd, pid, b"\x00never", buf, 0.5)
            found = b"20261128" in buf[mark:]
        text = buf.decode(errors="replace")
        assert found, text[-3000:]
        assert "\u2501" in text  # progress bars
        os.kill(pid, signal.SIGINT)
        _read_until(fd, pid, b"\x00never", buf, 5)
        deadline = time.monotonic() + 15
        status_code = None
        while time.monotonic() < deadline:
            done, status_code = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            state = _proc_state(pid)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"status --watch did not exit within 15 s of SIGINT ({state})")
    finally:
        os.close(fd)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "status-watch.txt").write_bytes(bytes(buf))
    text = buf.decode(errors="replace")
    assert os.WIFEXITED(status_code) and os.WEXITSTATUS(status_code) == 0, text[-2000:]
    assert "Traceback" not in text and "interrupted" not in text
    assert "\x1b[?25h" in text[-200:]  # the cursor is shown again
