"""Fetching and unpacking a sandbox in-process: every refusal, and what a good archive gives.

Fast: no server, no subprocess; archives are made here with tarfile, fetched
through gfal2's file:// plugin. tests/test_sandbox.py runs the same refusals
through `gridxfer node fetch` and launch.sh.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from GRID_XFER.checksum import hash_file
from GRID_XFER.errors import SandboxChecksumError, SandboxError
from GRID_XFER.sandbox.extract import as_url, check_members, fetch, read_sha256, safe_extract
from GRID_XFER.storage import Storage

Member = tuple[tarfile.TarInfo, bytes | None]


def tar_gz(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def reg(name: str, data: bytes = b"x\n", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def special(name: str, kind: bytes, target: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def link(name: str, target: str) -> Member:
    return special(name, tarfile.SYMTYPE, target)


def hardlink(name: str, target: str) -> Member:
    return special(name, tarfile.LNKTYPE, target)


def directory(name: str) -> Member:
    return special(name, tarfile.DIRTYPE)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


UNSAFE: dict[str, tuple[str, list[Member]]] = {
    "dotdot": ("contains '..'", [reg("ok.txt"), reg("../../escaped.txt")]),
    "dotdot-inner": ("contains '..'", [reg("sub/../../../escaped.txt")]),
    "absolute": ("absolute member name", [reg("/tmp/pwned.txt")]),
    "windows-absolute": ("absolute member name", [reg("C:/pwned.txt")]),
    "symlink-out": ("leaves the directory", [link("out", "../../.."), reg("out/escaped.txt")]),
    "beneath-a-link": ("beneath the link", [link("l", "d"), reg("l/x")]),
    "symlink-leaves": ("leaves the directory", [link("d/l", "../../x")]),
    "symlink-absolute": ("absolute target", [link("etc", "/etc")]),
    "symlink-empty": ("empty target", [link("nothing", "")]),
    "symlink-chain": ("another link", [link("here", "."), link("up", "here/here/..")]),
    "hardlink-out": ("absolute hard link target", [hardlink("h", "/etc/passwd")]),
    "hardlink-up": ("contains '..'", [hardlink("h", "../x")]),
    "hardlink-later": ("does not name an earlier", [hardlink("h", "f"), reg("f")]),
    "hardlink-to-dir": ("does not name an earlier", [directory("d"), hardlink("h", "d")]),
    "replace-by-link": ("appears twice", [reg("f"), link("f", "/etc/passwd")]),
    "duplicate": ("appears twice", [reg("x"), reg("./x")]),
    "beneath-a-file": ("beneath the file", [reg("f"), reg("f/g")]),
    "the-directory-itself": ("the directory itself", [reg(".")]),
    "char-device": ("device, FIFO", [special("dev", tarfile.CHRTYPE)]),
    "block-device": ("device, FIFO", [special("dev", tarfile.BLKTYPE)]),
    "fifo": ("device, FIFO", [special("pipe", tarfile.FIFOTYPE)]),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archive_is_refused_before_anything_is_written(tmp_path: Path, case: str) -> None:
    why, members = UNSAFE[case]
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(tar_gz(members))
    dest = tmp_path / "w" / "sandbox"
    before = tree(tmp_path)
    with pytest.raises(SandboxError, match="unsafe sandbox") as err:
        safe_extract(archive, dest)
    assert why in str(err.value)
    assert tree(tmp_path) - before == {"w", "w/sandbox"}  # the empty target, nothing else
    assert not any(dest.iterdir())


def test_bounds_on_members_and_bytes() -> None:
    many = [reg(f"f{i}")[0] for i in range(5)]
    with pytest.raises(SandboxError, match="more than 4 members"):
        check_members(many, max_members=4)
    big = reg("big")[0]
    big.size = 10
    assert len(check_members([big, reg("small")[0]], max_bytes=15)) == 2
    big2 = reg("big2")[0]
    big2.size = 6
    with pytest.raises(SandboxError, match="more than 15 bytes"):
        check_members([big, big2], max_bytes=15)


def test_names_no_archive_can_carry() -> None:
    """tarfile cannot write these, other tools can: checked on the member list itself."""
    with pytest.raises(SandboxError, match="NUL"):
        check_members([reg("a\x00b")[0]])
    with pytest.raises(SandboxError, match="empty"):
        check_members([reg("")[0]])
    negative = reg("n")[0]
    negative.size = -1
    with pytest.raises(SandboxError, match="negative size"):
        check_members([negative])


def test_a_good_archive_unpacks_with_plain_modes(tmp_path: Path) -> None:
    archive = tmp_path / "good.tar.gz"
    archive.write_bytes(
        tar_gz(
            [
                directory("bin"),
                reg("bin/run.sh", b"#!/bin/sh\n", mode=0o4777),  # setuid and world-writable
                reg("notes.txt", b"hello\n", mode=0o666),
                link("bin/notes", "../notes.txt"),
                hardlink("copy.txt", "notes.txt"),
            ]
        )
    )
    dest = tmp_path / "sandbox"
    written = safe_extract(archive, dest)
    assert written == ["bin", "bin/run.sh", "notes.txt", "bin/notes", "copy.txt"]
    assert (dest / "bin" / "run.sh").stat().st_mode & 0o7777 == 0o755
    assert (dest / "notes.txt").stat().st_mode & 0o7777 == 0o644
    assert (dest / "bin" / "notes").readlink() == Path("../notes.txt")
    assert (dest / "copy.txt").read_text() == "hello\n" and not (dest / "copy.txt").is_symlink()


def test_refuses_a_destination_that_is_not_empty(tmp_path: Path) -> None:
    archive = tmp_path / "good.tar.gz"
    archive.write_bytes(tar_gz([reg("a")]))
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "old").write_text("x")
    with pytest.raises(SandboxError, match="not empty"):
        safe_extract(archive, tmp_path / "dest")


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"not a tar at all", "not a readable tar.gz"), (None, "damaged|not a readable")],
)
def test_refuses_what_is_no_tar_gz(tmp_path: Path, content: bytes | None, why: str) -> None:
    archive = tmp_path / "bad.tar.gz"
    whole = tar_gz([reg("a", b"y" * 100_000)])
    archive.write_bytes(content if content is not None else whole[: len(whole) // 2])
    with pytest.raises(SandboxError, match=why):
        safe_extract(archive, tmp_path / "dest")


# -- fetch ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def storage() -> Storage:
    return Storage(base_timeout=30, min_rate=1)


def test_fetch_checks_the_sha256(tmp_path: Path, storage: Storage) -> None:
    archive = tmp_path / "s.tar.gz"
    archive.write_bytes(tar_gz([reg("a")]))
    digest = hash_file(archive, "sha256")
    assert read_sha256(storage, as_url(str(archive))) == (digest, archive.stat().st_size)
    got = fetch(storage, str(archive), digest.upper() + "\n", tmp_path / "copy")
    assert got.read_bytes() == archive.read_bytes()
    with pytest.raises(SandboxChecksumError, match="corrupted or replaced"):
        fetch(storage, str(archive), "0" * 64, tmp_path / "copy2")


def test_fetch_refuses_more_than_the_limit_and_a_missing_file(
    tmp_path: Path, storage: Storage
) -> None:
    archive = tmp_path / "s.tar.gz"
    archive.write_bytes(b"z" * 5000)
    with pytest.raises(SandboxError, match="larger than 4096 bytes"):
        fetch(storage, str(archive), "0" * 64, tmp_path / "copy", limit=4096)
    with pytest.raises(SandboxError, match="sandbox fetch failed"):
        fetch(storage, str(tmp_path / "absent"), "0" * 64, tmp_path / "copy3")


def test_as_url() -> None:
    assert as_url("root://se//a.tar.gz") == "root://se//a.tar.gz"
    assert as_url("/x/../y.tar.gz") == "file:///y.tar.gz"
