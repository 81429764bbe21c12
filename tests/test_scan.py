"""`gridxfer tokens create` from a source: night scans, catch-up, SURL lists, templates.

The real CLI against a real pouchdb-server, with sources on the local disk
(file://) and on a real XRootD server (root://).
"""

from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path

import pytest

from tests.conftest import REPO, Database, gridxfer
from tests.nightgen import make_night, manifest_name, tree, write_exposure, write_manifest
from tests.plugins.xrootd import XRootDServer
from tests.test_transfer import Remote, create, file_url, remote_dir, tokens, work

pytestmark = pytest.mark.slow  # starts servers or runs the CLI

NIGHT = "20261127"


@pytest.fixture
def remote(request: pytest.FixtureRequest, xrootd: XRootDServer) -> Remote:
    return remote_dir(xrootd, request.node.name)


# ----------------------------------------------------------------------------- night scans


def test_create_makes_one_token_per_exposure_with_sizes_and_manifest_checksums(
    db: Database, tmp_path: Path
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    info = make_night(src, NIGHT, exposures=3, files_per_exposure=2, size=1000)
    write_exposure(
        src / NIGHT / "00001000" / "extra-dir", {"nested.fits": b"n" * 10}, manifest=False
    )
    write_manifest(
        src / NIGHT / "00001000",
        {
            **{
                n: (src / NIGHT / "00001000" / n).read_bytes()
                for n in info["exposures"]["00001000"]["files"]
            },
            "extra-dir/nested.fits": b"n" * 10,
        },
    )
    (src / NIGHT / "README.txt").write_text("not an exposure")
    (src / NIGHT / "bad name").mkdir()

    proc = gridxfer(
        "tokens",
        "create",
        NIGHT,
        "--source",
        file_url(src),
        "--dest",
        file_url(dst),
        "--json",
        config=db.config_file,
        check=True,
    )
    report = json.loads(proc.stdout)
    assert report["created"] == 3 and report["manifest_problems"] == {}
    assert "bad name" in proc.stderr and "README.txt" in proc.stderr  # said, not silently dropped

    docs = tokens(db, NIGHT)
    assert sorted(d["_id"] for d in docs.values()) == [f"{NIGHT}_{e}" for e in info["exposures"]]
    for exp, doc in docs.items():
        assert doc["state"] == "todo" and doc["token_set"] == NIGHT
        assert doc["source"] == f"{file_url(src)}/{NIGHT}/{exp}"
        assert doc["destination"] == f"{file_url(dst)}/{NIGHT}/{exp}"
        assert doc["manifest"] == {"name": manifest_name(exp), "algo": "sha256"}
        by_name = {f["name"]: f for f in doc["files"]}
        for name, want in info["exposures"][exp]["files"].items():
            assert by_name[name]["size"] == want["size"]
            assert by_name[name]["checksums"] == {"sha256": want["sha256"]}
        assert by_name[manifest_name(exp)]["role"] == "manifest"
        assert doc["bytes_total"] == sum(f["size"] for f in doc["files"])
    assert "extra-dir/nested.fits" in {f["name"] for f in docs["00001000"]["files"]}

    again = create(db.config_file, NIGHT, "--source", file_url(src), "--dest", file_url(dst))
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 3)


def test_create_scans_a_root_source_like_a_local_one(
    db: Database, tmp_path: Path, remote: Remote
) -> None:
    info = make_night(remote.path, NIGHT, exposures=2, files_per_exposure=2, size=500)
    create(db.config_file, NIGHT, "--source", remote.url, "--dest", file_url(tmp_path / "dst"))
    docs = tokens(db, NIGHT)
    assert set(docs) == set(info["exposures"])
    for exp, doc in docs.items():
        assert {f["name"] for f in doc["files"]} == set(info["exposures"][exp]["files"]) | {
            manifest_name(exp)
        }


def test_create_for_a_night_absent_at_the_source_exits_5(db: Database, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    proc = gridxfer(
        "tokens",
        "create",
        NIGHT,
        "--source",
        file_url(tmp_path / "src"),
        "--dest",
        file_url(tmp_path / "dst"),
        config=db.config_file,
    )
    assert proc.returncode == 5, proc.stderr
    assert NIGHT in proc.stderr and "does not exist" in proc.stderr


def test_create_without_destination_exits_3(db: Database, tmp_path: Path) -> None:
    make_night(tmp_path / "src", NIGHT, exposures=1)
    proc = gridxfer(
        "tokens", "create", NIGHT, "--source", file_url(tmp_path / "src"), config=db.config_file
    )
    assert proc.returncode == 3 and "destination" in proc.stderr


# ----------------------------------------------------------------------------- catch-up


def test_second_create_catches_up_late_files_new_exposures_and_fixed_manifests(
    db: Database, tmp_path: Path
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    night = src / NIGHT
    args = ("--source", file_url(src), "--dest", file_url(dst))
    cfg = db.config_file

    def content(exp: str, n: int) -> bytes:
        return f"{exp}:{n}".encode() * 2000

    write_exposure(night / "done1", {"a.fits": content("done1", 0)})
    write_exposure(night / "fixme", {"a.fits": content("fixme", 0)})
    (night / "fixme" / "b.fits").write_bytes(content("fixme", 1))  # not in its manifest
    assert create(cfg, NIGHT, *args)["created"] == 2
    work(cfg, NIGHT)
    docs = tokens(db, NIGHT)
    assert docs["done1"]["state"] == "done"
    assert docs["fixme"]["state"] == "error" and docs["fixme"]["output"] == 33
    done_rev = docs["done1"]["_rev"]

    # An exposure still being written: one file so far.
    write_exposure(night / "todo1", {"a.fits": content("todo1", 0)})
    second = create(cfg, NIGHT, *args)
    assert (second["created"], second["updated"], second["unchanged"]) == (1, 0, 2)

    # Later: todo1's second file, fixme's manifest repaired, a new exposure, and a
    # late file for the exposure that is already done.
    write_exposure(night / "todo1", {"a.fits": content("todo1", 0), "b.fits": content("todo1", 1)})
    write_manifest(night / "fixme", {"a.fits": content("fixme", 0), "b.fits": content("fixme", 1)})
    write_exposure(night / "late", {"a.fits": content("late", 0)})
    write_exposure(night / "done1", {"a.fits": content("done1", 0), "z.fits": content("done1", 9)})
    third = create(cfg, NIGHT, *args)
    assert (third["created"], third["updated"], third["skipped"]) == (1, 2, 1), third

    docs = tokens(db, NIGHT)
    assert docs["late"]["state"] == "todo"
    todo1 = docs["todo1"]
    assert todo1["state"] == "todo" and todo1["attempts"] == 0
    assert {f["name"] for f in todo1["files"]} >= {"a.fits", "b.fits"}
    fixme = docs["fixme"]
    assert fixme["state"] == "todo" and fixme["attempts"] == 0 and fixme["output"] == 0
    assert fixme["error"] == [] and fixme["scrub_count"] == 1
    assert [h["event"] for h in fixme["history"][-2:]] == ["reset", "updated"]
    assert docs["done1"]["_rev"] == done_rev  # finished work is never rewritten

    work(cfg, NIGHT)
    docs = tokens(db, NIGHT)
    assert {e: d["state"] for e, d in docs.items()} == dict.fromkeys(docs, "done")
    assert docs["done1"]["_rev"] == done_rev
    for exp in ("todo1", "fixme", "late"):
        assert tree(dst / NIGHT / exp) == tree(night / exp)


def test_late_file_in_a_done_exposure_arrives_after_reset_and_updates_the_manifest(
    db: Database, tmp_path: Path, remote: Remote
) -> None:
    src = tmp_path / "src"
    exp = src / NIGHT / "e1"
    args = ("--source", file_url(src), "--dest", remote.url)
    write_exposure(exp, {"a.fits": b"a" * 5000})
    create(db.config_file, NIGHT, *args)
    work(db.config_file, NIGHT)
    done = tokens(db, NIGHT)["e1"]
    assert done["state"] == "done"

    write_exposure(exp, {"a.fits": b"a" * 5000, "z.fits": b"z" * 700})
    left = create(db.config_file, NIGHT, *args)
    assert (left["skipped"], left["updated"]) == (1, 0)  # done: left alone...
    assert left["outdated"] == 1  # ...but reported as outdated
    assert tokens(db, NIGHT)["e1"]["_rev"] == done["_rev"]
    gridxfer("tokens", "reset", NIGHT, "--state", "done", config=db.config_file, check=True)
    assert create(db.config_file, NIGHT, *args)["updated"] == 1  # ...until the user resets it
    work(db.config_file, NIGHT)

    doc = tokens(db, NIGHT)["e1"]
    assert doc["state"] == "done", doc["error"]
    assert tree(remote.path / NIGHT / "e1") == tree(exp)  # new manifest included
    status = {f["name"]: f["result"]["status"] for f in doc["files"]}
    assert status == {"a.fits": "skipped", "z.fits": "copied", manifest_name("e1"): "copied"}


# ----------------------------------------------------------------------------- SURL lists


@pytest.fixture
def surls(xrootd: XRootDServer, remote: Remote, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """Five files on XRootD and a list of their root:// URLs (with a comment and a blank line)."""
    data = {f"L123456_SB{i:03d}_uv.MS.tar": bytes([i]) * (10_000 + i) for i in range(5)}
    for name, content in data.items():
        xrootd.put(f"{remote.path.name}/raw/{name}", content)
    listing = tmp_path / "srm.txt"
    listing.write_text(
        "# LOFAR L123456\n\n"
        + "".join(f"{xrootd.url_for(f'{remote.path.name}/raw/{n}')}\n" for n in data)
    )
    return listing, data


def test_surl_list_groups_files_per_token_with_adler32_from_the_storage(
    db: Database, tmp_path: Path, surls: tuple[Path, dict[str, bytes]]
) -> None:
    listing, data = surls
    report = create(
        db.config_file,
        "L123456",
        "--surls",
        str(listing),
        "--group",
        "2",
        "--dest",
        file_url(tmp_path / "dst"),
    )
    assert report["created"] == math.ceil(len(data) / 2) == 3
    docs = tokens(db, "L123456")
    assert [re.sub(r"-[0-9a-f]{8}$", "", e) for e in sorted(docs)] == [
        "chunk00000",
        "chunk00001",
        "chunk00002",
    ]
    again = create(
        db.config_file,
        "L123456",
        "--surls",
        str(listing),
        "--group",
        "2",
        "--dest",
        file_url(tmp_path / "dst"),
    )
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 3)
    seen = []
    for exp in sorted(docs):
        doc = docs[exp]
        assert doc["destination"] == f"{file_url(tmp_path / 'dst')}/L123456"
        assert doc["manifest"] is None and doc["source"] is None
        for f in doc["files"]:
            content = data[f["name"]]
            assert f["url"].endswith("/raw/" + f["name"]) and f["url"].startswith("root://")
            assert f["size"] == len(content)
            assert f["checksums"] == {"adler32": f"{zlib.adler32(content):08x}"}
            seen.append(f["name"])
    assert seen == list(data)  # list order kept, each file in exactly one token
    assert [len(docs[e]["files"]) for e in sorted(docs)] == [2, 2, 1]


def test_surl_list_tokens_are_moved_to_the_destination_by_a_worker(
    db: Database, tmp_path: Path, surls: tuple[Path, dict[str, bytes]]
) -> None:
    listing, data = surls
    dst = tmp_path / "dst"
    create(
        db.config_file, "L123456", "--surls", str(listing), "--group", "2", "--dest", file_url(dst)
    )
    work(db.config_file, "L123456")
    assert tree(dst / "L123456") == data
    for doc in tokens(db, "L123456").values():
        assert doc["state"] == "done" and doc["output"] == 0, doc["error"]
        for f in doc["files"]:
            assert f["result"]["status"] == "copied"
            assert f["result"]["adler32"] == f"{zlib.adler32(data[f['name']]):08x}"


def test_surl_list_with_a_line_that_is_not_a_url_exits_6_naming_the_line(
    db: Database, tmp_path: Path
) -> None:
    listing = tmp_path / "srm.txt"
    listing.write_text("root://127.0.0.1:1//a\n/just/a/path\n")
    proc = gridxfer(
        "tokens",
        "create",
        "L1",
        "--surls",
        str(listing),
        "--dest",
        file_url(tmp_path),
        config=db.config_file,
    )
    assert proc.returncode == 6 and "line 2" in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- templates


def test_desi_template_with_url_overrides_creates_and_completes_the_night(
    db: Database, tmp_path: Path, remote: Remote
) -> None:
    src = tmp_path / "src"
    info = make_night(src, NIGHT, exposures=2, files_per_exposure=2, size=2000)
    create(
        db.config_file,
        NIGHT,
        "--template",
        str(REPO / "tokens" / "desi-night.yaml"),
        "--source",
        file_url(src),
        "--dest",
        remote.url,
    )
    docs = tokens(db, NIGHT)
    assert set(docs) == set(info["exposures"])
    for exp, doc in docs.items():
        assert doc["source"] == f"{file_url(src)}/{NIGHT}/{exp}"  # not the template's
        assert doc["destination"] == f"{remote.url}/{NIGHT}/{exp}"
        assert doc["payload"] == {"instrument": "spectrograph"}
        assert doc["max_attempts"] == 3
    work(db.config_file, NIGHT)
    assert tree(remote.path / NIGHT) == tree(src / NIGHT)
    assert all(d["state"] == "done" for d in tokens(db, NIGHT).values())


def test_lofar_template_groups_a_surl_list_by_its_group_size(
    db: Database, tmp_path: Path, surls: tuple[Path, dict[str, bytes]]
) -> None:
    listing, data = surls
    create(
        db.config_file,
        "L123456",
        "--template",
        str(REPO / "tokens" / "lofar-surls.yaml"),
        "--surls",
        str(listing),
        "--dest",
        file_url(tmp_path / "dst"),
    )
    docs = tokens(db, "L123456")
    assert len(docs) == 1 and next(iter(docs)).startswith("chunk00000-")  # group: 10
    (doc,) = docs.values()
    assert len(doc["files"]) == len(data)
    assert doc["max_attempts"] == 5


def test_an_edited_surl_list_adds_tokens_and_never_rewrites_pending_ones(
    db: Database, tmp_path: Path, surls: tuple[Path, dict[str, bytes]]
) -> None:
    listing, _ = surls
    args = ("--group", "2", "--dest", file_url(tmp_path / "dst"))
    create(db.config_file, "L123456", "--surls", str(listing), *args)
    before = {e: d["files"] for e, d in tokens(db, "L123456").items()}
    lines = listing.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if "://" in line)
    edited = tmp_path / "srm2.txt"
    edited.write_text("\n".join(lines[:first] + lines[first + 1 :]) + "\n")  # one URL dropped
    report = create(db.config_file, "L123456", "--surls", str(edited), *args)
    assert report["updated"] == 0 and report["created"] >= 1
    after = tokens(db, "L123456")
    for exposure, files in before.items():
        assert after[exposure]["files"] == files  # the first list's work is all still there


def test_template_with_an_unknown_key_exits_6_naming_the_key(db: Database, tmp_path: Path) -> None:
    template = tmp_path / "typo.yaml"
    template.write_text("layout: night\nsource: file:///data\ndestinaton: root://x//y\n")
    make_night(tmp_path / "src", NIGHT, exposures=1)
    proc = gridxfer(
        "tokens",
        "create",
        NIGHT,
        "--template",
        str(template),
        "--source",
        file_url(tmp_path / "src"),
        "--dest",
        file_url(tmp_path / "dst"),
        config=db.config_file,
    )
    assert proc.returncode == 6, proc.stderr
    assert "destinaton" in proc.stderr and "unknown key" in proc.stderr
    assert db.pool().counts(NIGHT) == {}  # nothing was created


def test_urls_carrying_credentials_are_refused_and_never_shown(
    db: Database, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write_exposure(src / NIGHT / "e1", {"a.fits": b"a"})
    listing = tmp_path / "srm.txt"
    listing.write_text("root://host//data/a.MS?authz=S3cr3tT0ken\n")
    for args in (
        ("--source", file_url(src), "--dest", "davs://alice:S3cr3tT0ken@host/x"),
        ("--source", file_url(src), "--dest", "davs://host/x?access_token=S3cr3tT0ken"),
        ("--surls", str(listing), "--dest", file_url(tmp_path / "dst")),
    ):
        proc = gridxfer("tokens", "create", NIGHT, *args, config=db.config_file)
        assert proc.returncode == 6, proc.stderr
        assert "credentials" in proc.stderr and "S3cr3tT0ken" not in proc.stderr + proc.stdout
    assert db.pool().counts() == {}
