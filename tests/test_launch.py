"""`gridxfer launch`: real Slurm job arrays, the local supervisor, and the HTCondor/JDL files.

Slurm runs for real (tests/plugins/slurm.py starts a single-node cluster with
scripts/slurm). No HTCondor pool or DIRAC/gLite service can run here (neither
is packaged for this machine's Debian, and grid services need the network), so
their job files are parsed with the strict parsers below, checked value by
value, and then *executed the way the node would*: launch.sh in a directory
holding exactly the files the job ships, with the environment the job file sets.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from GRID_XFER.sandbox import default_source_dir
from GRID_XFER.token import parse_spec
from tests.conftest import Database, cli_env, gridxfer, wait_for
from tests.plugins.slurm import SlurmCluster

pytestmark = pytest.mark.slow  # starts servers or runs the CLI

SECRET = "Launch-Pa55-w0rd-never-shown"


def launch(db: Database, *args: str, env: dict[str, str], timeout: float = 120) -> dict[str, Any]:
    proc = gridxfer("launch", *args, "--json", config=db.config_file, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def read_proc(pid: int, what: str) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/{what}").read_bytes()
    except OSError:
        return None


def files_containing(root: Path, needle: str, skip: tuple[Path, ...] = ()) -> list[str]:
    return [
        str(p)
        for p in root.rglob("*")
        if p.is_file()
        and not p.is_symlink()
        and p not in skip
        and needle.encode() in p.read_bytes()
    ]


def all_token_text(db: Database) -> str:
    """Every document of the database with its attachments (the workers' logs), as text."""
    rows = db.couch.all_docs(include_docs=True)
    parts = []
    for r in rows:
        doc = r["doc"]
        parts.append(json.dumps(doc))
        for name in doc.get("_attachments") or {}:
            if not r["id"].startswith("_design/"):
                parts.append(db.couch.get_attachment(r["id"], name).decode(errors="replace"))
    return "\n".join(parts)


def check_worker_process(pid: int) -> bool:
    """A running worker shows no password in its argv or environment; False if it is gone."""
    cmdline, environ = read_proc(pid, "cmdline"), read_proc(pid, "environ")
    if not cmdline or not environ:  # gone, or exiting (a zombie shows neither)
        return False
    assert SECRET.encode() not in cmdline and SECRET.encode() not in environ
    assert b"GRID_XFER" in cmdline
    names = [e.split(b"=", 1)[0] for e in environ.split(b"\0")]
    assert b"GRIDXFER_COUCHDB_PASSWORD_FILE" in names and b"GRIDXFER_COUCHDB_PASSWORD" not in names
    return True


def make_sandbox(db: Database, tmp: Path, night: str, task: str) -> None:
    """Build and upload a sandbox whose defaults run ``task.sh`` (shipped inside it)."""
    src = tmp / "sbx"
    shutil.copytree(default_source_dir(), src)
    (src / "task.sh").write_text(task)
    (src / "worker.yaml").write_text("log_level: INFO\nworker:\n  command: sh ./task.sh\n")
    archive = tmp / "sandbox.tar.gz"
    gridxfer(
        "sandbox", "build", "--dir", str(src), "-o", str(archive), config=db.config_file, check=True
    )
    gridxfer(
        "sandbox",
        "upload",
        f"file://{tmp / 'store' / 'sandbox.tar.gz'}",
        "--file",
        str(archive),
        "--night",
        night,
        config=db.config_file,
        check=True,
    )


# -- Slurm ---------------------------------------------------------------------------------
def test_slurm_array_drains_a_night_with_job_ids_and_no_password_anywhere(
    db: Database, tmp_path: Path, slurm: SlurmCluster
) -> None:
    record = tmp_path / "ran.txt"
    make_sandbox(
        db,
        tmp_path,
        "n1",
        "#!/bin/sh\nsleep 1\n"
        f'echo "$GRIDXFER_TOKEN_ID ${{SLURM_ARRAY_JOB_ID}}_$SLURM_ARRAY_TASK_ID" >> {record}\n',
    )
    pool = db.pool()
    pool.create("n1", [parse_spec(f"e{i}") for i in range(9)])
    env = cli_env(
        db.config_file, GRIDXFER_COUCHDB_PASSWORD=SECRET, SLURM_CONF=slurm.env["SLURM_CONF"]
    )
    jobdir = tmp_path / "jobs"
    out = launch(
        db,
        "--backend",
        "slurm",
        "--workers",
        "3",
        "--night",
        "n1",
        "--workdir",
        str(jobdir),
        "--time-limit",
        "10m",
        "--grace",
        "60",
        env=env,
    )
    job = slurm.track(out["job_id"])
    assert out["submitted"] and out["sandbox"] == "fetch" and re.fullmatch(r"\d+", job)
    script = Path(out["job_file"]).read_text()
    for line in (
        "#SBATCH --array=0-2",
        "#SBATCH --signal=B:TERM@60",
        "#SBATCH --time=00:10:00",
        f"export GRIDXFER_COUCHDB_PASSWORD_FILE={jobdir}/couchdb.password",
        f"export GRIDXFER_CONFIG={jobdir}/job.yaml",
    ):
        assert line in script.splitlines()
    password = Path(out["password_file"])
    assert password.read_text().strip() == SECRET and password.stat().st_mode & 0o777 == 0o600

    # While workers hold tokens: no password in their argv or environment.
    def a_worker_checked() -> bool:
        held = [d for d in pool.select("n1", ["locked"]) if d.get("worker")]
        return any(check_worker_process(d["worker"]["pid"]) for d in held)

    wait_for(a_worker_checked, timeout=90, every=0.1, what="a running worker to inspect")
    tasks = slurm.wait_finished(job, timeout=120)
    assert sorted(tasks) == [f"{job}_{i}" for i in range(3)]
    assert {t["JobState"] for t in tasks.values()} == {"COMPLETED"}, tasks
    assert {t["ExitCode"] for t in tasks.values()} == {"0:0"}

    docs = pool.select("n1")
    assert len(docs) == 9 and {d["state"] for d in docs} == {"done"}
    for d in docs:
        assert re.fullmatch(rf"{job}_[0-2]", d["job_id"]) and d["worker"]["job_id"] == d["job_id"]
        assert d["attempts"] == 1
    ran = dict(line.split() for line in record.read_text().splitlines())
    assert ran == {d["_id"]: d["job_id"] for d in docs}  # each ran once, by the task that says so

    # No password in any generated file, job log, Slurm's copy of the job, or token.
    assert files_containing(jobdir, SECRET, skip=(password,)) == []
    assert slurm.grep(SECRET) == []
    assert SECRET not in all_token_text(db)
    assert list(jobdir.joinpath("logs").glob("slurm-*.out"))


def test_scancel_of_an_array_task_hands_its_token_to_another_worker(
    db: Database, tmp_path: Path, slurm: SlurmCluster
) -> None:
    pool = db.pool()
    pool.create("n1", [parse_spec(e) for e in ("a", "b")])
    env = cli_env(db.config_file, SLURM_CONF=slurm.env["SLURM_CONF"])
    # scancel signals every process of the task at once: the worker and its command.
    # This command outlives its SIGTERM by half a second, as a real transfer tool
    # cleaning up would, so the worker has handled its own signal when the command
    # ends (a command that dies first races the worker's handler; see docs/launch.md).
    command = "sh -c 'trap \"sleep 0.5; exit 143\" TERM; sleep 8 & wait'"
    out = launch(
        db,
        "--backend",
        "slurm",
        "--workers",
        "2",
        "--night",
        "n1",
        "--workdir",
        str(tmp_path / "jobs"),
        "--task",
        "command",
        "--command",
        command,
        "--sandbox",
        "none",
        "--time-limit",
        "10m",
        env=env,
    )
    job = slurm.track(out["job_id"])

    def held_by_array_task() -> dict[str, Any] | None:
        held = [d for d in pool.select("n1", ["locked"]) if d.get("job_id", "").startswith(job)]
        # Cancel a task whose command runs, well before that command would end.
        ripe = [d for d in held if 0.5 < time.time() - d["claimed"] < 4]
        return ripe[0] if ripe else None

    victim = wait_for(held_by_array_task, timeout=90, what="a token held by an array task")
    cancelled = victim["job_id"]
    slurm.run("scancel", cancelled)

    def released() -> bool:
        events = [h["event"] for h in pool.get(victim["_id"])["history"]]
        return "released" in events

    wait_for(released, timeout=30, what="the token to be released")
    wait_for(
        lambda: {d["state"] for d in pool.select("n1")} == {"done"},
        timeout=90,
        what="every token done",
    )
    tasks = slurm.wait_finished(job, timeout=60)
    assert tasks[cancelled]["JobState"] == "CANCELLED"
    others = [k for k in tasks if k != cancelled]
    assert [tasks[k]["JobState"] for k in others] == ["COMPLETED"]

    doc = pool.get(victim["_id"])
    assert doc["state"] == "done" and doc["job_id"] == others[0] != cancelled
    assert doc["attempts"] == 1  # the interrupted attempt was not counted
    events = [(h["event"], h.get("worker", "")) for h in doc["history"]]
    assert [e for e, _ in events] == ["created", "claimed", "released", "claimed", "done"]
    log = (tmp_path / "jobs" / "logs" / f"slurm-{cancelled}.out").read_text()
    assert "released back to todo" in log and "stopped by signal 15" in log


def test_dry_run_writes_the_sbatch_script_and_submits_nothing(db: Database, tmp_path: Path) -> None:
    env = cli_env(db.config_file, GRIDXFER_COUCHDB_PASSWORD=SECRET)
    env["PATH"] = "/nonexistent"  # no sbatch: a dry run must not need it
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "GRID_XFER.cli",
            "launch",
            "--backend",
            "slurm",
            "--workers",
            "5",
            "--night",
            "n9",
            "--dry-run",
            "--workdir",
            str(tmp_path / "j"),
            "--partition",
            "short",
            "--time-limit",
            "2h",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --array=0-4" in proc.stdout and "#SBATCH --partition=short" in proc.stdout
    assert "#SBATCH --time=02:00:00" in proc.stdout and "#SBATCH --signal=B:TERM@120" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr
    assert (tmp_path / "j" / "gridxfer.sbatch").read_text().rstrip() == proc.stdout.rstrip()
    assert files_containing(tmp_path / "j", SECRET) == [str(tmp_path / "j" / "couchdb.password")]


# -- local ----------------------------------------------------------------------------
def test_local_supervisor_runs_workers_and_forwards_sigterm(db: Database, tmp_path: Path) -> None:
    pool = db.pool()
    pool.create("n1", [parse_spec(e) for e in ("a", "b", "c", "d")])
    env = cli_env(db.config_file, GRIDXFER_COUCHDB_PASSWORD=SECRET)
    args = [
        "launch",
        "--backend",
        "local",
        "--workers",
        "2",
        "--night",
        "n1",
        "--workdir",
        str(tmp_path / "jobs"),
        "--task",
        "command",
        "--command",
        "sleep 30",
        "--json",
    ]
    sup = subprocess.Popen(
        [sys.executable, "-m", "GRID_XFER.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        held = wait_for(
            lambda: len(pool.select("n1", ["locked"])) == 2 and pool.select("n1", ["locked"]),
            timeout=60,
            what="two held tokens",
        )
        for d in held:
            assert d["job_id"].startswith(f"local-{sup.pid}-")
            assert check_worker_process(d["worker"]["pid"])
        sup.send_signal(signal.SIGTERM)
        stdout, stderr = sup.communicate(timeout=60)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.communicate()
    assert sup.returncode == 143, stderr
    report = json.loads(stdout)
    assert report["signal"] == 15 and [w["status"] for w in report["workers"]] == [143, 143]
    assert "signal 15 forwarded to 2 worker(s)" in stderr
    for d in pool.select("n1"):
        assert d["state"] == "todo" and d["attempts"] == 0
    assert SECRET not in stdout + stderr
    logs = tmp_path / "jobs" / "logs"
    assert "released back to todo" in (logs / "worker-0.log").read_text()
    assert (
        files_containing(tmp_path / "jobs", SECRET, skip=(tmp_path / "jobs" / "couchdb.password",))
        == []
    )

    # Run again to the end: every token done, each by a local job id.
    args[args.index("sleep 30")] = "true"
    done = subprocess.run(
        [sys.executable, "-m", "GRID_XFER.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert {d["state"] for d in pool.select("n1")} == {"done"}
    assert all(re.fullmatch(r"local-\d+-[01]", d["job_id"]) for d in pool.select("n1"))


# -- HTCondor and grid JDL: files parsed, then run as a node would ----------------------
def parse_submit(text: str) -> tuple[dict[str, str], int]:
    """A strict reader of the submit-description subset we write: `key = value`, then `queue N`."""
    values: dict[str, str] = {}
    queue = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert queue is None, f"line {n}: after the queue statement"
        m = re.fullmatch(r"queue(?:\s+(\d+))?", line, re.I)
        if m:
            queue = int(m[1] or 1)
            continue
        m = re.fullmatch(r"(\+?[A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*)", line)
        assert m, f"line {n}: not a submit command: {raw!r}"
        key = m[1].lower()
        assert key not in values, f"line {n}: {key} set twice"
        values[key] = m[2]
    assert queue is not None, "no queue statement"
    return values, queue


def condor_words(value: str) -> list[str]:
    """HTCondor's new quoting (arguments, environment): "...", '' and "" escapes, ' groups."""
    assert value.startswith('"') and value.endswith('"'), value
    body, words, cur, i, quoted, have = value[1:-1], [], "", 0, False, False
    while i < len(body):
        c = body[i]
        if c == '"':
            assert body[i + 1 : i + 2] == '"', "a lone double quote"
            cur, i, have = cur + '"', i + 2, True
            continue
        if c == "'":
            if quoted and body[i + 1 : i + 2] == "'":
                cur, i = cur + "'", i + 2
                continue
            quoted, i, have = not quoted, i + 1, True
            continue
        if c.isspace() and not quoted:
            if cur or have:
                words.append(cur)
            cur, have, i = "", False, i + 1
            continue
        cur, i = cur + c, i + 1
    assert not quoted, "unbalanced single quote"
    if cur or have:
        words.append(cur)
    return words


_JDL_TOKEN = re.compile(
    r'\s*(?:(?P<comment>(?:#|//)[^\n]*)|(?P<str>"(?:[^"\\\n]|\\.)*")|'
    r"(?P<int>-?\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[=;{},\[\]]))"
)


def parse_jdl(text: str) -> dict[str, Any]:
    """A strict reader of the JDL (ClassAd) subset: `Name = string | int | bool | {list};`."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _JDL_TOKEN.match(text, pos)
        assert m and m.end() > pos, f"bad JDL at {text[pos : pos + 30]!r}"
        pos = m.end()
        kind = m.lastgroup
        if kind != "comment":
            tokens.append((kind, m[kind]))
    out: dict[str, Any] = {}

    def value(i: int) -> tuple[Any, int]:
        kind, tok = tokens[i]
        if kind == "str":
            return json.loads(tok), i + 1
        if kind == "int":
            return int(tok), i + 1
        if kind == "name" and tok.lower() in ("true", "false"):
            return tok.lower() == "true", i + 1
        assert tok == "{", f"unexpected {tok!r}"
        items, i = [], i + 1
        while tokens[i][1] != "}":
            item, i = value(i)
            items.append(item)
            if tokens[i][1] == ",":
                i += 1
        return items, i + 1

    i = 0
    while i < len(tokens):
        assert tokens[i][0] == "name" and tokens[i + 1][1] == "=", f"expected Name = at {tokens[i]}"
        name = tokens[i][1]
        v, i = value(i + 2)
        assert tokens[i][1] == ";", f"{name}: missing ;"
        assert name.lower() not in {k.lower() for k in out}, f"{name} set twice"
        out[name] = v
        i += 1
    return out


def run_as_node(db: Database, node: Path, argv: list[str], env: dict[str, str]) -> None:
    """launch.sh as a batch node runs it: in the job's directory, with only what it ships."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GRIDXFER_")}
    proc = subprocess.run(
        argv,
        cwd=node,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr


def test_condor_submit_file_parses_and_runs_as_a_node_would(db: Database, tmp_path: Path) -> None:
    """HTCondor cannot run here: condor_submit is absent, so the file is written, not submitted."""
    pool = db.pool()
    pool.create("n1", [parse_spec(e) for e in ("a", "b")])
    jobdir = tmp_path / "jobs"
    env = cli_env(db.config_file, GRIDXFER_COUCHDB_PASSWORD=SECRET)
    out = launch(
        db,
        "--backend",
        "condor",
        "--workers",
        "3",
        "--night",
        "n1",
        "--workdir",
        str(jobdir),
        "--task",
        "noop",
        "--grace",
        "90",
        "--time-limit",
        "2h",
        "--max-tokens",
        "5",
        "--memory",
        "2048",
        "--python",
        sys.executable,
        env=env,
    )
    assert out["job_id"] is None and not out["submitted"] and shutil.which("condor_submit") is None
    values, queue = parse_submit(Path(out["job_file"]).read_text())
    assert queue == 3
    expected = {
        "universe": "vanilla",
        "executable": "launch.sh",
        "initialdir": str(jobdir),
        "should_transfer_files": "YES",
        "getenv": "false",
        "kill_sig": "SIGTERM",
        "job_max_vacate_time": "90",
        "allowed_execute_duration": "7200",
        "request_cpus": "1",
        "request_memory": "2048",
        "+gridxfernight": '"n1"',
    }
    assert {k: values[k] for k in expected} == expected
    assert condor_words(values["arguments"]) == ["--max-tokens", "5"]
    inputs = [s.strip() for s in values["transfer_input_files"].split(",")]
    assert inputs == ["job.yaml", "job.env", "couchdb.password"]
    environment = dict(w.split("=", 1) for w in condor_words(values["environment"]))
    assert environment == {
        "GRIDXFER_CONFIG": "job.yaml",
        "GRIDXFER_SANDBOX": "none",
        "GRIDXFER_PYTHON": sys.executable,
        "GRIDXFER_NIGHT": "n1",
        "GRIDXFER_COUCHDB_PASSWORD_FILE": "couchdb.password",
        "GRIDXFER_JOB_ID": "$(Cluster).$(Process)",
    }
    assert files_containing(jobdir, SECRET) == [str(jobdir / "couchdb.password")]

    # The execute node: a scratch directory with the executable and the input files only.
    node = tmp_path / "node"
    node.mkdir()
    for name in [values["executable"], *inputs]:
        shutil.copy2(jobdir / name, node / name)
    node_env = {**environment, "GRIDXFER_JOB_ID": "41.0"}
    run_as_node(db, node, ["/bin/bash", "launch.sh", *condor_words(values["arguments"])], node_env)
    docs = pool.select("n1")
    assert {d["state"] for d in docs} == {"done"} and {d["job_id"] for d in docs} == {"41.0"}

    # Where condor_submit exists it is run. A stand-in records how it is called
    # (in the job's file, with no GRIDXFER_* and so no password in its environment).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    stub = bin_dir / "condor_submit"
    stub.write_text(f'#!/bin/sh\n{{ echo "$@"; env; }} > {calls}\necho "57.0 - 57.2"\n')
    stub.chmod(0o755)
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    out = launch(
        db,
        "--backend",
        "condor",
        "--workers",
        "3",
        "--night",
        "n1",
        "--workdir",
        str(tmp_path / "jobs2"),
        "--task",
        "noop",
        env=env,
    )
    assert out["job_id"] == "57" and out["submitted"]
    called = calls.read_text()
    assert called.splitlines()[0] == f"-terse {tmp_path / 'jobs2' / 'gridxfer.sub'}"
    assert SECRET not in called and "GRIDXFER_" not in called


def test_jdl_parses_and_runs_as_a_grid_node_would(db: Database, tmp_path: Path) -> None:
    """No gLite WMS or DIRAC can run here: the JDL is written, parsed and its job replayed."""
    pool = db.pool()
    pool.create("n1", [parse_spec(e) for e in ("a", "b")])
    jobdir = tmp_path / "jobs"
    env = cli_env(db.config_file, GRIDXFER_COUCHDB_PASSWORD=SECRET)
    out = launch(
        db,
        "--backend",
        "jdl",
        "--workers",
        "4",
        "--night",
        "n1",
        "--workdir",
        str(jobdir),
        "--task",
        "noop",
        "--time-limit",
        "3h",
        "--python",
        sys.executable,
        env=env,
    )
    assert out["job_id"] is None
    jdl = parse_jdl(Path(out["job_file"]).read_text())
    assert jdl["JobType"] == "Parametric" and jdl["Parameters"] == 4
    assert jdl["ParameterStart"] == 0 and jdl["ParameterStep"] == 1
    assert jdl["Executable"] == "/bin/bash" and jdl["CPUTime"] == 3 * 3600
    assert jdl["InputSandbox"] == ["launch.sh", "job.yaml", "job.env", "couchdb.password"]
    assert jdl["OutputSandbox"] == ["worker__PARAM_.out", "worker__PARAM_.err"]
    assert jdl["StdOutput"] == "worker__PARAM_.out" and jdl["GridXferNight"] == "n1"
    args = shlex.split(jdl["Arguments"])
    assert args == ["launch.sh", "--env", "job.env"]
    assert files_containing(jobdir, SECRET) == [str(jobdir / "couchdb.password")]
    assert SECRET not in json.dumps(jdl)

    node = tmp_path / "node"
    node.mkdir()
    for name in jdl["InputSandbox"]:
        shutil.copy2(jobdir / name, node / name)
    run_as_node(db, node, [jdl["Executable"], *args], {"DIRACJOBID": "777"})
    docs = pool.select("n1")
    assert {d["state"] for d in docs} == {"done"} and {d["job_id"] for d in docs} == {"777"}
