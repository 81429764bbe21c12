"""pytest fixture for a real single-node Slurm cluster, started through ``scripts/slurm``.

One cluster per test session, only when a test asks for it. Its state lives in
a private temporary directory (mode 0755: munged wants a socket path everyone
can search). Every job a test submits is registered with ``track`` and
cancelled at the end of that test; at the end of the session the remaining
jobs are cancelled and the daemons stopped by their recorded PIDs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.plugins.xrootd import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm"
ACTIVE = ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "REQUEUED")


@dataclass
class SlurmCluster:
    dir: Path
    env: dict[str, str]
    jobs: set[str] = field(default_factory=set)

    def run(
        self, *argv: str, timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(argv),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc

    def track(self, job_id: str) -> str:
        self.jobs.add(job_id.split("_")[0])
        return job_id

    def tasks(self, job_id: str) -> dict[str, dict[str, str]]:
        """``{JOBID_TASKID: scontrol fields}`` of an array job (finished tasks included)."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout
        tasks: dict[str, dict[str, str]] = {}
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "ArrayTaskId" in fields:
                key = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
            else:
                key = fields.get("JobId", "?")
            tasks[key] = fields
        return tasks

    def active(self, job_id: str) -> list[str]:
        return [k for k, f in self.tasks(job_id).items() if f.get("JobState") in ACTIVE]

    def wait_finished(self, job_id: str, timeout: float = 120) -> dict[str, dict[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = self.tasks(job_id)
            if tasks and not any(f.get("JobState") in ACTIVE for f in tasks.values()):
                return tasks
            time.sleep(0.5)
        raise AssertionError(
            f"Slurm job {job_id} still active after {timeout}s: {self.tasks(job_id)}"
        )

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every tracked job and wait until none of its tasks is active."""
        for job in sorted(self.jobs):
            self.run("scancel", job, check=False)
        deadline = time.monotonic() + timeout
        for job in sorted(self.jobs):
            while self.active(job):
                if time.monotonic() > deadline:
                    raise AssertionError(f"Slurm job {job} did not end after scancel")
                time.sleep(0.3)
        self.jobs.clear()

    def grep(self, needle: str) -> list[str]:
        """Files of the cluster (state, spool, logs) that contain ``needle``."""
        hits = []
        for p in self.dir.rglob("*"):
            try:
                if p.is_file() and not p.is_symlink() and needle.encode() in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                pass
        return hits


def _script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    missing = [
        b
        for b in ("munged", "slurmctld", "slurmd", "sbatch")
        if shutil.which(b) is None and not Path("/usr/sbin", b).exists()
    ]
    if missing:
        pytest.fail(
            f"Slurm is not installed ({', '.join(missing)} missing): run scripts/setup "
            "(Debian: slurmctld slurmd slurm-client munge)"
        )
    if os.geteuid() != 0:
        pytest.fail("the Slurm testbed needs root (slurmd)")
    base = Path(tempfile.mkdtemp(prefix="gridxfer-slurm-"))
    base.chmod(0o755)
    cluster: SlurmCluster | None = None
    errors: list[str] = []
    env: dict[str, str] = {}
    try:
        for _ in range(3):  # a port may be taken between the probe and the bind
            env = {
                **os.environ,
                "GRIDXFER_SLURM_LIFETIME": "1h",
                "GRIDXFER_SLURMCTLD_PORT": str(free_port()),
                "GRIDXFER_SLURMD_PORT": str(free_port()),
            }
            result = _script(env, "start", str(base))
            if result.returncode == 0:
                cluster = SlurmCluster(
                    base, {**env, "SLURM_CONF": str(base / "etc" / "slurm.conf")}
                )
                break
            errors.append((result.stdout + result.stderr).strip())
            _script(env, "stop", str(base))
        if cluster is None:
            pytest.fail("could not start Slurm:\n" + "\n".join(errors))
        yield cluster
    finally:
        if cluster is not None:
            try:
                cluster.cancel_all()
            finally:
                stop = _script(env, "stop", str(base))
                if stop.returncode != 0:
                    raise RuntimeError(f"could not stop Slurm under {base}: {stop.stderr.strip()}")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The session's cluster; the jobs a test tracks are cancelled when it ends."""
    try:
        yield slurm_cluster
    finally:
        slurm_cluster.cancel_all()
