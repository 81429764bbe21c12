"""The embedded CouchDB-API server (pouchdb-server) for a single machine.

It exists so a data manager can run a night with nothing but this package; sites
with Apache CouchDB 3 point ``couchdb.url`` there instead. We record the PID we
started and stop only that process: never anything found by name.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from GRID_XFER.config import ServerConfig
from GRID_XFER.errors import ServerError

REPO_PREFIX = Path(__file__).resolve().parents[1] / "scripts" / "pouchdb-server"


@dataclass
class ServerState:
    running: bool
    url: str
    port: int
    pid: int | None = None
    data_dir: str | None = None
    log: str | None = None
    started: float | None = None


def _port_in_use(host: str, port: int) -> bool:
    """Someone listens there, or holds it bound (a bind would fail)."""
    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex((host, port)) == 0:
            return True
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as node does: TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _pid_is_ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"pouchdb-server" in cmdline


class EmbeddedServer:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.data_dir = cfg.data_dir.expanduser().resolve()
        self.run_dir = self.data_dir.parent / "run"
        self.state_file = self.run_dir / f"pouchdb-{cfg.port}.json"
        self.log_file = self.run_dir / f"pouchdb-{cfg.port}.log"
        self.url = f"http://{cfg.host}:{cfg.port}"

    def executable(self) -> str:
        candidates = []
        if self.cfg.prefix is not None:
            candidates.append(
                self.cfg.prefix.expanduser() / "node_modules" / ".bin" / "pouchdb-server"
            )
        candidates.append(REPO_PREFIX / "node_modules" / ".bin" / "pouchdb-server")
        for c in candidates:
            if c.is_file():
                return str(c)
        found = shutil.which("pouchdb-server")
        if found:
            return found
        raise ServerError(
            "pouchdb-server is not installed: run scripts/setup, or set "
            "server.prefix to the folder holding node_modules/.bin/pouchdb-server"
        )

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_file.read_text())
            return state if isinstance(state, dict) else None
        except (OSError, ValueError):
            return None

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def status(self) -> ServerState:
        st = self._read_state()
        if st and _pid_is_ours(st["pid"]):
            return ServerState(
                True, self.url, self.cfg.port, st["pid"], st["data_dir"], st["log"], st["started"]
            )
        return ServerState(
            False, self.url, self.cfg.port, data_dir=str(self.data_dir), log=str(self.log_file)
        )

    def start(self) -> tuple[ServerState, bool]:
        """Start and wait until it answers; returns (state, started_now).

        Serialised by a lock file, so two starts at once agree on one server
        instead of both spawning and one recording a PID that lost the port.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / f"pouchdb-{self.cfg.port}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._start()

    def _start(self) -> tuple[ServerState, bool]:
        current = self.status()
        if current.running:
            return current, False
        if _port_in_use(self.cfg.host, self.cfg.port):
            raise ServerError(
                f"port {self.cfg.port} on {self.cfg.host} is already in use by "
                "another process; choose another with server.port or "
                "GRIDXFER_SERVER_PORT"
            )
        exe = self.executable()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            exe,
            "--port",
            str(self.cfg.port),
            "--host",
            self.cfg.host,
            "--no-stdout-logs",
            "--config",
            str(self.run_dir / f"pouchdb-{self.cfg.port}.config.json"),
        ]
        if self.cfg.in_memory:
            cmd.append("--in-memory")
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            cmd += ["--dir", str(self.data_dir)]
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=self.run_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.cfg.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerError(
                    f"pouchdb-server exited with status {proc.returncode} at "
                    f"start; see {self.log_file}: {self._log_tail()}"
                )
            if _port_in_use(self.cfg.host, self.cfg.port) and self._answers():
                state = {
                    "pid": proc.pid,
                    "port": self.cfg.port,
                    "data_dir": str(self.data_dir),
                    "log": str(self.log_file),
                    "started": time.time(),
                }
                self.state_file.write_text(json.dumps(state))
                return self.status(), True
            time.sleep(0.1)
        proc.kill()
        raise ServerError(
            f"pouchdb-server did not answer on {self.url} within "
            f"{self.cfg.start_timeout:g}s; see {self.log_file}"
        )

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the process we started; False when none was running."""
        st = self._read_state()
        if not st or not _pid_is_ours(st["pid"]):
            self.state_file.unlink(missing_ok=True)
            return False
        pid = st["pid"]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_is_ours(pid):
            time.sleep(0.05)
        if _pid_is_ours(pid):
            os.kill(pid, signal.SIGKILL)
        self.state_file.unlink(missing_ok=True)
        return True

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return (lines[-1] if lines else "(empty log)")[:300]


def state_dict(state: ServerState) -> dict[str, Any]:
    return asdict(state)
