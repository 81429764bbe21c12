"""Building a sandbox and the node's configuration, in-process.

Fast: no server, no subprocess. tests/test_sandbox.py runs `gridxfer sandbox
build` and the node side for real.
"""

from __future__ import annotations

import os
import shutil
import signal
import tarfile
import time
from pathlib import Path

import pytest
import yaml

import GRID_XFER
from GRID_XFER.checksum import hash_file
from GRID_XFER.errors import Interrupted, SandboxBuildError, SandboxError
from GRID_XFER.sandbox import (
    build,
    default_source_dir,
    interruptible,
    job_config,
    load_defaults,
    merge,
)

SECRET = "Build-Pa55-never-packed"


def copy_of_shipped(tmp: Path) -> Path:
    src = tmp / "sbx"
    shutil.copytree(default_source_dir(), src)
    return src


def test_the_sandbox_ships_inside_the_package() -> None:
    shipped = default_source_dir()
    assert shipped.is_relative_to(Path(GRID_XFER.__file__).parent)
    assert sorted(p.name for p in shipped.iterdir()) == ["launch.sh", "worker.yaml"]
    assert os.access(shipped / "launch.sh", os.X_OK)


def test_build_is_reproducible(tmp_path: Path) -> None:
    first = build(default_source_dir(), tmp_path / "a" / "s.tar.gz")
    second = build(copy_of_shipped(tmp_path), tmp_path / "b" / "s.tar.gz")
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.sha256 == second.sha256 == hash_file(first.path, "sha256")
    assert Path(f"{first.path}.sha256").read_text() == f"{first.sha256}  s.tar.gz\n"
    assert first.files == ["launch.sh", "worker.yaml"]
    with tarfile.open(first.path) as tar:
        modes = {m.name: (m.mode, m.uid, m.mtime) for m in tar.getmembers()}
    assert modes == {"launch.sh": (0o755, 0, 0), "worker.yaml": (0o644, 0, 0)}


def test_build_skips_editor_and_vcs_litter(tmp_path: Path) -> None:
    src = copy_of_shipped(tmp_path)
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (src / "task.sh~").write_text("old\n")
    (src / "task.sh").write_text("echo hi\n")
    assert build(src, tmp_path / "s.tar.gz").files == ["launch.sh", "task.sh", "worker.yaml"]


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("couchdb.password", "x\n", "looks like a credential"),
        ("cert.pem", "x\n", "looks like a credential"),
        ("x509up_u1000", "x\n", "looks like a credential"),
        (
            "setup.sh",
            "export GRIDXFER_COUCHDB_PASSWORD=hunter2\n",
            "sets 'GRIDXFER_COUCHDB_PASSWORD'",
        ),
        ("conf.yaml", "db_secret: abc\n", "sets 'db_secret'"),
        ("notes.txt", f"do not ship {SECRET}\n", "contains the database password"),
        ("worker.yaml", "couchdb:\n  url: http://x\n", "may not be set by the sandbox"),
    ],
)
def test_build_refuses_credentials(tmp_path: Path, name: str, content: str, why: str) -> None:
    src = copy_of_shipped(tmp_path)
    (src / name).write_text(content)
    out = tmp_path / "s.tar.gz"
    with pytest.raises(SandboxBuildError, match=why) as err:
        build(src, out, secrets=[SECRET])
    assert SECRET not in str(err.value) and "hunter2" not in str(err.value)
    assert not out.exists()


def test_build_allows_references_to_secrets(tmp_path: Path) -> None:
    src = copy_of_shipped(tmp_path)
    (src / "setup.sh").write_text(
        "password_file: /home/u/.pw\nexport X_PASSWORD=$FROM_ENV\n# password: commented\n"
    )
    assert "setup.sh" in build(src, tmp_path / "s.tar.gz").files


def test_build_refuses_links_and_non_sandboxes(tmp_path: Path) -> None:
    src = copy_of_shipped(tmp_path)
    (src / "escape").symlink_to("/etc")
    with pytest.raises(SandboxBuildError, match="symbolic link"):
        build(src, tmp_path / "s.tar.gz")
    with pytest.raises(SandboxBuildError, match="no launch.sh"):
        build(tmp_path / "empty", tmp_path / "s.tar.gz")


def test_defaults_allow_worker_sections_only(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text("worker:\n  idle_sleep: 3\nlog_level: DEBUG\n")
    assert load_defaults(path) == {"worker": {"idle_sleep": 3}, "log_level": "DEBUG"}
    for text in ("server:\n  port: 1\n", "- a list\n", "a: [\n"):
        path.write_text(text)
        with pytest.raises(SandboxError):
            load_defaults(path)
    assert merge({"w": {"a": 1, "b": 2}, "x": 1}, {"w": {"b": 3}, "y": 2}) == {
        "w": {"a": 1, "b": 3},
        "x": 1,
        "y": 2,
    }


def test_job_config_puts_the_sandbox_defaults_under_the_jobs_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (sandbox / "worker.yaml").write_text("worker:\n  idle_sleep: 3\n  command: sh ./t.sh\n")
    own = tmp_path / "job.yaml"
    own.write_text("couchdb:\n  db: nights\nworker:\n  idle_sleep: 9\n")
    monkeypatch.setenv("GRIDXFER_CONFIG", str(own))
    work = tmp_path / "work"
    work.mkdir()
    path = job_config(sandbox, work)
    assert path == work / "gridxfer.yaml" and path.stat().st_mode & 0o777 == 0o600
    assert yaml.safe_load(path.read_text()) == {
        "worker": {"idle_sleep": 9, "command": "sh ./t.sh"},
        "couchdb": {"db": "nights"},
    }


def test_interruptible_turns_sigterm_into_interrupted() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as err, interruptible():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at once
    assert err.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before
