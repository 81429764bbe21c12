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
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from GRID_XFER.errors import Code, TaskError

SIGNAL_GRACE = 2.0  # seconds a signalled command waits for the worker's own signal
SECRET_ENV = (
    "GRIDXFER_COUCHDB_PASSWORD",
    "GRIDXFER_STAGER_PASSWORD",
    "LOFAR_LTA_PWD",
    "GRIDXFER_SFTP_PASSPHRASE",
    "GRIDXFER_S3_SECRET_KEY",
)


@dataclass
class TaskContext:
    """Per-token services: a logger whose output is attached to the token, and progress saves."""

    log: logging.Logger
    cancelled: threading.Event
    save_progress: Any = None  # Callable[..., None]: Lease.update
    extra: dict[str, Any] = field(default_factory=dict)


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


class CommandTask:
    """Runs a configured command with the token's fields in its environment.

    The whole token is in the JSON file named by ``$GRIDXFER_TOKEN_FILE``. Exit 0
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
        env = token_environment(token)
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
        if status < 0 and not ctx.cancelled.is_set():
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
