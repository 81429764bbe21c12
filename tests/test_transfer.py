"""The transfer task as users run it: `gridxfer tokens create` then `gridxfer worker`.

Everything is real: the CLI in subprocesses, a pouchdb-server for the token pool,
an XRootD server for root:// and gfal2's file plugin for file://.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from GRID_XFER import token as tk
from GRID_XFER.errors import Code, TaskError
from GRID_XFER.pool import PoolSettings
from GRID_XFER.scan import scan_night
from GRID_XFER.storage import Storage
from GRID_XFER.task import TaskContext
from GRID_XFER.transfer import TransferTask
from tests.conftest import Database, gridxfer, make_database, spawn_worker, wait_for
from tests.nightgen import (
    flip_byte,
    make_night,
    manifest_name,
    tree,
    write_exposure,
    write_manifest,
)
from tests.plugins.xrootd import XRootDServer

MiB = 1024 * 1024
NIGHT = "20261127"
PART = ".gridxfer-part-"


# ----------------------------------------------------------------------------- helpers


def file_url(path: Path) -> str:
    return f"file://{path}"


def create(cfg: Path, night: str, *args: str) -> dict[str, Any]:
    proc = gridxfer("tokens", "create", night, *args, "--json", config=cfg, check=True)
    return json.loads(proc.stdout)


def work(
    cfg: Path, night: str, *, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return gridxfer(
        "worker", "--night", night, "--idle-exit", config=cfg, check=check, timeout=timeout
    )


def tokens(db: Database, night: str) -> dict[str, dict[str, Any]]:
    return {d["exposure"]: d for d in db.pool().select(night)}


def part_files(root: Path) -> list[str]:
    if not root.exists():
        return []
    return sorted(str(p) for p in root.rglob("*") if PART in p.name)


@dataclass
class Remote:
    """A private directory on the session's XRootD server."""

    url: str
    path: Path


def remote_dir(xrootd: XRootDServer, label: str) -> Remote:
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:60] + f"-{time.monotonic_ns()}"
    return Remote(xrootd.url_for(base), xrootd.path(base))


@pytest.fixture
def remote(request: pytest.FixtureRequest, xrootd: XRootDServer) -> Remote:
    return remote_dir(xrootd, request.node.name)


def assert_done_with_results(doc: dict[str, Any], expected: dict[str, dict[str, Any]]) -> None:
    """Done, output 0, a result per data file (bytes, seconds, sha256), a worker log."""
    assert doc["state"] == "done", doc.get("error")
    assert doc["output"] == 0 and doc["error"] == [] and doc["done"] > 0
    by_name = {f["name"]: f for f in doc["files"]}
    assert set(expected) <= set(by_name)
    for name, want in expected.items():
        result = by_name[name]["result"]
        assert result["status"] == "copied", (name, result)
        assert result["bytes"] == want["size"]
        assert isinstance(result["seconds"], (int, float)) and result["seconds"] >= 0
        assert result["sha256"] == want["sha256"]
    manifests = [f for f in doc["files"] if f.get("role") == "manifest"]
    assert len(manifests) == 1 and manifests[0]["result"]["status"] == "copied"
    assert doc["bytes_done"] == sum(f["result"]["bytes"] for f in doc["files"])
    logs = [
        n for n in doc.get("_attachments", {}) if n.startswith("worker-") and n.endswith(".log")
    ]
    assert logs, f"no worker log attached to {doc['_id']}"


def attachment(db: Database, doc: dict[str, Any], attempt: int = 1) -> str:
    name = f"worker-{attempt}.log"
    assert name in doc["_attachments"], sorted(doc["_attachments"])
    return db.couch.get_attachment(doc["_id"], name).decode()


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_night_file_to_root_arrives_byte_identical_with_per_file_results_and_log(
    db: Database, tmp_path: Path, remote: Remote
) -> None:
    src = tmp_path / "src"
    info = make_night(src, NIGHT, exposures=3, files_per_exposure=3, size=256 * 1024 + 7)
    report = create(db.config_file, NIGHT, "--source", file_url(src), "--dest", remote.url)
    assert report["created"] == 3 and report["manifest_problems"] == {}
    work(db.config_file, NIGHT)

    assert tree(remote.path / NIGHT) == tree(src / NIGHT)
    assert part_files(remote.path) == []
    docs = tokens(db, NIGHT)
    assert set(docs) == set(info["exposures"])
    for exp, doc in docs.items():
        assert_done_with_results(doc, info["exposures"][exp]["files"])
        assert doc["destination"] == f"{remote.url}/{NIGHT}/{exp}"
        assert doc["attempts"] == 1
        assert "verified" in attachment(db, doc)
    status = gridxfer("status", NIGHT, "--json", config=db.config_file, check=True)
    assert json.loads(status.stdout)["nights"][0]["states"]["done"] == 3
    # A re-run finds nothing new and leaves the finished tokens alone.
    again = create(db.config_file, NIGHT, "--source", file_url(src), "--dest", remote.url)
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 3), again
    assert {e: d["_rev"] for e, d in tokens(db, NIGHT).items()} == {
        e: d["_rev"] for e, d in docs.items()
    }


@pytest.mark.slow
def test_night_root_to_file_arrives_byte_identical_with_per_file_results_and_log(
    db: Database, tmp_path: Path, remote: Remote
) -> None:
    info = make_night(remote.path, NIGHT, exposures=2, files_per_exposure=3, size=300 * 1024)
    dst = tmp_path / "dst"
    create(db.config_file, NIGHT, "--source", remote.url, "--dest", file_url(dst))
    work(db.config_file, NIGHT)

    assert tree(dst / NIGHT) == tree(remote.path / NIGHT)
    assert part_files(dst) == []
    for exp, doc in tokens(db, NIGHT).items():
        assert_done_with_results(doc, info["exposures"][exp]["files"])


# ----------------------------------------------------------------------------- failures


@dataclass
class Faults:
    """One night whose exposures each fail (or not) in their own way, run once."""

    db: Database
    created: dict[str, Any]
    docs: dict[str, dict[str, Any]]
    src: Path
    dest: Path
    files: dict[str, dict[str, bytes]]
    worker: subprocess.CompletedProcess[str]


def _payload(exp: str, n: int = 2, size: int = 40_000) -> dict[str, bytes]:
    return {
        f"{exp}-{k}.fits": hashlib.sha256(f"{exp}{k}".encode()).digest() * (size // 32)
        for k in range(n)
    }


@pytest.fixture(scope="module")
def faults(
    couchdb_server: Any, xrootd: XRootDServer, tmp_path_factory: pytest.TempPathFactory
) -> Faults:
    tmp = tmp_path_factory.mktemp("faults")
    db = make_database(couchdb_server.url, tmp)
    src = tmp / "src"
    remote = remote_dir(xrootd, "faults")
    night = src / NIGHT
    names = ["good", "corrupt", "missing", "extra", "nomanifest", "destdiff", "destsame", "gone"]
    files = {exp: _payload(exp) for exp in names}
    for exp in names:
        write_exposure(night / exp, files[exp], manifest=exp != "nomanifest")
    flip_byte(night / "corrupt" / "corrupt-1.fits")  # after its manifest line
    (night / "missing" / "missing-1.fits").unlink()  # still in the manifest
    (night / "extra" / "stray.fits").write_bytes(b"not in the manifest")
    xrootd.put(f"{remote.path.name}/{NIGHT}/destdiff/destdiff-0.fits", b"someone else's data")
    xrootd.put(
        f"{remote.path.name}/{NIGHT}/destsame/destsame-0.fits", files["destsame"]["destsame-0.fits"]
    )

    created = create(db.config_file, NIGHT, "--source", file_url(src), "--dest", remote.url)
    shutil.rmtree(night / "gone")  # after the tokens were made
    worker = work(db.config_file, NIGHT, check=False)
    return Faults(db, created, tokens(db, NIGHT), src, remote.path / NIGHT, files, worker)


def assert_error(doc: dict[str, Any], code: Code, file: str | None = None) -> None:
    assert doc["state"] == "error", f"{doc['_id']}: {doc['state']} {doc.get('error')}"
    assert doc["output"] == code and doc["error"]["code"] == code, doc["error"]
    assert doc["error"]["name"] == code.name
    assert doc["lock"] == 99 and doc["done"] == 99  # PiCaS's error convention
    assert doc["attempts"] == 1  # permanent: no retry
    if file is not None:
        assert doc["error"]["file"] == file
        assert file in doc["error"]["message"]
    assert any(n.startswith("worker-") for n in doc.get("_attachments", {}))


@pytest.mark.slow
def test_worker_survives_failing_tokens_and_completes_the_good_one(faults: Faults) -> None:
    assert faults.worker.returncode == 0, faults.worker.stderr
    assert faults.created["created"] == 8
    good = faults.docs["good"]
    assert good["state"] == "done"
    assert tree(faults.dest / "good") == tree(faults.src / NIGHT / "good")


@pytest.mark.slow
def test_corrupted_source_byte_is_error_30_naming_the_file_and_nothing_lands(
    faults: Faults,
) -> None:
    doc = faults.docs["corrupt"]
    assert_error(doc, Code.CHECKSUM_MISMATCH, "corrupt-1.fits")
    assert not (faults.dest / "corrupt" / "corrupt-1.fits").exists()
    assert part_files(faults.dest / "corrupt") == []


@pytest.mark.slow
def test_no_temporary_part_files_are_left_after_failures(faults: Faults) -> None:
    # The good exposure arrived there: a missing directory would make the check empty.
    assert faults.dest.is_dir(), f"{faults.dest} is missing"
    assert part_files(faults.dest) == []


@pytest.mark.slow
def test_file_listed_in_manifest_but_absent_at_source_is_error_32(faults: Faults) -> None:
    assert_error(faults.docs["missing"], Code.MISSING_AT_SOURCE, "missing-1.fits")
    assert not (faults.dest / "missing").exists()


@pytest.mark.slow
def test_file_at_source_not_in_manifest_is_error_33(faults: Faults) -> None:
    assert_error(faults.docs["extra"], Code.NOT_IN_MANIFEST, "stray.fits")
    assert not (faults.dest / "extra").exists()


@pytest.mark.slow
def test_exposure_without_manifest_is_reported_by_create_and_errors_31(faults: Faults) -> None:
    assert set(faults.created["manifest_problems"]) == {"nomanifest"}
    assert manifest_name("nomanifest") in faults.created["manifest_problems"]["nomanifest"]
    doc = faults.docs["nomanifest"]
    assert_error(doc, Code.MANIFEST_MISSING, manifest_name("nomanifest"))
    assert not (faults.dest / "nomanifest").exists()


@pytest.mark.slow
def test_destination_with_different_content_is_error_41_and_left_untouched(faults: Faults) -> None:
    assert_error(faults.docs["destdiff"], Code.DEST_EXISTS_DIFFERENT, "destdiff-0.fits")
    assert (faults.dest / "destdiff" / "destdiff-0.fits").read_bytes() == b"someone else's data"


@pytest.mark.slow
def test_destination_with_same_content_is_skipped_and_token_done(faults: Faults) -> None:
    doc = faults.docs["destsame"]
    assert doc["state"] == "done" and doc["output"] == 0
    results = {f["name"]: f["result"] for f in doc["files"]}
    assert results["destsame-0.fits"]["status"] == "skipped"
    assert results["destsame-1.fits"]["status"] == "copied"
    assert tree(faults.dest / "destsame") == tree(faults.src / NIGHT / "destsame")


@pytest.mark.slow
def test_source_exposure_removed_after_create_is_error_20(faults: Faults) -> None:
    assert_error(faults.docs["gone"], Code.SOURCE_MISSING)
    assert "gone" in faults.docs["gone"]["error"]["message"]
    assert not (faults.dest / "gone").exists()


@pytest.mark.slow
def test_failures_are_listed_by_code(faults: Faults) -> None:
    out = gridxfer(
        "tokens",
        "list",
        NIGHT,
        "--state",
        "error",
        "--code",
        "30",
        "--json",
        config=faults.db.config_file,
        check=True,
    )
    assert [d["exposure"] for d in json.loads(out.stdout)] == ["corrupt"]


# ----------------------------------------------------------------------------- awkward inputs


@pytest.mark.slow
def test_names_with_spaces_non_ascii_empty_and_nested_files_arrive_intact(
    db: Database, tmp_path: Path, remote: Remote
) -> None:
    src = tmp_path / "src"
    files = {
        "with space.fits": b"spaces " * 1000,
        "ünïcødé-δ 観測.fits": "ünïcødé".encode() * 1000,
        "empty.fits": b"",
        "sub/dir/deep.fits": b"deep" * 5000,
        "sub/näme with space/x y.dat": b"\x00\x01" * 3000,
    }
    exp = write_exposure(src / NIGHT / "e0001", files)
    create(db.config_file, NIGHT, "--source", file_url(src), "--dest", remote.url)
    work(db.config_file, NIGHT)

    assert tree(remote.path / NIGHT) == tree(src / NIGHT)
    doc = tokens(db, NIGHT)["e0001"]
    assert_done_with_results(doc, exp["files"])
    assert {f["name"] for f in doc["files"]} == set(files) | {manifest_name("e0001")}


@pytest.mark.slow
def test_manifest_with_crlf_line_ends_and_upper_case_hex_is_accepted(
    db: Database, tmp_path: Path, remote: Remote
) -> None:
    src = tmp_path / "src"
    info = make_night(
        src, NIGHT, exposures=1, files_per_exposure=3, size=10_000, crlf=True, upper=True
    )
    ((exp, entry),) = info["exposures"].items()
    raw = (src / NIGHT / exp / entry["manifest"]).read_bytes()
    assert b"\r\n" in raw and re.search(rb"[A-F]", raw)
    create(db.config_file, NIGHT, "--source", file_url(src), "--dest", remote.url)
    work(db.config_file, NIGHT)
    assert tree(remote.path / NIGHT) == tree(src / NIGHT)
    assert_done_with_results(tokens(db, NIGHT)[exp], entry["files"])


@pytest.mark.slow
def test_adler32_manifest_night_transfers_and_records_adler32(
    db: Database, tmp_path: Path, remote: Remote
) -> None:
    info = make_night(
        remote.path, NIGHT, exposures=2, files_per_exposure=2, size=50_000, algo="adler32"
    )
    dst = tmp_path / "dst"
    report = create(
        db.config_file,
        NIGHT,
        "--source",
        remote.url,
        "--dest",
        file_url(dst),
        "--manifest",
        "adler32",
    )
    assert report["manifest_problems"] == {}
    work(db.config_file, NIGHT)
    assert tree(dst / NIGHT) == tree(remote.path / NIGHT)
    for exp, doc in tokens(db, NIGHT).items():
        assert doc["state"] == "done", doc["error"]
        assert doc["manifest"]["algo"] == "adler32"
        by_name = {f["name"]: f for f in doc["files"]}
        assert manifest_name(exp, "adler32") in by_name
        for name, want in info["exposures"][exp]["files"].items():
            assert by_name[name]["checksums"] == {"adler32": want["adler32"]}
            assert by_name[name]["result"]["adler32"] == want["adler32"]
            assert by_name[name]["result"]["bytes"] == want["size"]


@pytest.mark.slow
def test_adler32_manifest_catches_a_corrupted_byte_with_error_30(
    db: Database, tmp_path: Path, remote: Remote
) -> None:
    src = tmp_path / "src"
    info = make_night(
        src,
        NIGHT,
        exposures=1,
        files_per_exposure=2,
        size=50_000,
        algo="adler32",
        corrupt={"00001000"},
    )
    create(
        db.config_file,
        NIGHT,
        "--source",
        file_url(src),
        "--dest",
        remote.url,
        "--manifest",
        "adler32",
    )
    work(db.config_file, NIGHT)
    bad = info["exposures"]["00001000"]["corrupted"][0]
    assert_error(tokens(db, NIGHT)["00001000"], Code.CHECKSUM_MISMATCH, bad)
    assert not (remote.path / NIGHT / "00001000" / bad).exists()
    assert part_files(remote.path) == []


@pytest.mark.slow
def test_verify_destination_reads_back_the_copy_and_still_catches_corruption(
    db: Database, tmp_path: Path, remote: Remote
) -> None:
    src = tmp_path / "src"
    info = make_night(
        src, NIGHT, exposures=2, files_per_exposure=2, size=30_000, corrupt={"00001001"}
    )
    cfg = db.write_config(transfer={"verify": "destination"})
    create(cfg, NIGHT, "--source", file_url(src), "--dest", remote.url)
    work(cfg, NIGHT)
    docs = tokens(db, NIGHT)
    assert_done_with_results(docs["00001000"], info["exposures"]["00001000"]["files"])
    assert tree(remote.path / NIGHT / "00001000") == tree(src / NIGHT / "00001000")
    bad = info["exposures"]["00001001"]["corrupted"][0]
    assert_error(docs["00001001"], Code.CHECKSUM_MISMATCH, bad)
    assert not (remote.path / NIGHT / "00001001" / bad).exists()
    assert part_files(remote.path) == []


# ----------------------------------------------------------------------------- interruptions


@dataclass(frozen=True)
class BigFile:
    path: Path
    size: int
    sha256: str


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> BigFile:
    """300 MiB of incompressible data, written once: a copy that takes a while."""
    path = tmp_path_factory.mktemp("bigfile") / "big.fits"
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        for i in range(300):
            chunk = i.to_bytes(8, "big") + block[8:]
            fh.write(chunk)
            digest.update(chunk)
    return BigFile(path, 300 * MiB, digest.hexdigest())


def big_night(src: Path, big: BigFile, exposure: str = "big") -> Path:
    """A night with one exposure holding the big file (hard-linked) and its manifest."""
    exp = src / NIGHT / exposure
    exp.mkdir(parents=True)
    os.link(big.path, exp / "big.fits")
    (exp / manifest_name(exposure)).write_text(f"{big.sha256}  big.fits\n")
    return exp


def copying(dest_dir: Path) -> bool:
    """A temporary copy has started arriving."""
    for part in part_files(dest_dir):
        try:
            if os.stat(part).st_size > 0:
                return True
        except FileNotFoundError:  # renamed or removed meanwhile
            pass
    return False


@pytest.mark.slow
def test_sigkilled_worker_leaves_no_final_file_and_reaped_token_completes(
    db: Database, tmp_path: Path, remote: Remote, big_file: BigFile
) -> None:
    big_night(tmp_path / "src", big_file)
    cfg = db.write_config(worker={"lease_seconds": 3})
    create(cfg, NIGHT, "--source", file_url(tmp_path / "src"), "--dest", remote.url)
    final = remote.path / NIGHT / "big" / "big.fits"

    w = spawn_worker(cfg, "--night", NIGHT, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: copying(remote.path), every=0.02)
        assert not final.exists()
        os.kill(w.pid, signal.SIGKILL)
        w.wait(timeout=30)
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    assert not final.exists()
    doc = db.pool().get(f"{NIGHT}_big")
    assert doc["state"] == "locked" and doc["attempts"] == 1

    grace = PoolSettings(lease=3).grace  # the reaper leaves clocks this much slack
    wait_for(
        lambda: db.pool().get(f"{NIGHT}_big")["lease_expires"] + grace < time.time(),
        timeout=30,
        every=0.2,
    )
    reaped = gridxfer("tokens", "reap", "--json", config=cfg, check=True)
    assert json.loads(reaped.stdout)["reaped"] == [f"{NIGHT}_big"]
    doc = db.pool().get(f"{NIGHT}_big")
    assert doc["state"] == "todo" and doc["error"]["code"] == Code.LEASE_EXPIRED

    work(cfg, NIGHT)
    doc = db.pool().get(f"{NIGHT}_big")
    assert doc["state"] == "done" and doc["attempts"] == 2, doc.get("error")
    assert final.stat().st_size == big_file.size
    with open(final, "rb") as fh:
        assert hashlib.file_digest(fh, "sha256").hexdigest() == big_file.sha256
    result = next(f["result"] for f in doc["files"] if f["name"] == "big.fits")
    assert result["status"] == "copied" and result["sha256"] == big_file.sha256
    # The killed worker's partial copy is gone too, not left to pile up.
    assert part_files(remote.path) == []
    assert "left by an earlier attempt" in attachment(db, doc, attempt=2)


@pytest.mark.slow
def test_sigterm_mid_copy_releases_token_uncounted_and_leaves_no_final_file(
    db: Database, tmp_path: Path, remote: Remote, big_file: BigFile
) -> None:
    big_night(tmp_path / "src", big_file)
    cfg = db.write_config(worker={"lease_seconds": 60})
    create(cfg, NIGHT, "--source", file_url(tmp_path / "src"), "--dest", remote.url)
    final = remote.path / NIGHT / "big" / "big.fits"

    w = spawn_worker(cfg, "--night", NIGHT)
    try:
        wait_for(lambda: copying(remote.path), every=0.02)
        t0 = time.monotonic()
        w.send_signal(signal.SIGTERM)
        _, err = w.communicate(timeout=60)
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    assert w.returncode == 128 + signal.SIGTERM, err
    assert time.monotonic() - t0 < 30  # the copy was stopped, not waited for
    assert not final.exists()
    assert part_files(remote.path) == []
    doc = db.pool().get(f"{NIGHT}_big")
    assert doc["state"] == "todo" and doc["attempts"] == 0 and doc["lock"] == 0
    assert doc["output"] == 0 and doc["error"] == []
    assert doc["history"][-1]["event"] == "released"


# ----------------------------------------------------------------------------- integrity


def sha256_of(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@pytest.mark.slow
def test_source_rewritten_while_destination_stalls_never_ends_done_with_other_bytes(
    db: Database, tmp_path: Path, own_xrootd: XRootDServer, big_file: BigFile
) -> None:
    """The manifest's SHA-256 and the bytes sent come from one read of the source.

    The destination server is paused (SIGSTOP) once the copy reaches it; the
    source's tail is then rewritten and the server resumed. A SHA-256 taken in a
    separate read has by then seen the old bytes while the copy sends the new
    ones; one read sees what it sends, so the copy fails its check (30) and the
    final name never appears.
    """
    src = tmp_path / "src"
    exp = src / NIGHT / "big"
    exp.mkdir(parents=True)
    data = exp / "big.fits"
    shutil.copyfile(big_file.path, data)  # rewritten below: not the session's file
    (exp / manifest_name("big")).write_text(f"{big_file.sha256}  big.fits\n")
    dest = own_xrootd.datadir / "dest"
    cfg = db.write_config(worker={"lease_seconds": 60})
    create(cfg, NIGHT, "--source", file_url(src), "--dest", own_xrootd.url_for("dest"))

    w = spawn_worker(cfg, "--night", NIGHT, "--idle-exit")
    try:
        wait_for(lambda: part_files(dest), every=0.005, what="the copy to start")
        own_xrootd.pause()
        try:
            time.sleep(1.0)  # a separate SHA-256 read of the local source is long done
            with open(data, "r+b") as fh:
                fh.seek(big_file.size - MiB)
                fh.write(os.urandom(MiB))
        finally:
            own_xrootd.resume()
        _, err = w.communicate(timeout=300)
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    doc = db.pool().get(f"{NIGHT}_big")
    final = dest / NIGHT / "big" / "big.fits"
    if doc["state"] == "done":  # only ever with the manifest's bytes
        assert sha256_of(final) == big_file.sha256
    assert doc["state"] == "error", (doc["state"], err[-2000:])
    assert doc["error"]["code"] == Code.CHECKSUM_MISMATCH and doc["error"]["file"] == "big.fits"
    assert "read from the source" in doc["error"]["message"]
    assert not final.exists()
    assert part_files(dest) == []


@pytest.mark.slow
def test_sigterm_while_the_destination_stalls_stops_the_worker_and_releases_the_token(
    db: Database, tmp_path: Path, own_xrootd: XRootDServer, big_file: BigFile
) -> None:
    """A streamed copy never blocks the worker inside gfal2: a paused server cannot
    hold a warm shutdown for XrdCl's request timeout."""
    big_night(tmp_path / "src", big_file)
    dest = own_xrootd.datadir / "dest"
    cfg = db.write_config(worker={"lease_seconds": 60})
    create(cfg, NIGHT, "--source", file_url(tmp_path / "src"), "--dest", own_xrootd.url_for("dest"))
    w = spawn_worker(cfg, "--night", NIGHT)
    try:
        wait_for(lambda: part_files(dest), every=0.005, what="the copy to start")
        own_xrootd.pause()
        t0 = time.monotonic()
        w.send_signal(signal.SIGTERM)
        _, err = w.communicate(timeout=120)
        took = time.monotonic() - t0
    finally:
        own_xrootd.resume()
        if w.poll() is None:
            w.kill()
            w.wait()
    assert w.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert took < 60, took  # XrdCl would have waited its request timeout (300 s here)
    doc = db.pool().get(f"{NIGHT}_big")
    assert doc["state"] == "todo" and doc["attempts"] == 0, doc.get("error")
    assert doc["history"][-1]["event"] == "released"
    assert not (dest / NIGHT / "big" / "big.fits").exists()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["immutable directory", "file in the way"])
def test_unwritable_file_destination_is_error_40_like_root(
    db: Database, tmp_path: Path, how: str
) -> None:
    """Which end failed is known when the worker writes the stream itself: a
    destination that cannot be written is 40 on every protocol, not 21."""
    src = tmp_path / "src"
    write_exposure(src / NIGHT / "00000001", {"a.fits": b"x" * 1000})
    dest = tmp_path / "dest"
    dest.mkdir()
    if how == "file in the way":
        (dest / NIGHT).write_text("not a directory")
    cfg = db.write_config()
    create(cfg, NIGHT, "--source", file_url(src), "--dest", file_url(dest))
    if how == "immutable directory":  # refuses even root (EPERM)
        subprocess.run(["chattr", "+i", str(dest)], check=True)
    try:
        work(cfg, NIGHT)
    finally:
        if how == "immutable directory":
            subprocess.run(["chattr", "-i", str(dest)], check=True)
    doc = tokens(db, NIGHT)["00000001"]
    assert_error(doc, Code.DEST_WRITE_FAILED, "a.fits")


# ----------------------------------------------------------------------------- properties

_NAMES = st.text(alphabet="abcxyz019_-. ", min_size=1, max_size=8).filter(
    lambda n: n.strip(" .") == n and n not in (".", "..") and not n.startswith("checksum-")
)
_FILES = st.dictionaries(
    st.one_of(_NAMES, st.builds(lambda d, n: f"{d}/{n}", _NAMES, _NAMES)),
    st.binary(min_size=0, max_size=3000),
    min_size=1,
    max_size=4,
).filter(lambda files: not any(a != b and b.startswith(a + "/") for a in files for b in files))
_CHANGES = st.lists(
    st.tuples(
        st.sampled_from(["flip", "append", "truncate", "delete", "extra", "rewrite"]),
        st.integers(0, 10**6),
    ),
    max_size=2,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(files=_FILES, changes=_CHANGES, big=st.booleans())
def test_any_exposure_changed_after_create_never_ends_done_with_other_bytes(
    files: dict[str, bytes], changes: list[tuple[str, int]], big: bool
) -> None:
    """Random exposures, changed at the source after their token was made: the task
    either fails with a code, or every file under a final name holds exactly the
    bytes its manifest names, and no temporary file is left."""
    if big:  # crosses the 4 MiB chunk boundary of the streamed copy
        files = {**files, "big.fits": os.urandom(4 * MiB + 3)}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "dst"
        exp = src / NIGHT / "e1"
        write_exposure(exp, files)
        storage = Storage()
        (spec,) = scan_night(storage, file_url(src), NIGHT, destination=file_url(dst)).specs
        token = tk.new_token(NIGHT, spec)
        names = sorted(files)
        for kind, n in changes:
            name = names[n % len(names)]
            path = exp / name
            if not path.exists():
                continue
            if kind == "flip" and path.stat().st_size:
                flip_byte(path, n % path.stat().st_size)
            elif kind == "append":
                with open(path, "ab") as fh:
                    fh.write(b"late")
            elif kind == "truncate":
                os.truncate(path, path.stat().st_size // 2)
            elif kind == "delete":
                path.unlink()
            elif kind == "extra":
                (exp / f"extra{n}").write_bytes(b"x")
            elif kind == "rewrite":  # a consistent new content and manifest
                path.write_bytes(b"new" + path.read_bytes())
                write_manifest(
                    exp, {m: (exp / m).read_bytes() for m in names if (exp / m).exists()}
                )
        ctx = TaskContext(log=logging.getLogger("test.property"), cancelled=threading.Event())
        try:
            TransferTask(storage).run(token, ctx)
            finished = True
        except TaskError as err:
            finished = False
            assert err.code in (
                Code.CHECKSUM_MISMATCH,
                Code.MISSING_AT_SOURCE,
                Code.NOT_IN_MANIFEST,
                Code.MANIFEST_MISSING,
                Code.TRANSFER_FAILED,
            ), err
        out = dst / NIGHT / "e1"
        landed = (
            {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
            if out.exists()
            else set()
        )
        assert not [n for n in landed if PART in n]
        manifest = (exp / manifest_name("e1")).read_text()
        listed = dict(reversed(line.split("  ", 1)) for line in manifest.splitlines() if line)
        listed = {n: h for n, h in listed.items()}
        for name in landed - {manifest_name("e1")}:
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == listed[name], name
        if finished:
            assert landed == set(listed) | {manifest_name("e1")}
