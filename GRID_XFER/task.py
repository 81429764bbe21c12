"""What a worker does with a claimed token: the task interface and simple tasks.

Like PiCaS's ``process_task``, a task gets the token and either returns the
fields to store on success or raises :class:`TaskError` with a code. ``cancel``
is called from another thread (a signal, a lost lease) and must make ``run``
return promptly.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from GRID_XFER.config import STORAGE_SECRET_ENV
from GRID_XFER.errors import Code, NotFound, TaskError
from GRID_XFER.pool.attachments import NAME, user_attachments

SIGNAL_GRACE = 2.0  # seconds a signalled command waits for the worker's own signal
SECRET_ENV = (
    "GRIDXFER_COUCHDB_PASSWORD",
    "GRIDXFER_STAGER_PASSWORD",
    "LOFAR_LTA_PWD",
    *STORAGE_SECRET_ENV,
)


@dataclass
class TaskContext:
    """Per-token services: a logger whose output is attached to the token, progress
    saves, and the files a user attached to the token (``gridxfer tokens attach``)."""

    log: logging.Logger
    cancelled: threading.Event
    save_progress: Any = None  # Callable[..., None]: Lease.update
    extra: dict[str, Any] = field(default_factory=dict)
    fetch: Callable[[str], bytes] | None = None  # the worker's reader of this token's attachments

    def attachment(self, name: str) -> bytes:
        """The content of the token's attachment ``name``; NotFound if it has none such."""
        if self.fetch is None:
            raise NotFound(f"no attachment {name!r}: this task runs without a token database")
        return self.fetch(name)


class Task(Protocol):
    def run(self, token: dict[str, Any], ctx: TaskContext) -> dict[str, Any] | None: ...

    def cancel(self) -> None: ...


class NoopTask:
    """Does nothing: for benchmarks of the pool itself."""

    def run(self, token: dict[str, Any], ctx: TaskContext) -> dict[str, Any] | None:
        return None

    def cancel(self) -> None:
        pass


def token_environment(token: dict[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    env.update(
        {
            "GRIDXFER_TOKEN_ID": token["_id"],
            "GRIDXFER_NIGHT": token.get("token_set", ""),
            "GRIDXFER_EXPOSURE": token.get("exposure", ""),
            "GRIDXFER_SOURCE": token.get("source") or "",
            "GRIDXFER_DESTINATION": token.get("destination") or "",
            "GRIDXFER_ATTEMPT": str(token.get("attempts", 0)),
        }
    )
    return env


def _attachment_dir() -> Path:
    """A fresh directory in the working directory (the system's temporary one if
    that is not writable), removed when the command ends."""
    try:
        return Path(tempfile.mkdtemp(prefix="gridxfer-attachments-", dir=os.getcwd()))
    except OSError:
        return Path(tempfile.mkdtemp(prefix="gridxfer-attachments-"))


def write_attachments(token: dict[str, Any], ctx: TaskContext, where: Path) -> list[str]:
    """Write the token's attachments, but for the worker's logs, into ``where``; their names.

    A name that is no plain file name (a PiCaS client may attach ``a/../b``) is
    skipped, never written outside ``where``; one removed since the claim too.
    """
    written = []
    for name in user_attachments(token):
        if not NAME.fullmatch(name):
            ctx.log.warning("attachment %r not written: not a plain file name", name)
            continue
        try:
            (where / name).write_bytes(ctx.attachment(name))
        except NotFound:
            ctx.log.warning("attachment %r is gone from the token; not written", name)
            continue
        except OSError as exc:
            raise TaskError(
                Code.UNEXPECTED, f"cannot write attachment {name!r}: {exc.strerror}", transient=True
            ) from None
        written.append(name)
    return written


def _stopped_by_signal(status: int) -> bool:
    """Killed by a signal, or a shell (or a tool) exiting 128+N after SIGTERM/SIGINT,
    as shells report a signalled child and trap handlers end."""
    return status < 0 or status - 128 in (signal.SIGTERM, signal.SIGINT)


class CommandTask:
    """Runs a configured command with the token's fields in its environment.

    The whole token is in the JSON file named by ``$GRIDXFER_TOKEN_FILE``, the files
    attached to it in the directory ``$GRIDXFER_ATTACHMENTS``. Exit 0
    is success; an exit status that is one of our error codes is recorded as
    that code; anything else is 99. The output goes into the token's log.
    """

    def __init__(self, command: list[str] | str, timeout: float | None = None) -> None:
        self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.argv:
            raise TaskError(Code.CONFIG, "worker.command is empty")
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def run(self, token: dict[str, Any], ctx: TaskContext) -> dict[str, Any] | None:
        where = _attachment_dir()
        try:
            write_attachments(token, ctx, where)
            env = token_environment(token)
            env["GRIDXFER_ATTACHMENTS"] = str(where)
            return self._run(token, ctx, env)
        finally:
            shutil.rmtree(where, ignore_errors=True)

    def _run(
        self, token: dict[str, Any], ctx: TaskContext, env: dict[str, str]
    ) -> dict[str, Any] | None:
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="gridxfer-token-") as f:
            json.dump({k: v for k, v in token.items() if k != "_attachments"}, f)
            f.flush()
            env["GRIDXFER_TOKEN_FILE"] = f.name
            with self._lock:
                if ctx.cancelled.is_set():
                    raise TaskError(Code.INTERRUPTED, "cancelled before start")
                try:
                    self._proc = subprocess.Popen(
                        self.argv,
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                except OSError as exc:
                    raise TaskError(
                        Code.CONFIG, f"cannot run {self.argv[0]!r}: {exc.strerror}", transient=False
                    ) from None
            if ctx.cancelled.is_set():  # a stop that waited for the lock above
                self.cancel()
            proc = self._proc
            try:
                out, _ = proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self.cancel()
                out, _ = proc.communicate()
                ctx.log.info("%s", out.decode(errors="replace"))
                raise TaskError(
                    Code.UNEXPECTED, f"command timed out after {self.timeout:g}s", transient=True
                ) from None
            finally:
                with self._lock:
                    self._proc = None
        text = out.decode(errors="replace")
        if text:
            ctx.log.info("%s", text.rstrip())
        status = proc.returncode
        if status == 0:
            return {"exit_code": 0}
        if _stopped_by_signal(status) and not ctx.cancelled.is_set():
            # A batch system's scancel signals the whole job at once: the command
            # may die before the worker's own handler has run. Give it a moment,
            # so the token is handed back rather than failed.
            ctx.cancelled.wait(SIGNAL_GRACE)
        if ctx.cancelled.is_set():
            raise TaskError(Code.INTERRUPTED, "command stopped by cancel")
        last = text.strip().splitlines()[-1][:300] if text.strip() else "no output"
        if status > 0 and status in Code._value2member_map_:
            raise TaskError(status, f"command exited with status {status}: {last}")
        raise TaskError(
            Code.UNEXPECTED, f"command exited with status {status}: {last}", transient=False
        )

    def cancel(self) -> None:
        """Stop the command's whole process group: TERM, then KILL after 5 s."""
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return

        def _kill_later() -> None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        threading.Thread(target=_kill_later, daemon=True).start()
