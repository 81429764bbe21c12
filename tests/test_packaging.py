"""The package works without a checkout: a wheel in a fresh virtualenv runs a night.

Everything a command reads at run time (design documents, the status page, the
sandbox's launch.sh and worker defaults) must be package data; a file read from
the source tree would make these commands fail once installed elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import Database

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`gridxfer` from a wheel, in a virtualenv that cannot see the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp / "dist"), str(REPO)],
        cwd=tmp,
    )
    (wheel,) = (tmp / "dist").glob("*.whl")
    venv = tmp / "venv"
    # --system-site-packages: gfal2's Python binding comes from Debian, as in scripts/setup.
    run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp)
    run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", str(wheel)], tmp)
    return venv


def test_a_wheel_installed_outside_the_checkout_runs_a_night(
    installed: Path, db: Database, tmp_path: Path
) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRIDXFER_", "PYTHON"))}
    env["GRIDXFER_CONFIG"] = str(db.config_file)
    gx = [str(installed / "bin/gridxfer")]
    where = run(
        [str(installed / "bin/python"), "-c", "import GRID_XFER; print(GRID_XFER.__file__)"],
        work,
        env,
    )
    assert not where.startswith(str(REPO)), f"the checkout's package was imported: {where}"

    run(gx + ["init"], work, env)
    (work / "night.yaml").write_text(
        yaml.safe_dump([{"exposure": f"e{i}", "files": [{"name": "a.fits"}]} for i in range(3)])
    )
    run(
        gx + ["tokens", "create", "n1", "--from", "night.yaml", "--dest", "file:///tmp/x"],
        work,
        env,
    )
    run(gx + ["worker", "--night", "n1", "--task", "noop", "--idle-exit"], work, env)
    done = yaml.safe_load(run(gx + ["status", "n1", "--json"], work, env))
    assert done["nights"][0]["states"]["done"] == 3, done

    run(gx + ["sandbox", "build", "-o", "sb.tar.gz"], work, env)
    with tarfile.open(work / "sb.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("launch.sh") for n in names), names

    script = run(
        gx
        + ["launch", "--backend", "slurm", "--workers", "2", "--dry-run", "--sandbox", "none"]
        + ["--workdir", str(work / "jobs")],
        work,
        env,
    )
    assert "#SBATCH" in script and "launch.sh" in script, script
    assert (work / "jobs").is_dir()
