"""The simple tasks (GRID_XFER/task.py) in-process, with real short subprocesses.

What a ``command`` task promises (docs/tokens.md, docs/configuration.md): exit 0
is success; an exit status that is one of our codes is recorded as that code;
anything else is 99; ``worker.task_timeout`` stops the command's whole process
group and fails with 99 to be retried; a cancel stops it as interrupted (91); the
command sees the token in its environment and in a file, never the passwords.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from GRID_XFER import token as tk
from GRID_XFER.errors import Code, TaskError
from GRID_XFER.task import SECRET_ENV, CommandTask, NoopTask, TaskContext, token_environment

NIGHT = "20261201"


@pytest.fixture
def doc() -> dict[str, Any]:
    spec = tk.parse_spec({"exposure": "e1", "files": [{"name": "a.fits", "size": 1}]})
    doc = tk.new_token(NIGHT, spec, source="file:///src", destination="file:///dst")
    doc["attempts"] = 2
    doc["_attachments"] = {"worker-1.log": {"stub": True, "content_type": "text/plain"}}
    return doc


@pytest.fixture
def ctx() -> TaskContext:
    return TaskContext(log=logging.getLogger("tests.task"), cancelled=threading.Event())


def sh(script: str, timeout: float | None = None) -> CommandTask:
    return CommandTask(["sh", "-c", script], timeout=timeout)


def gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped yet (a container's PID 1 may not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return False


# -- success and exit statuses -----------------------------------------------------------
def test_exit_0_is_success_and_the_output_goes_to_the_log(
    doc: dict[str, Any], ctx: TaskContext, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tests.task"):
        result = sh("echo copied; echo warned >&2").run(doc, ctx)
    assert result == {"exit_code": 0}
    assert "copied" in caplog.text and "warned" in caplog.text


def test_a_string_command_is_split_like_a_shell_does(
    doc: dict[str, Any], ctx: TaskContext, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    out = tmp_path / "args"
    task = CommandTask(f"sh -c 'printf \"%s|\" \"$@\" > {shlex.quote(str(out))}' x 'a b' c")
    with caplog.at_level(logging.INFO, logger="tests.task"):
        assert task.run(doc, ctx) == {"exit_code": 0}
    assert out.read_text() == "a b|c|"


@pytest.mark.parametrize("code", [Code.CHECKSUM_MISMATCH, Code.SOURCE_MISSING, Code.CONFIG])
def test_an_exit_status_that_is_one_of_our_codes_is_that_code(
    doc: dict[str, Any], ctx: TaskContext, code: Code
) -> None:
    with pytest.raises(TaskError) as info:
        sh(f"echo first; echo 'the last line'; exit {int(code)}").run(doc, ctx)
    assert info.value.code == code and info.value.transient is False
    assert f"status {int(code)}: the last line" in str(info.value)


def test_a_transient_code_stays_transient(doc: dict[str, Any], ctx: TaskContext) -> None:
    with pytest.raises(TaskError) as info:
        sh(f"exit {int(Code.TRANSFER_FAILED)}").run(doc, ctx)
    assert info.value.code == Code.TRANSFER_FAILED and info.value.transient is True
    assert "no output" in str(info.value)


@pytest.mark.parametrize("status", [7, 100, 255])
def test_any_other_exit_status_is_99_and_final(
    doc: dict[str, Any], ctx: TaskContext, status: int
) -> None:
    with pytest.raises(TaskError) as info:
        sh(f"echo oops; exit {status}").run(doc, ctx)
    assert info.value.code == Code.UNEXPECTED and info.value.transient is False
    assert f"exited with status {status}: oops" in str(info.value)


def test_a_command_that_cannot_start_is_a_configuration_error(
    doc: dict[str, Any], ctx: TaskContext, tmp_path: Path
) -> None:
    with pytest.raises(TaskError) as info:
        CommandTask([str(tmp_path / "no-such-command")]).run(doc, ctx)
    assert info.value.code == Code.CONFIG and info.value.transient is False
    assert "no-such-command" in str(info.value)


@pytest.mark.parametrize("command", ["", "   ", []])
def test_an_empty_command_is_a_configuration_error(command: str | list[str]) -> None:
    with pytest.raises(TaskError) as info:
        CommandTask(command)
    assert info.value.code == Code.CONFIG and "worker.command is empty" in str(info.value)


# -- timeout and cancel -------------------------------------------------------------------
def test_a_timeout_kills_the_whole_process_group_and_fails_with_99_to_retry(
    doc: dict[str, Any], ctx: TaskContext, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    task = sh(f"sleep 60 & echo $$ $! > {pids}; echo started; wait", timeout=0.5)
    start = time.monotonic()
    with pytest.raises(TaskError) as info:
        task.run(doc, ctx)
    assert time.monotonic() - start < 5
    assert info.value.code == Code.UNEXPECTED and info.value.transient is True
    assert "timed out after 0.5s" in str(info.value)
    shell, child = (int(p) for p in pids.read_text().split())
    assert wait_gone(shell) and wait_gone(child), "the background sleep outlived the timeout"


def test_a_command_ignoring_sigterm_is_killed_after_the_grace(
    doc: dict[str, Any], ctx: TaskContext
) -> None:
    task = sh("trap '' TERM; sleep 60", timeout=0.3)
    start = time.monotonic()
    with pytest.raises(TaskError) as info:
        task.run(doc, ctx)
    assert 4 < time.monotonic() - start < 20  # TERM ignored: KILL 5 s later
    assert info.value.code == Code.UNEXPECTED and info.value.transient is True


def test_cancel_from_another_thread_stops_the_command_as_interrupted(
    doc: dict[str, Any], ctx: TaskContext, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    task = sh(f"sleep 60 & echo $! > {pids}; wait")

    def stop() -> None:
        while not pids.exists() or not pids.read_text().strip():
            time.sleep(0.01)
        ctx.cancelled.set()
        task.cancel()

    threading.Thread(target=stop, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(TaskError) as info:
        task.run(doc, ctx)
    assert time.monotonic() - start < 5
    assert info.value.code == Code.INTERRUPTED
    assert wait_gone(int(pids.read_text()))
    task.cancel()  # nothing left to stop: a no-op


def test_a_cancel_before_the_start_runs_nothing(
    doc: dict[str, Any], ctx: TaskContext, tmp_path: Path
) -> None:
    ctx.cancelled.set()
    with pytest.raises(TaskError) as info:
        sh(f"touch {tmp_path / 'ran'}").run(doc, ctx)
    assert info.value.code == Code.INTERRUPTED and not (tmp_path / "ran").exists()


def test_a_command_killed_by_a_signal_waits_for_the_workers_own_stop(
    doc: dict[str, Any], ctx: TaskContext
) -> None:
    """A batch system signals the whole job: the command may die first. Within the
    grace the worker's stop arrives and the token is handed back (91), not failed."""
    threading.Timer(0.3, ctx.cancelled.set).start()
    with pytest.raises(TaskError) as info:
        sh("kill -TERM $$").run(doc, ctx)
    assert info.value.code == Code.INTERRUPTED


def test_a_command_ending_143_after_its_sigterm_waits_for_the_workers_own_stop(
    doc: dict[str, Any], ctx: TaskContext
) -> None:
    """A wrapper script that traps TERM and exits 128+15 (or a shell reporting a
    signalled child) ended because of the same scancel: handed back, not failed."""
    threading.Timer(0.3, ctx.cancelled.set).start()
    with pytest.raises(TaskError) as info:
        sh("exit 143").run(doc, ctx)
    assert info.value.code == Code.INTERRUPTED


def test_a_command_exiting_143_with_no_stop_coming_is_still_99(
    doc: dict[str, Any], ctx: TaskContext
) -> None:
    with pytest.raises(TaskError) as info:
        sh("exit 143").run(doc, ctx)
    assert info.value.code == Code.UNEXPECTED and "status 143" in str(info.value)


def test_a_command_killed_by_a_signal_nobody_sent_us_is_99(
    doc: dict[str, Any], ctx: TaskContext
) -> None:
    with pytest.raises(TaskError) as info:
        sh("kill -KILL $$").run(doc, ctx)
    assert info.value.code == Code.UNEXPECTED and info.value.transient is False
    assert f"status {-int(signal.SIGKILL)}" in str(info.value)


# -- what the command sees ----------------------------------------------------------------
def test_the_command_sees_the_token_in_its_environment_and_a_file(
    doc: dict[str, Any], ctx: TaskContext, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    script = f'env > {seen}.env; cp "$GRIDXFER_TOKEN_FILE" {seen}.json; echo "$GRIDXFER_TOKEN_FILE"'
    task = sh(script)
    task.run(doc, ctx)
    env = dict(
        line.split("=", 1)
        for line in (tmp_path / "seen.env").read_text().splitlines()
        if "=" in line
    )
    assert env["GRIDXFER_TOKEN_ID"] == f"{NIGHT}_e1"
    assert env["GRIDXFER_NIGHT"] == NIGHT and env["GRIDXFER_EXPOSURE"] == "e1"
    assert env["GRIDXFER_SOURCE"] == "file:///src" and env["GRIDXFER_DESTINATION"] == "file:///dst"
    assert env["GRIDXFER_ATTEMPT"] == "2"
    stored = json.loads((tmp_path / "seen.json").read_text())
    assert stored == {k: v for k, v in doc.items() if k != "_attachments"}
    assert not Path(env["GRIDXFER_TOKEN_FILE"]).exists()  # removed after the run


def test_passwords_reach_neither_the_environment_nor_the_argv(
    doc: dict[str, Any], ctx: TaskContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {name: f"s3cret-{i}" for i, name in enumerate(SECRET_ENV)}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GRIDXFER_KEEP_ME", "kept")
    seen = tmp_path / "seen"
    task = sh(f"env > {seen}.env; tr '\\0' ' ' < /proc/$$/cmdline > {seen}.argv")
    task.run(doc, ctx)
    env_text = (tmp_path / "seen.env").read_text()
    argv_text = (tmp_path / "seen.argv").read_text()
    assert "GRIDXFER_KEEP_ME=kept" in env_text
    for name, value in secrets.items():
        assert name not in env_text and value not in env_text
        assert value not in argv_text
    assert not any(v in json.dumps(token_environment(doc)) for v in secrets.values())


def test_a_token_without_source_or_destination_gives_empty_variables(
    ctx: TaskContext,
) -> None:
    doc = tk.new_token(NIGHT, tk.parse_spec("e2"))
    env = token_environment(doc)
    assert env["GRIDXFER_SOURCE"] == env["GRIDXFER_DESTINATION"] == ""
    assert env["GRIDXFER_ATTEMPT"] == "0" and env["PATH"] == os.environ["PATH"]


def test_noop_does_nothing(doc: dict[str, Any], ctx: TaskContext) -> None:
    task = NoopTask()
    assert task.run(doc, ctx) is None
    task.cancel()
