"""Nights over the grid endpoints, as users run them: `tokens create` then `worker`.

Real servers only, started by the project's scripts: two XRootD servers speaking
root:// and davs:// (TLS with a CA made for the session, HTTP third-party copy),
a private sshd for sftp://, moto's S3 server for s3://.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from GRID_XFER.config import StorageConfig
from GRID_XFER.storage import Storage
from GRID_XFER.storage.protocols import settings_from
from tests.conftest import Database, cli_env, gridxfer
from tests.nightgen import flip_byte, make_night, tree
from tests.plugins.grid import DavsPair, S3Server, SftpServer
from tests.plugins.xrootd import XRootDServer

NIGHT = "20261201"
MiB = 1024 * 1024
PART = ".gridxfer-part-"


def unique(label: str) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', label)[:40]}-{time.monotonic_ns()}"


def configure(db: Database, storage: dict[str, Any], **transfer: Any) -> Path:
    return (
        db.write_config(storage=storage, transfer=transfer)
        if transfer
        else db.write_config(storage=storage)
    )


def night(
    db: Database, src: str, dst: str, *, extra: dict[str, str] | None = None, ok: bool = True
) -> None:
    """`tokens create` then one worker to the end; ``ok``: the worker must exit 0."""
    env = cli_env(db.config_file, **(extra or {}))
    created = gridxfer(
        "tokens",
        "create",
        NIGHT,
        "--source",
        src,
        "--dest",
        dst,
        "--json",
        config=db.config_file,
        check=True,
        env=env,
    )
    assert json.loads(created.stdout)["manifest_problems"] == {}
    gridxfer(
        "worker",
        "--night",
        NIGHT,
        "--idle-exit",
        config=db.config_file,
        check=ok,
        timeout=300,
        env=env,
    )


def docs(db: Database) -> dict[str, dict[str, Any]]:
    return {d["exposure"]: d for d in db.pool().select(NIGHT)}


def results(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [f["result"] for f in doc["files"]]


def worker_log(db: Database, doc: dict[str, Any]) -> str:
    return db.couch.get_attachment(doc["_id"], f"worker-{doc['attempts']}.log").decode()


def stage_on(server: XRootDServer, label: str, src: Path) -> str:
    """Copy a local night into the server's export (owned by its user); the base path."""
    base = unique(label)
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        server.put(f"{base}/{path.relative_to(src)}", path.read_bytes())
    return base


# ----------------------------------------------------------------------------- davs


@pytest.mark.slow
def test_night_file_to_davs_arrives_byte_identical_and_davs_back_to_file(
    db: Database, davs_pair: DavsPair, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_night(src, NIGHT, exposures=2, files_per_exposure=2, size=3 * MiB + 5)
    configure(db, davs_pair.storage_config())
    base = unique("up")
    night(db, f"file://{src}", davs_pair.a.davs_for(base))
    assert tree(davs_pair.a.path(base) / NIGHT) == tree(src / NIGHT)
    for doc in docs(db).values():
        assert doc["state"] == "done", doc.get("error")
        assert all(r["status"] == "copied" and not r.get("third_party") for r in results(doc))

    # ... and a night read over davs (listed by WebDAV PROPFIND) comes back intact.
    gridxfer("tokens", "delete", NIGHT, "--yes", config=db.config_file, check=True)
    back = tmp_path / "back"
    night(db, davs_pair.a.davs_for(base), f"file://{back}")
    assert tree(back / NIGHT) == tree(src / NIGHT)
    assert {d["state"] for d in docs(db).values()} == {"done"}


@pytest.mark.slow
def test_davs_to_davs_is_a_third_party_copy_read_back_for_the_manifest_sha256(
    db: Database, davs_pair: DavsPair, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    info = make_night(src, NIGHT, exposures=2, files_per_exposure=2, size=2 * MiB + 1)
    base = stage_on(davs_pair.a, "tpc-src", src)
    dest = unique("tpc-dst")
    configure(db, davs_pair.storage_config())
    night(db, davs_pair.a.davs_for(base), davs_pair.b.davs_for(dest))

    assert tree(davs_pair.b.path(dest) / NIGHT) == tree(src / NIGHT)
    for exp, doc in docs(db).items():
        assert doc["state"] == "done", doc.get("error")
        for f in doc["files"]:
            assert f["result"]["third_party"] is True
            if f.get("role") != "manifest":
                want = info["exposures"][exp]["files"][f["name"]]["sha256"]
                assert f["result"]["sha256"] == want  # read back at the destination
        assert "(third-party)" in worker_log(db, doc)
    # The destination server pulled every file itself (WebDAV COPY), none came through us.
    pulled = re.findall(
        r"TPC_PullRequest: event=TRANSFER_SUCCESS, local=/"
        + re.escape(dest)
        + r"/(\S+?)"
        + re.escape(PART),
        davs_pair.b.log(),
    )
    sent = [f"{NIGHT}/{exp}/{f['name']}" for exp, doc in docs(db).items() for f in doc["files"]]
    assert sorted(pulled) == sorted(sent)


@pytest.mark.slow
def test_third_party_copy_of_a_source_changed_after_create_is_error_30_and_nothing_lands(
    db: Database, davs_pair: DavsPair, tmp_path: Path
) -> None:
    """The data never passes the worker, yet the manifest's SHA-256 is still proved."""
    src = tmp_path / "src"
    info = make_night(src, NIGHT, exposures=1, files_per_exposure=2, size=MiB)
    base = stage_on(davs_pair.a, "tpc-bad", src)
    (exp,) = info["exposures"]
    victim = sorted(info["exposures"][exp]["files"])[0]
    flip_byte(davs_pair.a.path(f"{base}/{NIGHT}/{exp}/{victim}"))
    dest = unique("tpc-bad-dst")
    configure(db, davs_pair.storage_config())
    night(db, davs_pair.a.davs_for(base), davs_pair.b.davs_for(dest), ok=False)
    (doc,) = docs(db).values()
    assert doc["state"] == "error" and doc["output"] == 30, doc.get("error")
    assert doc["error"]["file"] == victim
    assert "read back at the destination" in doc["error"]["message"]
    landed = davs_pair.b.path(f"{dest}/{NIGHT}/{exp}")
    assert not (landed / victim).exists()
    assert not [p for p in landed.rglob("*") if PART in p.name] if landed.exists() else True


@pytest.mark.slow
def test_third_party_never_streams_davs_to_davs_through_the_worker(
    db: Database, davs_pair: DavsPair, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_night(src, NIGHT, exposures=1, files_per_exposure=2, size=MiB)
    base = stage_on(davs_pair.a, "never-src", src)
    dest = unique("never-dst")
    configure(db, davs_pair.storage_config(), third_party="never")
    night(db, davs_pair.a.davs_for(base), davs_pair.b.davs_for(dest))
    assert tree(davs_pair.b.path(dest) / NIGHT) == tree(src / NIGHT)
    (doc,) = docs(db).values()
    assert all(not r.get("third_party") for r in results(doc))


@pytest.mark.slow
def test_davs_without_the_ca_fails_naming_the_untrusted_certificate(
    db: Database, davs_pair: DavsPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("X509_CERT_DIR", raising=False)
    src = tmp_path / "src"
    make_night(src, NIGHT, exposures=1, files_per_exposure=1, size=1000)
    configure(db, {"gfal2": {"HTTP PLUGIN:RETRIEVE_BEARER_TOKEN": False}})
    night(db, f"file://{src}", davs_pair.a.davs_for(unique("noca")), ok=False)
    (doc,) = docs(db).values()
    assert (doc["state"], doc["output"]) == ("error", 1), doc["error"]  # no retry mends it
    assert "not trusted" in doc["error"]["message"], doc["error"]


# ----------------------------------------------------------------------------- root TPC


@pytest.mark.slow
def test_root_to_root_is_a_third_party_copy(
    db: Database, davs_pair: DavsPair, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_night(src, NIGHT, exposures=1, files_per_exposure=2, size=2 * MiB)
    base = stage_on(davs_pair.a, "rtpc-src", src)
    dest = unique("rtpc-dst")
    configure(db, davs_pair.storage_config())
    night(db, davs_pair.a.url_for(base), davs_pair.b.url_for(dest))
    assert tree(davs_pair.b.path(dest) / NIGHT) == tree(src / NIGHT)
    (doc,) = docs(db).values()
    assert doc["state"] == "done", doc.get("error")
    assert all(r["third_party"] is True for r in results(doc))
    assert re.search(r"granted tpc access .* to /" + re.escape(base), davs_pair.a.log())


# ----------------------------------------------------------------------------- sftp


@pytest.mark.slow
def test_night_file_to_sftp_is_not_truncated_and_verified_by_reading_back(
    db: Database, sftp_server: SftpServer, tmp_path: Path
) -> None:
    """gfal2's sftp plugin keeps only part of a large write and says it wrote it all;
    a 9 MiB file crosses that, and the plugin computes no checksum at all."""
    src = tmp_path / "src"
    make_night(src, NIGHT, exposures=2, files_per_exposure=2, size=9 * MiB + 3)
    configure(db, sftp_server.storage_config())
    base = unique("sftp")
    night(db, f"file://{src}", sftp_server.url_for(base))
    assert tree(sftp_server.datadir / base / NIGHT) == tree(src / NIGHT)
    for doc in docs(db).values():
        assert doc["state"] == "done", doc.get("error")
        assert "verifying by reading the destination" in worker_log(db, doc)


@pytest.mark.slow
def test_sftp_with_a_key_the_server_does_not_know_is_error_1_at_once(
    db: Database, sftp_server: SftpServer, tmp_path: Path
) -> None:
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    src = tmp_path / "src"
    make_night(src, NIGHT, exposures=1, files_per_exposure=1, size=1000)
    configure(db, {"sftp": {"user": sftp_server.user, "private_key": str(key)}})
    night(db, f"file://{src}", sftp_server.url_for(unique("stranger")), ok=False)
    (doc,) = docs(db).values()
    assert (doc["state"], doc["output"], doc["attempts"]) == ("error", 1, 1), doc["error"]
    assert "authentication methods failed" in doc["error"]["message"]


@pytest.mark.slow
def test_sftp_source_to_file(db: Database, sftp_server: SftpServer, tmp_path: Path) -> None:
    base = unique("sftp-src")
    make_night(sftp_server.datadir / base, NIGHT, exposures=1, files_per_exposure=2, size=MiB)
    configure(db, sftp_server.storage_config())
    out = tmp_path / "out"
    night(db, sftp_server.url_for(base), f"file://{out}")
    assert tree(out / NIGHT) == tree(sftp_server.datadir / base / NIGHT)


# ----------------------------------------------------------------------------- s3


@pytest.mark.slow
def test_night_file_to_s3_read_back_equal_and_the_secret_key_stays_out_of_tokens(
    db: Database, s3_server: S3Server, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_night(src, NIGHT, exposures=1, files_per_exposure=3, size=2 * MiB + 9)
    configure(db, s3_server.storage_config())
    base = unique("s3")
    night(db, f"file://{src}", s3_server.url_for(base), extra=s3_server.env())
    (doc,) = docs(db).values()
    assert doc["state"] == "done", doc.get("error")
    # Read every object back with the same settings and compare with the source.
    cfg = StorageConfig.model_validate(s3_server.storage_config())
    storage = Storage(settings=settings_from(cfg, s3_server.env()))
    for path in (p for p in (src / NIGHT).rglob("*") if p.is_file()):
        url = s3_server.url_for(f"{base}/{path.relative_to(src)}")
        got = hashlib.sha256(b"".join(storage.open_read(url))).hexdigest()
        assert got == hashlib.sha256(path.read_bytes()).hexdigest(), url
    raw = json.dumps(db.couch.get(doc["_id"])) + worker_log(db, doc)
    assert s3_server.env()["GRIDXFER_S3_SECRET_KEY"] not in raw
    assert "verifying by reading the destination" in worker_log(db, doc)


@pytest.mark.slow
def test_night_read_from_s3_listed_and_copied_to_file(
    db: Database, s3_server: S3Server, tmp_path: Path
) -> None:
    """An S3 prefix listed as a night (path-style listing), its objects read back intact."""
    src = tmp_path / "src"
    make_night(src, NIGHT, exposures=2, files_per_exposure=2, size=MiB + 1)
    cfg = StorageConfig.model_validate(s3_server.storage_config())
    storage = Storage(settings=settings_from(cfg, s3_server.env()))
    base = unique("s3-src")
    for path in (p for p in src.rglob("*") if p.is_file()):
        storage.stream(f"file://{path}", s3_server.url_for(f"{base}/{path.relative_to(src)}"), len)
    configure(db, s3_server.storage_config())
    out = tmp_path / "out"
    night(db, s3_server.url_for(base), f"file://{out}", extra=s3_server.env())
    assert tree(out / NIGHT) == tree(src / NIGHT)
    assert {d["state"] for d in docs(db).values()} == {"done"}
