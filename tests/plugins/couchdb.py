"""pytest fixtures for Apache CouchDB 3, started through ``scripts/couchdb``.

One single node and one 3-node cluster (q=2, n=3) per test session, each with a
random admin password that reaches the script only through the environment.
Without a release (``scripts/couchdb release`` exits 3), every test that needs
CouchDB 3 is skipped with the one line the script printed, saying how to
enable them; ``pytest_report_header`` prints it at the top of the run too.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "couchdb"
ADMIN = "admin"


def _release() -> tuple[str | None, str]:
    """(unpacked release directory or None, one line saying what was found)."""
    proc = subprocess.run([str(SCRIPT), "release"], capture_output=True, text=True, timeout=300)
    if proc.returncode == 0:
        home = proc.stdout.strip().splitlines()[-1]
        return home, f"CouchDB 3: {home}"
    return None, (
        proc.stderr.strip()
        or proc.stdout.strip()
        or f"scripts/couchdb release exited {proc.returncode}"
    )


_FOUND: tuple[str | None, str] | None = None


def release() -> tuple[str | None, str]:
    global _FOUND
    if _FOUND is None:
        _FOUND = _release()
    return _FOUND


def pytest_report_header() -> str:
    home, line = release()
    return line if home else f"CouchDB 3 tests will be skipped: {line}"


def _ports_free(*ports: int) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@dataclass
class CouchDB3:
    """A running CouchDB 3 instance (one node, or the nodes of a cluster)."""

    name: str
    urls: list[str]
    password: str
    run: Path
    env: dict[str, str] = field(repr=False)
    user: str = ADMIN

    @property
    def url(self) -> str:
        return self.urls[0]

    def password_file(self, directory: Path) -> Path:
        path = directory / "couchdb.password"
        path.write_text(self.password + "\n")
        path.chmod(0o600)
        return path

    def script(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(SCRIPT), *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"scripts/couchdb {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def node_stop(self, i: int) -> None:
        self.script("node-stop", self.name, str(i))

    def node_kill(self, i: int) -> None:
        self.script("node-kill", self.name, str(i))

    def node_start(self, i: int) -> None:
        self.script("node-start", self.name, str(i))


def _start(kind: str) -> Iterator[CouchDB3]:
    home, line = release()
    if home is None:
        pytest.skip(line)
    run = Path(tempfile.mkdtemp(prefix="gridxfer-couchdb-"))
    password = secrets.token_urlsafe(18)
    env = {
        **os.environ,
        "GRIDXFER_RUN": str(run),
        "COUCHDB_USER": ADMIN,
        "COUCHDB_PASSWORD": password,
    }
    name = f"{kind}{os.getpid()}"
    server = None
    errors = []
    try:
        for _ in range(5):
            base = random.randrange(20000, 40000)
            if not _ports_free(*range(base, base + 4)):
                continue
            verb = "start" if kind == "single" else "cluster"
            proc = subprocess.run(
                [str(SCRIPT), verb, name, str(base)],
                capture_output=True,
                text=True,
                env=env,
                timeout=180,
            )
            if proc.returncode == 0:
                count = 1 if kind == "single" else 3
                urls = [f"http://127.0.0.1:{base + i}" for i in range(count)]
                server = CouchDB3(name, urls, password, run, env)
                break
            errors.append(proc.stderr.strip())
            subprocess.run([str(SCRIPT), "stop", name], capture_output=True, env=env, timeout=120)
        if server is None:
            pytest.fail(f"could not start CouchDB 3 ({kind}):\n" + "\n".join(errors))
        yield server
    finally:
        subprocess.run([str(SCRIPT), "stop", name], capture_output=True, env=env, timeout=120)
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="session")
def couchdb3() -> Iterator[CouchDB3]:
    """Apache CouchDB 3, one node (n=1)."""
    yield from _start("single")


@pytest.fixture(scope="session")
def couchdb_cluster() -> Iterator[CouchDB3]:
    """Apache CouchDB 3, three nodes on loopback (q=2, n=3)."""
    yield from _start("cluster")
