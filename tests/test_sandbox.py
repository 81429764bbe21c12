"""The worker sandbox: build, upload through gfal2, and the node side (launch.sh).

Everything runs for real: the CLI and launch.sh in subprocesses, gfal2 file://
copies, a pouchdb-server database. Unsafe archives are made here with tarfile.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from GRID_XFER import sandbox as sb
from GRID_XFER.errors import Code
from GRID_XFER.token import parse_spec
from tests.conftest import Database, cli_env, gridxfer

SECRET = "Sandbox-Pa55-never-packed"
SHIPPED = sb.default_source_dir()  # GRID_XFER/sandbox/files, shipped in the package
LAUNCH = SHIPPED / "launch.sh"


def make_sandbox(tmp: Path, command: str | None = None) -> Path:
    """A copy of the shipped sandbox plus a task script, as a site would make one."""
    src = tmp / "sbx"
    shutil.copytree(SHIPPED, src)
    (src / "task.sh").write_text('#!/bin/sh\necho "$GRIDXFER_TOKEN_ID $(pwd)" >> "$RECORD"\n')
    if command:
        defaults = yaml.safe_load((src / "worker.yaml").read_text())
        defaults.setdefault("worker", {})["command"] = command
        (src / "worker.yaml").write_text(yaml.safe_dump(defaults))
    return src


def node_env(db: Database, **extra: str) -> dict[str, str]:
    return cli_env(db.config_file, GRIDXFER_PYTHON=sys.executable, **extra)


def run_launch(
    env: dict[str, str], *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(LAUNCH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def reg(name: str, data: bytes = b"x\n") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


# -- build ----------------------------------------------------------------------------
@pytest.mark.slow
def test_build_is_reproducible_with_sha256_and_only_the_sandbox(
    db: Database, tmp_path: Path
) -> None:
    out1, out2 = tmp_path / "a" / "s.tar.gz", tmp_path / "b" / "s.tar.gz"
    first = gridxfer(
        "sandbox", "build", "-o", str(out1), "--json", config=db.config_file, check=True
    )
    built = json.loads(first.stdout)
    gridxfer("sandbox", "build", "-o", str(out2), config=db.config_file, check=True)
    assert out1.read_bytes() == out2.read_bytes()  # same sandbox, same archive, same sha256
    assert built["sha256"] == sb.sha256_file(out1)
    assert Path(f"{out1}.sha256").read_text() == f"{built['sha256']}  s.tar.gz\n"
    with tarfile.open(out1) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"launch.sh", "worker.yaml"}
    assert members["launch.sh"].mode == 0o755 and members["launch.sh"].uid == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["name", "yaml-section", "assignment", "configured-secret", "symlink"]
)
def test_build_refuses_credentials_and_links(db: Database, tmp_path: Path, case: str) -> None:
    src = make_sandbox(tmp_path)
    env = cli_env(db.config_file)
    if case == "name":
        (src / "couchdb.password").write_text("hunter2\n")
    elif case == "yaml-section":
        (src / "worker.yaml").write_text(yaml.safe_dump({"couchdb": {"url": "http://x:5984"}}))
    elif case == "assignment":
        (src / "setup.sh").write_text("export GRIDXFER_COUCHDB_PASSWORD=hunter2\n")
    elif case == "configured-secret":
        (src / "notes.txt").write_text(f"do not ship {SECRET}\n")
        env["GRIDXFER_COUCHDB_PASSWORD"] = SECRET  # the password the CLI is configured with
    else:
        (src / "escape").symlink_to("/etc")
    out = tmp_path / "s.tar.gz"
    proc = gridxfer(
        "sandbox", "build", "--dir", str(src), "-o", str(out), config=db.config_file, env=env
    )
    assert proc.returncode == 6, proc.stderr
    assert proc.stderr.startswith("gridxfer: error: sandbox ")
    assert SECRET not in proc.stderr + proc.stdout and "hunter2" not in proc.stderr
    assert not out.exists()


# -- upload, record, fetch on a node ------------------------------------------------------
@pytest.mark.slow
def test_upload_records_the_sandbox_and_launch_sh_runs_workers_from_it(
    db: Database, tmp_path: Path
) -> None:
    record = tmp_path / "ran.txt"
    src = make_sandbox(tmp_path, command="sh ./task.sh")
    archive = tmp_path / "s.tar.gz"
    gridxfer(
        "sandbox", "build", "--dir", str(src), "-o", str(archive), config=db.config_file, check=True
    )
    store = tmp_path / "store"
    url = f"file://{store}/sandbox-v1.tar.gz"
    up = gridxfer(
        "sandbox",
        "upload",
        url,
        "--file",
        str(archive),
        "--night",
        "n1",
        "--json",
        config=db.config_file,
        check=True,
    )
    doc = json.loads(up.stdout)
    assert doc["_id"] == "sandbox:n1" and doc["type"] == "sandbox" and doc["url"] == url
    assert doc["sha256"] == sb.sha256_file(archive)
    assert (store / "sandbox-v1.tar.gz").read_bytes() == archive.read_bytes()
    # Uploading the same archive again is a no-op; another night falls back to none.
    gridxfer(
        "sandbox",
        "upload",
        url,
        "--file",
        str(archive),
        "--night",
        "n1",
        config=db.config_file,
        check=True,
    )
    shown = gridxfer(
        "sandbox", "show", "--night", "n1", "--json", config=db.config_file, check=True
    )
    assert json.loads(shown.stdout)["sha256"] == doc["sha256"]
    assert gridxfer("sandbox", "show", "--night", "n2", config=db.config_file).returncode == 5

    pool = db.pool()
    pool.create("n1", [parse_spec(e) for e in ("a", "b", "c")])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = node_env(
        db,
        GRIDXFER_NIGHT="n1",
        GRIDXFER_SCRATCH=str(scratch),
        RECORD=str(record),
        GRIDXFER_JOB_ID="node-1",
    )
    proc = run_launch(env)
    assert proc.returncode == 0, proc.stderr
    assert "fetched sandbox" in proc.stderr
    lines = sorted(record.read_text().split("\n")[:-1])
    assert [ln.split()[0] for ln in lines] == ["n1_a", "n1_b", "n1_c"]
    # The task ran inside the unpacked sandbox, in a private directory under the scratch ...
    workdirs = {ln.split()[1] for ln in lines}
    assert len(workdirs) == 1 and workdirs.pop().startswith(f"{scratch}/gridxfer-job-")
    assert list(scratch.iterdir()) == []  # ... which is gone afterwards.
    assert pool.counts("n1") == {"n1": {"done": {"count": 3, "bytes": 0}}}
    assert all(d["job_id"] == "node-1" for d in pool.select("n1"))
    # The record is no token: the views do not count it.
    assert set(pool.counts()) == {"n1"}
    overview = db.couch.view("Monitor", "overview_total", group=True)["rows"]
    assert {r["key"]: r["value"] for r in overview} == {"done": 3}


@pytest.mark.slow
def test_corrupted_sandbox_exits_11_and_leaves_tokens_alone(db: Database, tmp_path: Path) -> None:
    archive = tmp_path / "s.tar.gz"
    gridxfer("sandbox", "build", "-o", str(archive), config=db.config_file, check=True)
    stored = tmp_path / "store" / "s.tar.gz"
    gridxfer(
        "sandbox",
        "upload",
        f"file://{stored}",
        "--file",
        str(archive),
        config=db.config_file,
        check=True,
    )
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    pool = db.pool()
    pool.create("n1", [parse_spec("a")])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = run_launch(node_env(db, GRIDXFER_NIGHT="n1", GRIDXFER_SCRATCH=str(scratch)))
    assert proc.returncode == Code.SANDBOX_CHECKSUM == 11, proc.stderr
    assert "SHA-256" in proc.stderr.strip().splitlines()[-1]
    doc = pool.get("n1_a")
    assert doc["state"] == "todo" and doc["attempts"] == 0  # no token was held
    assert list(scratch.iterdir()) == []


@pytest.mark.slow
def test_missing_sandbox_exits_10(db: Database, tmp_path: Path) -> None:
    proc = run_launch(node_env(db, GRIDXFER_NIGHT="n1", GRIDXFER_SCRATCH=str(tmp_path)))
    assert proc.returncode == Code.SANDBOX_FETCH == 10, proc.stderr
    assert "no sandbox recorded for night n1" in proc.stderr


@pytest.mark.slow
def test_code_reaches_the_token_when_one_is_held(db: Database, tmp_path: Path) -> None:
    """Fetching inside a task (as GRID_LRT fetches per token) records 11 in that token."""
    archive = tmp_path / "s.tar.gz"
    sb.build(SHIPPED, archive)
    pool = db.pool()
    pool.create("n1", [parse_spec("a")])
    cfg = db.write_config(
        worker={"command": f"{sys.executable} -m GRID_XFER.cli node fetch --into {tmp_path / 'w'}"}
    )
    env = cli_env(cfg, GRIDXFER_SANDBOX_URL=f"file://{archive}", GRIDXFER_SANDBOX_SHA256="0" * 64)
    gridxfer("worker", "--idle-exit", config=cfg, env=env, check=True)
    doc = pool.get("n1_a")
    assert doc["state"] == "error" and doc["output"] == 11
    assert doc["error"]["name"] == "SANDBOX_CHECKSUM" and "SHA-256" in doc["error"]["message"]


# -- unsafe archives --------------------------------------------------------------------
UNSAFE = {
    "dotdot": lambda t: [reg("ok.txt"), reg("../../escaped.txt")],
    "dotdot-inner": lambda t: [reg("sub/../../../escaped.txt")],
    "absolute": lambda t: [reg(str(t / "abs" / "pwned.txt"))],
    "symlink-out": lambda t: [link("out", "../../.."), reg("out/escaped.txt")],
    "symlink-absolute": lambda t: [link("etc", str(t / "abs"))],
    "symlink-chain": lambda t: [link("here", "."), link("up", "here/here/..")],
    "hardlink-out": lambda t: [link("h", str(t / "abs" / "pwned.txt"), tarfile.LNKTYPE)],
    "replace-by-link": lambda t: [reg("f"), link("f", "/etc/passwd")],
    "device": lambda t: [link("dev", "", tarfile.CHRTYPE)],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archive_exits_10_and_writes_nothing_outside(tmp_path: Path, case: str) -> None:
    base = tmp_path / "base"
    work = base / "w"
    work.mkdir(parents=True)
    (tmp_path / "abs").mkdir()
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(tar_bytes(UNSAFE[case](tmp_path)))
    (tmp_path / "none.yaml").write_text("{}\n")
    before = tree(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDXFER_")}
    env.update(
        GRIDXFER_SANDBOX_URL=f"file://{archive}",
        GRIDXFER_SANDBOX_SHA256=sb.sha256_file(archive),
        GRIDXFER_CONFIG=str(tmp_path / "none.yaml"),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "GRID_XFER.cli", "node", "fetch", "--into", str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == Code.SANDBOX_FETCH == 10, proc.stderr
    assert "unsafe sandbox" in proc.stderr
    after = tree(tmp_path)
    # Checked before the first byte is written: the sandbox directory stays empty,
    # and nothing appeared anywhere else (the downloaded archive is removed too).
    assert after - before == {"base/w/sandbox"}
    assert not (tmp_path / "abs" / "pwned.txt").exists()


def test_member_checks_cover_more_than_the_cli_cases() -> None:
    ok = [
        tarfile.TarInfo("d"),
        *(m for m, _ in (reg("d/a"), link("d/l", "a"), link("hl", "d/a", tarfile.LNKTYPE))),
    ]
    ok[0].type = tarfile.DIRTYPE
    assert [n for n, _ in sb.check_members(ok)] == ["d", "d/a", "d/l", "hl"]
    bad = {
        "beneath the link": [link("l", "d")[0], reg("l/x")[0]],
        "passes through another link": [link("a", ".")[0], link("b", "a/x")[0]],
        "leaves the directory": [link("d/l", "../../x")[0]],
        "appears twice": [reg("x")[0], reg("./x")[0]],
        "more than": [reg(f"f{i}")[0] for i in range(5)],
    }
    for why, members in bad.items():
        with pytest.raises(sb.SandboxError, match=why):
            sb.check_members(members, max_members=4)
