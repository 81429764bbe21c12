"""pytest fixtures for the grid endpoints: davs:// (XRootD over TLS with a test CA),
sftp:// (a private sshd) and s3:// (moto's S3 server), each started by the project's
own scripts (scripts/testca, scripts/xrootd, scripts/sftpd, scripts/s3) for the session.

Their data and run directories live in private temporary directories the
unprivileged xrootd user can reach (see tests/plugins/xrootd.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.xrootd import XRootDServer, free_port, running_xrootd

REPO = Path(__file__).resolve().parents[2]
S3_KEYS = {"access_key": "gridxfer-test", "secret": "not-a-real-secret-but-kept-as-one"}
BUCKET = "night"


def _run(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(REPO / "scripts" / args[0]), *args[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/{args[0]} {' '.join(args[1:])}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _private_dir(prefix: str) -> Path:
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    return base


@pytest.fixture(scope="session")
def test_ca() -> Iterator[Path]:
    """A throwaway CA and host certificate; the CA directory is what X509_CERT_DIR names."""
    base = _private_dir("gridxfer-pki-")
    _run("testca", str(base / "pki"))
    yield base / "pki"
    shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class DavsPair:
    """Two XRootD servers speaking root:// and davs:// on one port each."""

    a: XRootDServer
    b: XRootDServer
    ca_dir: Path

    def storage_config(self) -> dict[str, Any]:
        """The ``storage:`` section a client needs: the CA, and no macaroon requests
        (XRootD answers them 501; harmless, but one more round trip per call)."""
        return {
            "ca_dir": str(self.ca_dir / "certs"),
            "gfal2": {"HTTP PLUGIN:RETRIEVE_BEARER_TOKEN": False},
        }


@pytest.fixture(scope="session")
def davs_pair(test_ca: Path) -> Iterator[DavsPair]:
    with running_xrootd("davs-a", tls=test_ca) as a, running_xrootd("davs-b", tls=test_ca) as b:
        yield DavsPair(a, b, test_ca)


@dataclass(frozen=True)
class SftpServer:
    port: int
    datadir: Path
    key: Path
    user: str
    log: Path

    def url_for(self, relpath: str = "") -> str:
        return f"sftp://127.0.0.1:{self.port}{self.datadir}/{relpath.lstrip('/')}"

    def storage_config(self) -> dict[str, Any]:
        return {"sftp": {"user": self.user, "private_key": str(self.key)}}


@pytest.fixture(scope="session")
def sftp_server() -> Iterator[SftpServer]:
    """A private sshd on loopback with a key made for the session (no password login)."""
    base = _private_dir("gridxfer-sftp-")
    env = {**os.environ, "GRIDXFER_RUN": str(base / "run")}
    port = free_port()
    _run("sftpd", "start", "pytest", str(port), str(base / "data"), env=env)
    run = base / "run" / "sftpd-pytest"
    try:
        yield SftpServer(
            port,
            (base / "data").resolve(),
            run / "client_ed25519",
            subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip(),
            run / "sshd.log",
        )
    finally:
        _run("sftpd", "stop", "pytest", env=env)
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class S3Server:
    port: int
    bucket: str

    def url_for(self, key: str = "") -> str:
        return f"s3://127.0.0.1:{self.port}/{self.bucket}/{key.lstrip('/')}"

    def storage_config(self) -> dict[str, Any]:
        return {"s3": {"access_key": S3_KEYS["access_key"], "region": "us-east-1"}}

    def env(self) -> dict[str, str]:
        """The secret key travels in the environment, never in the config file or argv."""
        return {"GRIDXFER_S3_SECRET_KEY": S3_KEYS["secret"]}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server (installed by scripts/setup through scripts/s3 install)."""
    base = _private_dir("gridxfer-s3-")
    env = {**os.environ, "GRIDXFER_RUN": str(base / "run")}
    _run("s3", "install")
    port = free_port()
    _run("s3", "start", "pytest", str(port), BUCKET, env=env)
    try:
        yield S3Server(port, BUCKET)
    finally:
        _run("s3", "stop", "pytest", env=env)
        shutil.rmtree(base, ignore_errors=True)
