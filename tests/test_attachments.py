"""Files attached to tokens (`tokens attach`, `tokens get-attachment`), and tasks reading
them, against real servers (pouchdb-server and Apache CouchDB 3)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from GRID_XFER.couch import Couch
from GRID_XFER.errors import Conflict, InvalidInput, NotFound
from GRID_XFER.pool import attachments
from GRID_XFER.task import CommandTask, TaskContext
from GRID_XFER.token import parse_spec
from GRID_XFER.worker import Worker
from tests.conftest import Database, cli_env, gridxfer

BINARY = bytes(range(256)) * 64 + b"\r\n\x00end"


def _token(db: Database, exposure: str = "a") -> str:
    db.pool().create("n1", [parse_spec(exposure)])
    return f"n1_{exposure}"


def test_attach_and_get_back_byte_for_byte(db: Database, tmp_path: Path) -> None:
    tid = _token(db)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(BINARY)
    parset = tmp_path / "run.parset"
    parset.write_text("msin=L123.MS\n")
    cfg = db.config_file
    out = gridxfer("tokens", "attach", tid, str(blob), "--json", config=cfg, check=True)
    told = json.loads(out.stdout)
    assert told["name"] == "blob.bin" and told["bytes"] == len(BINARY)
    assert told["content_type"] == "application/octet-stream"
    gridxfer(
        "tokens", "attach", tid, str(parset), "--name", "job.parset",
        "--content-type", "text/x-parset", config=cfg, check=True,
    )  # fmt: skip
    # Standard output, binary-safe (no text decoding on the way).
    got = subprocess.run(
        [sys.executable, "-m", "GRID_XFER.cli", "tokens", "get-attachment", tid, "blob.bin"],
        capture_output=True,
        env=cli_env(cfg),
        timeout=120,
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout == BINARY
    # -o writes the file; a second -o refuses to overwrite unless --force.
    dest = tmp_path / "out" / "job.parset"
    dest.parent.mkdir()
    gridxfer("tokens", "get-attachment", tid, "job.parset", "-o", str(dest), config=cfg, check=True)
    assert dest.read_text() == "msin=L123.MS\n"
    dest.write_text("mine\n")
    again = gridxfer("tokens", "get-attachment", tid, "job.parset", "-o", str(dest), config=cfg)
    assert again.returncode == 6 and "--force" in again.stderr
    assert dest.read_text() == "mine\n"
    forced = ("tokens", "get-attachment", tid, "job.parset", "-o", str(dest), "--force")
    gridxfer(*forced, config=cfg, check=True)
    assert dest.read_text() == "msin=L123.MS\n"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["job.parset"]  # no temp left
    # `tokens show` lists the attachments with their sizes and types.
    shown = yaml.safe_load(gridxfer("tokens", "show", tid, config=cfg, check=True).stdout)
    atts = shown["_attachments"]
    assert atts["blob.bin"]["length"] == len(BINARY)
    assert atts["job.parset"]["length"] == len("msin=L123.MS\n")
    assert atts["job.parset"]["content_type"] == "text/x-parset"
    # The token itself is untouched: still todo, claimable.
    assert db.pool().get(tid)["state"] == "todo"


def test_attach_refusals_are_one_line_with_documented_exits(db: Database, tmp_path: Path) -> None:
    tid = _token(db)
    cfg = db.config_file
    ok = tmp_path / "ok.txt"
    ok.write_text("x")
    cases: list[tuple[tuple[str, ...], int, str]] = [
        (("tokens", "attach", "n1_nope", str(ok)), 5, "no token 'n1_nope'"),
        (("tokens", "attach", tid, str(tmp_path / "missing.txt")), 6, "cannot read"),
        (("tokens", "attach", tid, str(ok), "--name", "worker-1.log"), 6, "reserved"),
        (("tokens", "attach", tid, str(ok), "--name", "../x"), 6, "invalid attachment name"),
        (("tokens", "attach", "_design/gridxfer", str(ok)), 6, "invalid token id"),
        (("tokens", "get-attachment", tid, "nothing.txt"), 5, "has no attachment"),
        (("tokens", "get-attachment", "n1_nope", "x"), 5, "has no attachment"),
    ]
    for args, status, words in cases:
        proc = gridxfer(*args, config=cfg)
        assert proc.returncode == status, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (args, proc.stderr)
    with pytest.raises(InvalidInput, match="at most"):
        attachments.attach(db.couch, tid, "big.bin", b"\0" * (attachments.MAX_BYTES + 1), "x/y")
    assert "_attachments" not in db.pool().get(tid)


class Racing(Couch):
    """A real database whose attachment PUTs are each preceded, ``races`` times in all,
    by ``race()``: a real concurrent save between our read of the rev and our write."""

    def __init__(self, db: Database, race: Callable[[], None], races: int) -> None:
        super().__init__(db.cfg)
        self.race, self.races, self.conflicts = race, races, 0

    def put_attachment(self, *args: Any, **kwargs: Any) -> str:
        if self.races > 0:
            self.races -= 1
            self.race()
        try:
            return super().put_attachment(*args, **kwargs)
        except Conflict:
            self.conflicts += 1
            raise


def test_attaching_while_a_worker_saves_loses_neither(db: Database) -> None:
    """Attachment PUTs race a held token's progress saves: every attachment and every
    progress save lands (each side re-reads on the other's 409)."""
    tid = _token(db)
    lease = db.pool(lease=300).claim("n1")
    assert lease is not None and lease.id == tid
    saves = [0]

    def progress() -> None:
        saves[0] += 1
        lease.update(progress=saves[0])

    racing = Racing(db, progress, races=0)
    for i in range(15):
        racing.races = 2  # this attachment's first two writes lose to a progress save
        attachments.attach(racing, tid, f"f{i}.txt", f"file {i}".encode(), "text/plain")
        progress()  # and the worker's next save meets our attachment's new rev
    assert racing.conflicts == 30 and saves[0] == 45
    lease.done()
    doc = db.pool().get(tid)
    assert doc["state"] == "done" and doc["progress"] == 45
    assert sorted(doc["_attachments"]) == sorted(f"f{i}.txt" for i in range(15))
    assert db.couch.get_attachment(tid, "f7.txt") == b"file 7"


def test_attach_gives_up_with_conflict_only_when_always_beaten(db: Database) -> None:
    """A token rewritten between every read and write: the loop is bounded and says
    so (Conflict), it does not spin for ever."""
    tid = _token(db)
    racing = Racing(db, lambda: db.couch.put(db.couch.get(tid)), races=1000)
    with pytest.raises(Conflict, match="try again"):
        attachments.attach(racing, tid, "p.txt", b"x", "text/plain")
    assert racing.conflicts == 20


def test_command_task_gets_attachments_but_not_worker_logs(db: Database, tmp_path: Path) -> None:
    tid = _token(db)
    attachments.attach(db.couch, tid, "job.parset", b"msin=L1.MS\n", "text/plain")
    attachments.attach(db.couch, tid, "blob.bin", BINARY, "application/octet-stream")
    doc = db.couch.get(tid)  # a log from an earlier attempt, as the worker stores it
    db.couch.put_attachment(tid, doc["_rev"], attachments.log_name(1), b"old log", "text/plain")
    seen = tmp_path / "seen"
    script = tmp_path / "task.sh"
    script.write_text(
        f'#!/bin/sh\nset -e\necho "$GRIDXFER_ATTACHMENTS" > {seen}.path\n'
        f'mkdir {seen} && cp -R "$GRIDXFER_ATTACHMENTS"/. {seen}/\n'
    )
    script.chmod(0o755)
    cfg = db.write_config(worker={"command": str(script)})
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "GRID_XFER.cli", "worker", "--idle-exit"],
        capture_output=True,
        text=True,
        env=cli_env(cfg),
        cwd=workdir,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in seen.iterdir()) == ["blob.bin", "job.parset"]
    assert (seen / "blob.bin").read_bytes() == BINARY
    assert (seen / "job.parset").read_bytes() == b"msin=L1.MS\n"
    used = Path((tmp_path / "seen.path").read_text().strip())
    assert used.parent == workdir and not used.exists()  # in the working dir, then removed
    assert db.pool().get(tid)["state"] == "done"


def test_python_task_reads_an_attachment_by_name(db: Database) -> None:
    tid = _token(db)
    attachments.attach(db.couch, tid, "script.py", b"print('hi')\n", "text/x-python")
    got: dict[str, Any] = {}

    class Reading:
        def run(self, token: dict[str, Any], ctx: TaskContext) -> dict[str, Any] | None:
            got["script"] = ctx.attachment("script.py")
            with pytest.raises(NotFound, match="no attachment 'absent'"):
                ctx.attachment("absent")
            got["checked"] = True
            return None

        def cancel(self) -> None:
            pass

    Worker(db.pool(), Reading(), night="n1", idle_exit=True, reap_every=0).run()
    assert got == {"script": b"print('hi')\n", "checked": True}
    assert db.pool().get(tid)["state"] == "done"


def test_command_task_skips_names_it_cannot_write_safely(tmp_path: Path) -> None:
    """A PiCaS client can attach any name; one that is no plain file name is not written
    (never outside the directory). No database: the context's reader is a dict."""
    files = {"ok.txt": b"ok", "../escape.txt": b"bad", "worker-3.log": b"log"}
    token = {
        "_id": "n1_a",
        "_attachments": {n: {"length": len(b), "stub": True} for n, b in files.items()},
    }
    out = tmp_path / "out.txt"
    ctx = TaskContext(
        log=logging.getLogger("tests.attach"),
        cancelled=threading.Event(),
        fetch=files.__getitem__,
    )
    task = CommandTask(["sh", "-c", f'ls -A "$GRIDXFER_ATTACHMENTS" > {out}'])
    assert task.run(token, ctx) == {"exit_code": 0}
    assert out.read_text().split() == ["ok.txt"]
    assert not (tmp_path / "escape.txt").exists()
