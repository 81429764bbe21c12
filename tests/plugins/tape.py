"""pytest fixture for the tape testbed: XRootD + FRM in front of an emulated MSS.

Started through ``scripts/tape`` (see its header) once per session, with a
short recall latency so staging tests take seconds, not minutes. Files put
"on tape only" live under ``mss``; a disk replica under ``disk`` makes them
ONLINE_AND_NEARLINE. Directories are created on both sides, because XRootD
5.5.3 does not list tape-only files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.plugins.xrootd import SERVICE_USER, free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "tape"
RECALL_DELAY = 1.5


@dataclass(frozen=True)
class TapeServer:
    name: str
    port: int
    disk: Path
    mss: Path
    env: dict[str, str]

    def url_for(self, relpath: str | os.PathLike[str] = "") -> str:
        return f"root://127.0.0.1:{self.port}//{str(relpath).lstrip('/')}"

    def _own(self, root: Path, target: Path) -> None:
        if os.geteuid() != 0:
            return
        for p in [*reversed(target.relative_to(root).parents), target.relative_to(root)]:
            if str(p) != ".":
                shutil.chown(root / p, SERVICE_USER, SERVICE_USER)

    def mkdir(self, relpath: str | os.PathLike[str]) -> None:
        """A directory on disk and on tape (XRootD lists only what is on disk)."""
        for root in (self.disk, self.mss):
            (root / relpath).mkdir(parents=True, exist_ok=True)
            self._own(root, root / relpath)

    def put(self, relpath: str | os.PathLike[str], data: bytes, *, online: bool = False) -> None:
        """A file on tape (NEARLINE), or on tape and disk (ONLINE_AND_NEARLINE)."""
        self.mkdir(Path(relpath).parent)
        for root in (self.mss, self.disk) if online else (self.mss,):
            (root / relpath).write_bytes(data)
            self._own(root, root / relpath)

    def evict(self, relpath: str | os.PathLike[str]) -> None:
        """Drop the disk replica of every file under ``relpath`` that is safe on tape."""
        target = self.disk / relpath
        files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
        for f in files:
            twin = self.mss / f.relative_to(self.disk)
            if twin.is_file() and twin.stat().st_size == f.stat().st_size:
                f.unlink()

    def logs(self, lines: int = 60) -> str:
        """The tail of the prepare plugin's and the recall agent's logs (for failures)."""
        state = Path(self.env["GRIDXFER_RUN"]) / f"tape-{self.name}" / "state"
        out = []
        for name in ("prep.log", "xfr.log"):
            try:
                text = (state / name).read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = ["(none)"]
            out.append(f"--- {name}\n" + "\n".join(text))
        return "\n".join(out)

    def on_tape(self, relpath: str | os.PathLike[str]) -> bool:
        return (self.mss / relpath).is_file()

    def on_disk(self, relpath: str | os.PathLike[str]) -> bool:
        return (self.disk / relpath).is_file()

    def set_delay(self, seconds: float) -> None:
        """Recall latency of every recall that starts from now on."""
        _script(self.env, "delay", self.name, f"{seconds:g}", check=True)

    def wait_on_tape(self, relpaths: list[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.on_tape(p) for p in relpaths):
            if time.monotonic() > deadline:
                missing = [p for p in relpaths if not self.on_tape(p)]
                raise AssertionError(f"not migrated within {timeout}s: {missing}")
            time.sleep(0.2)


def _script(
    env: dict[str, str], *args: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=90)
    if check and proc.returncode != 0:
        raise AssertionError(f"scripts/tape {' '.join(args)}: {proc.stdout}{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tape() -> Iterator[TapeServer]:
    """The tape endpoint for the whole session (recall latency RECALL_DELAY seconds)."""
    if shutil.which("xrootd") is None or shutil.which("frm_xfrd") is None:
        pytest.fail("xrootd/frm_xfrd not installed (Debian: apt-get install xrootd-server)")
    base = Path(tempfile.mkdtemp(prefix="gridxfer-tape-"))
    base.chmod(0o755)  # the xrootd user must reach disk/, mss/ and run/
    name = f"pytest-{os.getpid()}"
    env = {
        **os.environ,
        "GRIDXFER_RUN": str(base / "run"),
        "GRIDXFER_XROOTD_LIFETIME": "1h",
        "GRIDXFER_TAPE_RECALL_DELAY": f"{RECALL_DELAY:g}",
        "GRIDXFER_TAPE_MIGRATE_DELAY": "0.5",
        "GRIDXFER_TAPE_MIGRATE_WAIT": "2s",
    }
    server: TapeServer | None = None
    errors: list[str] = []
    try:
        for _ in range(3):  # another process may take the port between probe and bind
            port = free_port()
            result = _script(env, "start", name, str(port), str(base / "disk"), str(base / "mss"))
            if result.returncode == 0:
                server = TapeServer(
                    name, port, (base / "disk").resolve(), (base / "mss").resolve(), env
                )
                break
            errors.append((result.stdout + result.stderr).strip())
        if server is None:
            pytest.fail("could not start the tape endpoint:\n" + "\n".join(errors))
        yield server
    finally:
        if server is not None:
            stop = _script(env, "stop", name)
            if stop.returncode != 0:
                raise RuntimeError(f"could not stop tape endpoint {name}: {stop.stderr.strip()}")
        shutil.rmtree(base, ignore_errors=True)


STAGER_USER = "lta-tester"
STAGER_PASSWORD = "s3cr3t-Pa55w0rd-for-tests"


@pytest.fixture
def lta_stager(tape: TapeServer) -> Iterator[object]:
    """The stand-in LTA stager (tests/stager_service.py), staging from the tape testbed.

    The real service is remote (webportal.astron.nl); this one speaks its XML-RPC
    API, with HTTP basic authentication, for user STAGER_USER / STAGER_PASSWORD.
    """
    from tests.stager_service import LtaStagerService

    service = LtaStagerService(STAGER_USER, STAGER_PASSWORD).start()
    try:
        yield service
    finally:
        service.stop()
