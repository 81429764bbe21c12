"""pytest fixture for a real XRootD server, started through ``scripts/xrootd``.

Enable with ``pytest_plugins = ["tests.plugins.xrootd"]``. One server per test
session; its data and run directories live in a private temporary directory
(not under pytest's ``tmp_path_factory`` base, whose parents are mode 0700 and
so unreachable for the unprivileged ``xrootd`` user the server runs as).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "xrootd"
SERVICE_USER = "xrootd"


def free_port() -> int:
    """A TCP port nobody listens on right now (XRootD binds all interfaces)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def closed_port() -> int:
    """A local port that refuses connections, for 'server unreachable' tests."""
    return free_port()


@dataclass(frozen=True)
class XRootDServer:
    name: str
    port: int
    datadir: Path
    rundir: Path

    @property
    def url(self) -> str:
        return f"root://127.0.0.1:{self.port}/"

    def url_for(self, relpath: str | os.PathLike[str] = "") -> str:
        """root:// URL of a path relative to ``datadir`` (XRootD wants ``//`` before it)."""
        return f"root://127.0.0.1:{self.port}//{str(relpath).lstrip('/')}"

    def davs_for(self, relpath: str | os.PathLike[str] = "") -> str:
        """davs:// URL of a path relative to ``datadir`` (an instance started with TLS)."""
        return f"davs://127.0.0.1:{self.port}/{str(relpath).lstrip('/')}"

    def log(self) -> str:
        path = self.rundir / f"xrootd-{self.name}" / "log" / "xrootd.log"
        return path.read_text(errors="replace")

    def path(self, relpath: str | os.PathLike[str]) -> Path:
        return self.datadir / relpath

    def put(self, relpath: str | os.PathLike[str], data: bytes) -> Path:
        """Write a file straight into the export, owned so the server may rename/delete it."""
        target = self.datadir / relpath
        missing = [
            p
            for p in reversed(target.relative_to(self.datadir).parents)
            if not (self.datadir / p).exists()
        ]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if os.geteuid() == 0:
            for rel in missing:
                shutil.chown(self.datadir / rel, SERVICE_USER, SERVICE_USER)
            shutil.chown(target, SERVICE_USER, SERVICE_USER)
        return target

    def _group(self) -> int:
        """Process group of the server (scripts/xrootd records its leader's pid)."""
        return int((self.rundir / f"xrootd-{self.name}" / "pid").read_text())

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open and nothing is answered, as when a
        storage node stalls."""
        os.killpg(self._group(), signal.SIGSTOP)

    def resume(self) -> None:
        try:
            os.killpg(self._group(), signal.SIGCONT)
        except (OSError, ValueError):
            pass

    def log_tail(self, lines: int = 20) -> str:
        log = self.rundir / f"xrootd-{self.name}" / "log" / "xrootd.log"
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


@contextmanager
def running_xrootd(label: str, tls: Path | None = None) -> Iterator[XRootDServer]:
    """Start an XRootD endpoint in a private temporary directory; stop it on the way out.

    With ``tls`` (a directory made by scripts/testca) it speaks davs:// too.
    """
    if shutil.which("xrootd") is None:
        pytest.fail("xrootd is not installed (Debian: apt-get install xrootd-server xrootd-client)")
    base = Path(tempfile.mkdtemp(prefix="gridxfer-xrootd-"))
    base.chmod(0o755)  # the xrootd user must reach data/ and run/
    name = f"{label}-{os.getpid()}"
    # A killed pytest cannot leave the server running for longer than an hour.
    env = {**os.environ, "GRIDXFER_RUN": str(base / "run"), "GRIDXFER_XROOTD_LIFETIME": "1h"}
    if tls is not None:
        env["GRIDXFER_XROOTD_TLS"] = str(tls)
    server: XRootDServer | None = None
    errors: list[str] = []
    try:
        for _ in range(3):  # another process may grab the port between probe and bind
            port = free_port()
            result = _script(env, "start", name, str(port), str(base / "data"))
            if result.returncode == 0:
                server = XRootDServer(name, port, (base / "data").resolve(), base / "run")
                break
            errors.append((result.stdout + result.stderr).strip())
        if server is None:
            pytest.fail("could not start XRootD:\n" + "\n".join(errors))
        yield server
    finally:
        if server is not None:
            server.resume()  # a test that paused it may have failed before resuming
            stop = _script(env, "stop", name)
            if stop.returncode != 0:
                raise RuntimeError(f"could not stop XRootD {name}: {stop.stderr.strip()}")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def xrootd() -> Iterator[XRootDServer]:
    """A plain XRootD endpoint on 127.0.0.1 with server-side ADLER32, for the whole session."""
    with running_xrootd("pytest") as server:
        yield server


@pytest.fixture
def own_xrootd() -> Iterator[XRootDServer]:
    """An XRootD endpoint for one test alone, which it may pause (SIGSTOP) and resume."""
    with running_xrootd("own") as server:
        yield server
