"""`gridxfer launch` without a batch system: the spec, the job directory and every job file.

Fast: no server, no subprocess. Each backend renders from a LaunchSpec into a
temporary job directory, and the values that matter are read back from the
files: array size, the SIGTERM grace, the time limit, the environment, and that
the password is in no file but the one meant for it. tests/test_launch.py runs
the same files for real (Slurm, and launch.sh as a condor or grid node runs it).
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from GRID_XFER import launch as ln
from GRID_XFER.app import App
from GRID_XFER.config import Config
from GRID_XFER.errors import DatabaseUnavailable, InvalidInput, InvalidToken, LaunchError
from GRID_XFER.launch.condor import condor_args, condor_env
from GRID_XFER.launch.spec import env_file_text

SECRET = "Render-Pa55-never-in-a-job-file"
URL = "http://127.0.0.1:5999"


def config(**couch: Any) -> Config:
    fields: dict[str, Any] = {"url": URL, "db": "nights", "password": SECRET, **couch}
    return Config.model_validate({"couchdb": fields})


def job_for(
    tmp: Path, backend: str, cfg: Config | None = None, **fields: Any
) -> tuple[ln.LaunchSpec, ln.JobDir]:
    """A spec (3 workers unless said) and the job directory ``prepare`` writes for it."""
    fields.setdefault("workers", 3)
    spec = ln.LaunchSpec(backend=backend, workdir=tmp / "job", **fields)
    return spec, ln.prepare(cfg or config(), spec)


def files_with(root: Path, needle: str) -> list[str]:
    return sorted(
        p.name for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()
    )


def env_lines(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines if line)


def submit_values(text: str) -> tuple[dict[str, str], int]:
    values: dict[str, str] = {}
    queue = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"queue (\d+)", line)
        if m:
            queue = int(m[1])
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        assert key not in values
        values[key] = value
    assert queue is not None
    return values, queue


def jdl_values(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = (s.strip() for s in line.split("=", 1))
            assert value.endswith(";"), line
            out[key] = value[:-1]
    return out


# -- durations and the spec ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3600", 3600),
        (3600, 3600),
        (90.9, 90),
        ("90m", 5400),
        ("4h", 14400),
        ("2d", 172800),
        ("1.5h", 5400),
        (" 30S ", 30),
        ("10:00", 600),
        ("04:00:00", 14400),
        ("1-00:00:00", 86400),
        ("2-01:02:03", 2 * 86400 + 3723),
    ],
)
def test_parse_duration(text: str | int | float, seconds: int) -> None:
    assert ln.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "4x", "h", "-5", "0", "0m", "1:2:3:4", "1-", "abc", 0])
def test_parse_duration_refuses(text: str | int) -> None:
    with pytest.raises(InvalidInput):
        ln.parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(59, "00:00:59"), (3600, "01:00:00"), (90061, "1-01:01:01")]
)
def test_slurm_time(seconds: int, text: str) -> None:
    assert ln.slurm_time(seconds) == text


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"backend": "pbs"}, InvalidInput),
        ({"sandbox": "auto"}, InvalidInput),
        ({"workers": 0}, InvalidInput),
        ({"grace": 3600, "time_limit": 3600}, InvalidInput),
        ({"partition": "a b"}, InvalidInput),
        ({"account": "x;rm"}, InvalidInput),
        ({"name": "bad name"}, InvalidInput),
        ({"night": "../etc"}, InvalidToken),
    ],
)
def test_spec_refuses_bad_values(fields: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        ln.LaunchSpec(**{"backend": "slurm", "workers": 2, **fields})


def test_spec_from_options_parses_durations() -> None:
    spec = ln.LaunchSpec.from_options("condor", 4, time_limit="2h", grace="90")
    assert (spec.time_limit, spec.grace, spec.ships_files) == (7200, 90, True)
    assert spec.node_python() == "python3"
    assert ln.LaunchSpec.from_options("slurm", 1).node_python() == sys.executable


# -- the job directory ------------------------------------------------------------------------
def test_job_directory_is_private_and_holds_no_password_but_its_file(tmp_path: Path) -> None:
    spec, job = job_for(tmp_path, "slurm", night="n1", task="command", command="true")
    assert job.path.stat().st_mode & 0o777 == 0o700
    assert job.password_file == job.path / "couchdb.password"
    assert job.password_file.read_text() == SECRET + "\n"
    assert job.password_file.stat().st_mode & 0o777 == 0o600
    data = yaml.safe_load(job.config.read_text())
    assert data["couchdb"] == {"url": [URL], "db": "nights"}
    assert data["worker"] == {"task": "command", "command": "true"}
    assert "server" not in data
    assert job.launch.read_text().startswith("#!/usr/bin/env bash")
    assert files_with(job.path, SECRET) == ["couchdb.password"]


def test_env_file_names_files_absolute_on_a_shared_fs_relative_when_shipped(
    tmp_path: Path,
) -> None:
    _, shared = job_for(tmp_path / "s", "slurm", night="n1")
    assert env_lines(shared.env_file) == {
        "GRIDXFER_CONFIG": str(shared.path / "job.yaml"),
        "GRIDXFER_SANDBOX": "fetch",
        "GRIDXFER_PYTHON": sys.executable,
        "GRIDXFER_COUCHDB_PASSWORD_FILE": str(shared.path / "couchdb.password"),
        "GRIDXFER_NIGHT": "n1",
    }
    _, shipped = job_for(tmp_path / "c", "jdl", sandbox="none")
    assert env_lines(shipped.env_file) == {
        "GRIDXFER_CONFIG": "job.yaml",
        "GRIDXFER_SANDBOX": "none",
        "GRIDXFER_PYTHON": "python3",
        "GRIDXFER_COUCHDB_PASSWORD_FILE": "couchdb.password",
    }
    assert env_file_text({"A": "b c"}).endswith("\nA=b c\n")  # literal: launch.sh reads it so


def test_a_password_file_is_used_in_place_on_a_shared_fs_and_copied_when_shipped(
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    cfg = config(password=None, password_file=secret_file)
    _, shared = job_for(tmp_path / "s", "slurm", cfg)
    assert shared.password_file == secret_file and not (shared.path / "couchdb.password").exists()
    _, shipped = job_for(tmp_path / "c", "condor", cfg)
    assert shipped.password_file == shipped.path / "couchdb.password"
    assert shipped.password_file.read_text().strip() == SECRET


def test_no_password_configured_means_no_password_file(tmp_path: Path) -> None:
    _, job = job_for(tmp_path, "slurm", config(password=None))
    assert job.password_file is None and "GRIDXFER_COUCHDB_PASSWORD_FILE" not in job.env


# -- the backends ----------------------------------------------------------------------------
def test_registry_knows_every_backend_and_nothing_else() -> None:
    assert set(ln.REGISTRY) == set(ln.BACKENDS) == {"local", "slurm", "condor", "jdl"}
    assert all(ln.get_backend(n).name == n for n in ln.BACKENDS)
    with pytest.raises(InvalidInput):
        ln.get_backend("pbs")


def test_slurm_script(tmp_path: Path) -> None:
    spec, job = job_for(
        tmp_path,
        "slurm",
        workers=5,
        night="n1",
        time_limit=7200,
        grace=90,
        partition="short",
        account="dm",
        max_tokens=7,
        max_time=30.0,
    )
    path = ln.get_backend("slurm").render(spec, job)
    assert path == job.job_file == job.path / "gridxfer.sbatch"
    assert path.stat().st_mode & 0o777 == 0o700
    lines = path.read_text().splitlines()
    for want in (
        "#!/bin/bash",
        "#SBATCH --job-name=gridxfer-n1",
        "#SBATCH --array=0-4",
        "#SBATCH --time=02:00:00",
        "#SBATCH --signal=B:TERM@90",
        "#SBATCH --mem=1024M",
        "#SBATCH --partition=short",
        "#SBATCH --account=dm",
        f"#SBATCH --output={job.logs}/slurm-%A_%a.out",
        "unset GRIDXFER_COUCHDB_PASSWORD",
        f"export GRIDXFER_COUCHDB_PASSWORD_FILE={job.path}/couchdb.password",
        f"export GRIDXFER_CONFIG={job.path}/job.yaml",
        "export GRIDXFER_NIGHT=n1",
    ):
        assert want in lines
    assert shlex.split(lines[-1]) == [
        "exec",
        "/bin/bash",
        str(job.launch),
        "--max-tokens",
        "7",
        "--max-time",
        "30",
    ]
    assert files_with(job.path, SECRET) == ["couchdb.password"]


def test_slurm_without_memory_asks_for_none(tmp_path: Path) -> None:
    spec, job = job_for(tmp_path, "slurm", memory_mb=0)
    assert "--mem" not in ln.render_sbatch(spec, job)


def test_condor_submit_file(tmp_path: Path) -> None:
    spec, job = job_for(
        tmp_path, "condor", workers=4, night="n1", time_limit=3600, grace=45, memory_mb=2048
    )
    path = ln.get_backend("condor").render(spec, job)
    assert path == job.path / "gridxfer.sub" and path.stat().st_mode & 0o777 == 0o600
    values, queue = submit_values(path.read_text())
    assert queue == 4
    assert values["kill_sig"] == "SIGTERM" and values["job_max_vacate_time"] == "45"
    assert values["allowed_execute_duration"] == "3600" and values["request_memory"] == "2048"
    assert values["getenv"] == "false" and values["executable"] == "launch.sh"
    assert values["transfer_input_files"] == "job.yaml, job.env, couchdb.password"
    assert values["+GridXferNight"] == '"n1"'
    assert "GRIDXFER_COUCHDB_PASSWORD_FILE=couchdb.password" in values["environment"]
    assert "GRIDXFER_JOB_ID=$(Cluster).$(Process)" in values["environment"]
    assert files_with(job.path, SECRET) == ["couchdb.password"]


def test_condor_quoting() -> None:
    assert condor_args(["--max-time", "5"]) == '"--max-time 5"'
    quoted = "'a b' 'it''s' 'say \"\"x\"\"' ''"
    assert condor_args(["a b", "it's", 'say "x"', ""]) == f'"{quoted}"'
    assert condor_env({"A": "x y", "B": 'q"'}) == '"A=\'x y\' B=q"""'


def test_jdl(tmp_path: Path) -> None:
    spec, job = job_for(
        tmp_path, "jdl", workers=6, night="n1", time_limit=10800, partition="SITE.X", max_tokens=2
    )
    path = ln.get_backend("jdl").render(spec, job)
    assert path == job.path / "gridxfer.jdl" and path.stat().st_mode & 0o777 == 0o600
    values = jdl_values(path.read_text())
    assert values["JobType"] == '"Parametric"' and values["Parameters"] == "6"
    assert values["ParameterStart"] == "0" and values["ParameterStep"] == "1"
    assert values["CPUTime"] == "10800" and values["Site"] == '"SITE.X"'
    assert values["Arguments"] == '"launch.sh --env job.env --max-tokens 2"'
    assert values["InputSandbox"] == '{"launch.sh", "job.yaml", "job.env", "couchdb.password"}'
    assert values["StdOutput"] == '"worker__PARAM_.out"'
    assert files_with(job.path, SECRET) == ["couchdb.password"]


def test_local_commands_and_environment(tmp_path: Path) -> None:
    spec, job = job_for(tmp_path, "local", workers=2, max_tokens=1)
    backend = ln.get_backend("local")
    assert backend.render(spec, job) is None and job.job_file is None
    assert ln.local_commands(spec, job) == [["/bin/bash", str(job.launch), "--max-tokens", "1"]] * 2
    env = ln.local_environment(
        job, {"PATH": "/bin", "GRIDXFER_COUCHDB_PASSWORD": SECRET, "GRIDXFER_NIGHT": "other"}
    )
    assert env == {"PATH": "/bin", **job.env} and SECRET not in repr(env)
    with pytest.raises(LaunchError):
        backend.submit(spec, job)


def test_submit_environment_drops_every_gridxfer_variable() -> None:
    base = {"HOME": "/h", "GRIDXFER_COUCHDB_PASSWORD": SECRET, "GRIDXFER_CONFIG": "x"}
    assert ln.submit_environment(base) == {"HOME": "/h"}


# -- the library call behind `gridxfer launch` -----------------------------------------------
@pytest.mark.parametrize("backend", ["local", "slurm", "condor", "jdl"])
def test_dry_run_needs_no_database_and_submits_nothing(tmp_path: Path, backend: str) -> None:
    spec = ln.LaunchSpec(backend=backend, workers=2, night="n1", workdir=tmp_path / "j")
    result = ln.launch(App(config=config()), spec, "none", dry_run=True)
    out = result.as_dict()
    assert out["dry_run"] and not out["submitted"] and out["job_id"] is None
    assert out["workers"] == 2 and out["sandbox"] == "none" and result.status == 0
    if backend == "local":
        assert out["commands"] == [["/bin/bash", str(tmp_path / "j" / "launch.sh")]] * 2
        assert "text" not in out and out["job_file"] is None
    else:
        assert out["text"] == Path(out["job_file"]).read_text() and "commands" not in out
    assert SECRET not in repr(out)


def test_sandbox_mode_auto() -> None:
    def unreachable() -> None:
        raise DatabaseUnavailable("no answer")

    assert ln.resolve_sandbox_mode("auto", lambda: {"url": "u"}, dry_run=False) == "fetch"
    assert ln.resolve_sandbox_mode("auto", lambda: None, dry_run=False) == "none"
    assert ln.resolve_sandbox_mode("none", unreachable, dry_run=False) == "none"
    assert ln.resolve_sandbox_mode("auto", unreachable, dry_run=True) == "fetch"
    with pytest.raises(DatabaseUnavailable):
        ln.resolve_sandbox_mode("auto", unreachable, dry_run=False)
