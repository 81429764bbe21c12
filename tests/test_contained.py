"""Sources are contained: nothing outside an exposure directory is read (docs/transfer.md,
links at the source).

Symbolic links in real directories, listed through gfal2's file plugin and a real
XRootD server; `tokens create` and `worker` run as users run them.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

from GRID_XFER.errors import Code
from GRID_XFER.storage import Storage, StorageError
from tests.conftest import Database, gridxfer
from tests.nightgen import manifest_name, sha256, tree, write_exposure, write_manifest
from tests.plugins.xrootd import SERVICE_USER, XRootDServer
from tests.test_transfer import assert_error, create, file_url, tokens, work

NIGHT = "20261130"
OUTSIDE = b"outside the exposure: must never be read\n"


@pytest.fixture
def storage() -> Storage:
    return Storage()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the night, holding a file nobody may copy."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_bytes(OUTSIDE)
    return out


def exposure(root: Path) -> Path:
    write_exposure(root, {"a.fits": b"a" * 10, "sub/b.fits": b"b" * 20})
    return root


# ----------------------------------------------------------------------------- Storage.walk


def test_walk_follows_links_that_stay_inside_the_exposure(storage: Storage, tmp_path: Path) -> None:
    e = exposure(tmp_path / "e")
    (e / "rel.fits").symlink_to("a.fits")
    (e / "sub" / "up.fits").symlink_to("../a.fits")
    (e / "subl").symlink_to("sub")
    found = storage.walk(file_url(e))
    assert {k: v.size for k, v in found.items()} == {
        "a.fits": 10,
        "rel.fits": 10,
        "sub/b.fits": 20,
        "sub/up.fits": 10,
        "subl/b.fits": 20,
        "subl/up.fits": 10,
        manifest_name("e"): found[manifest_name("e")].size,
    }


@pytest.mark.parametrize(
    "name, target, why",
    [
        ("passwd", "/etc/passwd", "leaves the exposure"),
        ("secret.txt", "{outside}/secret.txt", "leaves the exposure"),
        ("escape", "../outside/secret.txt", "leaves the exposure"),
        ("outdir", "{outside}", "leaves the exposure"),
        ("dangling.fits", "nothing-here.fits", "points to nothing"),
        ("loop", ".", "loop"),
        ("sub/up", "..", "loop"),
        ("self", "self", "loop"),
    ],
)
def test_walk_refuses_a_link_that_leaves_dangles_or_loops_with_34(
    storage: Storage, tmp_path: Path, outside: Path, name: str, target: str, why: str
) -> None:
    e = exposure(tmp_path / "e")
    (e / name).symlink_to(target.format(outside=outside))
    with pytest.raises(StorageError) as info:
        storage.walk(file_url(e))
    err = info.value
    assert (err.code, err.transient) == (Code.SOURCE_NOT_CONTAINED, False)
    assert name in str(err) and why in str(err) and "\n" not in str(err)
    # Asked to collect problems instead, the walk lists everything else and names the link.
    refused: dict[str, str] = {}
    found = storage.walk(file_url(e), refused=refused)
    assert set(refused) == {name} and why in refused[name]
    assert set(found) == {"a.fits", "sub/b.fits", manifest_name("e")}


def test_a_dangling_link_does_not_break_a_listing(storage: Storage, tmp_path: Path) -> None:
    night = tmp_path / "night"
    (night / "e1").mkdir(parents=True)
    (night / "dead").symlink_to(tmp_path / "nowhere")
    entries = dict(storage.scandir(file_url(night)))
    assert entries["e1"].is_dir and not entries["dead"].is_dir


def test_an_exposure_directory_that_is_itself_a_link_is_walked_where_it_leads(
    storage: Storage, tmp_path: Path
) -> None:
    """A night spread over disks: containment is measured from where the link leads."""
    e = exposure(tmp_path / "disk2" / "e")
    (tmp_path / "night").mkdir()
    (tmp_path / "night" / "e").symlink_to(e)
    (e / "rel.fits").symlink_to("a.fits")
    assert "rel.fits" in storage.walk(file_url(tmp_path / "night" / "e"))


def _xrootd_link(xrootd: XRootDServer, rel: str, target: str) -> None:
    path = xrootd.path(rel)
    path.symlink_to(target)
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVICE_USER)
        os.lchown(path, user.pw_uid, user.pw_gid)


@pytest.mark.slow
def test_over_root_a_link_loop_is_refused_with_34_at_the_depth_limit(
    storage: Storage, xrootd: XRootDServer, request: pytest.FixtureRequest
) -> None:
    """XRootD resolves links on the server: a loop shows as ever deeper directories."""
    base = f"loop-{request.node.name}-{os.getpid()}"
    xrootd.put(f"{base}/e/a.fits", b"a")
    _xrootd_link(xrootd, f"{base}/e/loop", ".")
    with pytest.raises(StorageError) as info:
        storage.walk(xrootd.url_for(f"{base}/e"))
    assert (info.value.code, info.value.transient) == (Code.SOURCE_NOT_CONTAINED, False)
    assert "loop/loop" in str(info.value)


@pytest.mark.slow
def test_over_root_a_dangling_link_is_left_out_of_the_listing(
    storage: Storage, xrootd: XRootDServer, request: pytest.FixtureRequest
) -> None:
    base = f"dangling-{request.node.name}-{os.getpid()}"
    xrootd.put(f"{base}/e/a.fits", b"a")
    _xrootd_link(xrootd, f"{base}/e/gone.fits", "nothing-here")
    assert set(storage.walk(xrootd.url_for(f"{base}/e"))) == {"a.fits"}


# ----------------------------------------------------------------------------- create and worker


@pytest.mark.slow
def test_bad_links_are_reported_per_exposure_the_night_is_created_and_the_worker_fails_them_with_34(
    db: Database, tmp_path: Path, outside: Path
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    night = src / NIGHT
    write_exposure(night / "good", {"a.fits": b"g" * 100})
    # /etc/passwd-style: a link to a file outside, listed in the manifest as if it belonged.
    write_exposure(night / "passwd", {"a.fits": b"p" * 10})
    (night / "passwd" / "secret.txt").symlink_to(outside / "secret.txt")
    write_manifest(night / "passwd", {"a.fits": b"p" * 10, "secret.txt": OUTSIDE})
    write_exposure(night / "outdir", {"a.fits": b"o" * 10})
    (night / "outdir" / "more").symlink_to(outside)
    write_exposure(night / "dangling", {"a.fits": b"d" * 10})
    (night / "dangling" / "b.fits").symlink_to("b-not-yet.fits")
    write_exposure(night / "loop", {"a.fits": b"l" * 10})
    (night / "loop" / "again").symlink_to(".")
    (night / "dead").symlink_to(tmp_path / "nowhere")  # at night level: not an exposure

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
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["created"] == 5
    problems = report["source_problems"]
    assert set(problems) == {"passwd", "outdir", "dangling", "loop"}
    for exp, link in [
        ("passwd", "secret.txt"),
        ("outdir", "more"),
        ("dangling", "b.fits"),
        ("loop", "again"),
    ]:
        assert link in problems[exp]
        assert any(
            exp in line and link in line and "34" in line for line in proc.stderr.splitlines()
        ), proc.stderr
    assert "dead" in proc.stderr
    docs = tokens(db, NIGHT)
    assert "secret.txt" not in json.dumps(docs["outdir"])  # never listed, let alone read
    flagged = {f["name"]: f for f in docs["passwd"]["files"]}["secret.txt"]
    assert "leaves the exposure" in flagged["problem"] and "size" not in flagged

    worker = work(db.config_file, NIGHT, check=False)
    assert worker.returncode == 0, worker.stderr
    docs = tokens(db, NIGHT)
    assert docs["good"]["state"] == "done"
    assert tree(dst / NIGHT / "good") == tree(night / "good")
    for exp, link in [
        ("passwd", "secret.txt"),
        ("outdir", "more"),
        ("dangling", "b.fits"),
        ("loop", "again"),
    ]:
        assert_error(docs[exp], Code.SOURCE_NOT_CONTAINED, link)
        assert not (dst / NIGHT / exp).exists()
    assert all(OUTSIDE not in data for data in tree(dst).values())


@pytest.mark.slow
def test_a_link_swapped_in_after_create_is_refused_by_the_worker(
    db: Database, tmp_path: Path, outside: Path
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    data = b"x" * 1000
    write_exposure(src / NIGHT / "e1", {"a.fits": data})
    create(db.config_file, NIGHT, "--source", file_url(src), "--dest", file_url(dst))
    # Same bytes, but outside: the manifest still matches, only containment can tell.
    (outside / "a.fits").write_bytes(data)
    (src / NIGHT / "e1" / "a.fits").unlink()
    (src / NIGHT / "e1" / "a.fits").symlink_to(outside / "a.fits")
    assert sha256((src / NIGHT / "e1" / "a.fits").read_bytes()) == sha256(data)

    work(db.config_file, NIGHT)
    doc = tokens(db, NIGHT)["e1"]
    assert_error(doc, Code.SOURCE_NOT_CONTAINED, "a.fits")
    assert "leaves the exposure" in doc["error"]["message"]
    assert not (dst / NIGHT / "e1" / "a.fits").exists()


@pytest.mark.slow
def test_fixing_the_link_and_creating_again_gives_the_token_a_fresh_start(
    db: Database, tmp_path: Path, outside: Path
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    e = src / NIGHT / "e1"
    write_exposure(e, {"a.fits": b"a" * 10})
    (e / "b.fits").symlink_to(outside / "secret.txt")
    write_manifest(e, {"a.fits": b"a" * 10, "b.fits": OUTSIDE})
    create(db.config_file, NIGHT, "--source", file_url(src), "--dest", file_url(dst))
    work(db.config_file, NIGHT)
    assert tokens(db, NIGHT)["e1"]["error"]["code"] == Code.SOURCE_NOT_CONTAINED

    (e / "b.fits").unlink()
    (e / "b.fits").write_bytes(OUTSIDE)  # the data manager copies the file in
    report = create(db.config_file, NIGHT, "--source", file_url(src), "--dest", file_url(dst))
    assert report["updated"] == 1 and report["source_problems"] == {}
    work(db.config_file, NIGHT)
    assert tokens(db, NIGHT)["e1"]["state"] == "done"
    assert tree(dst / NIGHT / "e1") == tree(e)


@pytest.mark.slow
def test_a_from_entry_naming_a_link_that_leaves_its_source_is_refused_with_34(
    db: Database, tmp_path: Path, outside: Path
) -> None:
    """Files named in a `--from` file are not listed by a walk: the worker checks
    each one before reading it."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "e1").mkdir(parents=True)
    (src / "e1" / "a.fits").write_bytes(b"a" * 10)
    (src / "e1" / "passwd").symlink_to(outside / "secret.txt")
    entries = tmp_path / "night.json"
    entries.write_text(
        json.dumps(
            {
                "exposures": [
                    {
                        "exposure": "e1",
                        "source": file_url(src / "e1"),
                        "destination": file_url(dst / "e1"),
                        "files": [
                            {"name": "a.fits", "size": 10},
                            {"name": "passwd", "size": len(OUTSIDE)},
                        ],
                    }
                ]
            }
        )
    )
    gridxfer("tokens", "create", NIGHT, "--from", str(entries), config=db.config_file, check=True)
    work(db.config_file, NIGHT)
    doc = tokens(db, NIGHT)["e1"]
    assert_error(doc, Code.SOURCE_NOT_CONTAINED, "passwd")
    assert not (dst / "e1" / "passwd").exists() and not (dst / "e1" / "a.fits").exists()
