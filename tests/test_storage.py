"""Storage against real gfal2: the file plugin and a real XRootD server (no mocks)."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from GRID_XFER.errors import Code
from GRID_XFER.storage import Cancelled, CopyResult, Stat, Storage, StorageError, redact

if TYPE_CHECKING:
    from tests.plugins.xrootd import XRootDServer


MiB = 1024 * 1024
DATA = os.urandom(3 * MiB + 123)


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def file_url(path: Path) -> str:
    return f"file://{path}"


@pytest.fixture
def storage() -> Storage:
    return Storage()


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 MiB: large enough that a copy is still running when we cancel it."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    block = os.urandom(MiB)
    with open(path, "wb") as fh:
        for _ in range(200):
            fh.write(block)
    return path


class Side:
    """One storage endpoint under test: where to write directly, and its URLs."""

    def __init__(
        self,
        scheme: str,
        root: Path,
        url_for: Callable[[str], str],
        put: Callable[[str, bytes], Path],
    ) -> None:
        self.scheme, self.root, self.url, self.put = scheme, root, url_for, put


@pytest.fixture(params=["file", pytest.param("root", marks=pytest.mark.slow)])
def side(request: pytest.FixtureRequest, tmp_path: Path) -> Side:
    """The same behaviour checked through file:// and through root://."""
    if request.param == "file":

        def put(rel: str, data: bytes) -> Path:
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return path

        return Side("file", tmp_path, lambda rel: file_url(tmp_path / rel), put)
    server: XRootDServer = request.getfixturevalue("xrootd")
    base = f"t-{request.node.name.replace('/', '_')}-{time.monotonic_ns()}"
    return Side(
        "root",
        server.path(base),
        lambda rel: server.url_for(f"{base}/{rel}"),
        lambda rel, data: server.put(f"{base}/{rel}", data),
    )


# ----------------------------------------------------------------------------- metadata


def test_stat_reports_size_type_and_mtime(storage: Storage, side: Side) -> None:
    side.put("d/f.bin", b"x" * 1234)
    st = storage.stat(side.url("d/f.bin"))
    assert st == Stat(size=1234, is_dir=False, mtime=st.mtime)
    assert abs(st.mtime - time.time()) < 300
    assert storage.stat(side.url("d")).is_dir


def test_stat_of_missing_file_is_permanent_source_missing(storage: Storage, side: Side) -> None:
    side.put("present", b"")
    with pytest.raises(StorageError) as info:
        storage.stat(side.url("absent.fits"))
    err = info.value
    assert (err.code, err.transient) == (Code.SOURCE_MISSING, False)
    assert err.errno == 2
    assert "absent.fits" in str(err) and "\n" not in str(err)


def test_exists_is_true_for_files_and_dirs_false_for_missing(storage: Storage, side: Side) -> None:
    side.put("d/f", b"1")
    assert storage.exists(side.url("d/f"))
    assert storage.exists(side.url("d"))
    assert not storage.exists(side.url("d/nope"))


def test_listdir_returns_sorted_names_without_dot_entries(storage: Storage, side: Side) -> None:
    for name in ["b.fits", "a.fits", "sub/c.fits"]:
        side.put(f"night/{name}", b"1")
    assert storage.listdir(side.url("night")) == ["a.fits", "b.fits", "sub"]


def test_walk_lists_nested_files_with_sizes_in_one_listing_per_directory(
    storage: Storage, side: Side
) -> None:
    for name, size in [("a.fits", 3), ("sub dir/é b.fits", 5), ("sub dir/deeper/z", 0)]:
        side.put(f"exp/{name}", b"x" * size)
    found = storage.walk(side.url("exp"))
    assert {k: v.size for k, v in found.items()} == {
        "a.fits": 3,
        "sub dir/é b.fits": 5,
        "sub dir/deeper/z": 0,
    }
    assert [n for n, st in storage.scandir(side.url("exp"))] == ["a.fits", "sub dir"]


def test_walk_of_a_missing_directory_is_source_missing(storage: Storage, side: Side) -> None:
    side.put("present", b"")
    with pytest.raises(StorageError) as info:
        storage.walk(side.url("gone"))
    assert info.value.code == Code.SOURCE_MISSING


def test_read_text_refuses_non_utf8_as_a_manifest_problem(storage: Storage, side: Side) -> None:
    side.put("ok.txt", "caf\u00e9\n".encode())
    side.put("bad.txt", b"\xff\xfe\x00garbage")
    assert storage.read_text(side.url("ok.txt")) == "caf\u00e9\n"
    with pytest.raises(StorageError) as info:
        storage.read_text(side.url("bad.txt"))
    assert info.value.code == Code.MANIFEST_MISSING and "UTF-8" in str(info.value)


def test_listdir_of_a_file_is_not_a_directory_error(storage: Storage, side: Side) -> None:
    side.put("f", b"1")
    with pytest.raises(StorageError) as info:
        storage.listdir(side.url("f"))
    assert info.value.errno == 20 and not info.value.transient


def test_mkdir_creates_parents_and_accepts_an_existing_directory(
    storage: Storage, side: Side
) -> None:
    side.put("keep", b"")
    storage.mkdir(side.url("x/y/z"))
    storage.mkdir(side.url("x/y/z"))
    storage.mkdir(side.url("x/y"), parents=False)
    assert storage.stat(side.url("x/y/z")).is_dir


def test_mkdir_without_parents_fails_when_local_parent_is_missing(
    storage: Storage, tmp_path: Path
) -> None:
    # (XRootD creates missing parents even then: not checked there.)
    with pytest.raises(StorageError) as info:
        storage.mkdir(file_url(tmp_path / "no" / "such" / "parent"), parents=False)
    assert (info.value.errno, info.value.transient) == (2, False)


@pytest.mark.parametrize("parents", [True, False])
def test_mkdir_over_an_existing_file_fails(storage: Storage, side: Side, parents: bool) -> None:
    side.put("f", b"1")
    with pytest.raises(StorageError) as info:
        storage.mkdir(side.url("f"), parents=parents)
    assert info.value.errno == 17 and not info.value.transient


def test_rename_moves_the_file(storage: Storage, side: Side) -> None:
    side.put("d/old.part", b"content")
    storage.rename(side.url("d/old.part"), side.url("d/new.fits"))
    assert not storage.exists(side.url("d/old.part"))
    assert storage.stat(side.url("d/new.fits")).size == 7


def test_rename_of_missing_source_is_permanent(storage: Storage, side: Side) -> None:
    side.put("d/x", b"")
    with pytest.raises(StorageError) as info:
        storage.rename(side.url("d/gone"), side.url("d/new"))
    assert (info.value.code, info.value.transient) == (Code.SOURCE_MISSING, False)


def test_unlink_removes_the_file_and_missing_ok_tolerates_absence(
    storage: Storage, side: Side
) -> None:
    side.put("f", b"1")
    storage.unlink(side.url("f"))
    assert not storage.exists(side.url("f"))
    storage.unlink(side.url("f"), missing_ok=True)
    with pytest.raises(StorageError) as info:
        storage.unlink(side.url("f"))
    assert info.value.errno == 2


def test_status_of_a_disk_file_is_online(storage: Storage, side: Side) -> None:
    side.put("f", b"1")
    assert storage.status(side.url("f")) == "ONLINE"


def test_status_of_a_missing_file_is_source_missing(storage: Storage, side: Side) -> None:
    side.put("f", b"1")
    with pytest.raises(StorageError) as info:
        storage.status(side.url("missing"))
    assert info.value.code == Code.SOURCE_MISSING


# ----------------------------------------------------------------------------- checksums


def test_storage_adler32_matches_zlib(storage: Storage, side: Side) -> None:
    side.put("f", DATA)
    assert storage.checksum(side.url("f")) == adler(DATA)
    assert storage.checksum(side.url("f"), "adler32") == adler(DATA)


def test_unsupported_checksum_algorithm_is_a_permanent_error(storage: Storage, side: Side) -> None:
    side.put("f", DATA)
    with pytest.raises(StorageError) as info:
        storage.checksum(side.url("f"), "SHA256")
    err = info.value
    assert not err.transient and err.code == Code.CONFIG
    assert "SHA256 not supported" in str(err)


# ----------------------------------------------------------------------------- copy


@pytest.mark.slow
def test_upload_and_download_are_byte_identical(
    storage: Storage, xrootd: XRootDServer, tmp_path: Path
) -> None:
    src = tmp_path / "src.fits"
    src.write_bytes(DATA)
    remote = xrootd.url_for("up/night/src.fits")
    result = storage.copy(file_url(src), remote)
    assert isinstance(result, CopyResult) and result.bytes == len(DATA) and result.seconds >= 0
    assert xrootd.path("up/night/src.fits").read_bytes() == DATA

    back = tmp_path / "deeper" / "back.fits"
    storage.copy(remote, file_url(back), size=len(DATA))
    assert back.read_bytes() == DATA


@pytest.mark.slow
def test_copy_with_the_correct_adler32_succeeds(
    storage: Storage, xrootd: XRootDServer, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.write_bytes(DATA)
    remote = xrootd.url_for("ck/ok.fits")
    storage.copy(file_url(src), remote, checksum=("ADLER32", adler(DATA).upper()))
    storage.copy(remote, file_url(tmp_path / "down"), checksum=("adler32", adler(DATA)))
    storage.copy(file_url(src), file_url(tmp_path / "local"), checksum=("ADLER32", adler(DATA)))
    assert (tmp_path / "down").read_bytes() == DATA == (tmp_path / "local").read_bytes()


@pytest.mark.slow
def test_copy_with_empty_expected_value_compares_both_ends(
    storage: Storage, xrootd: XRootDServer, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.write_bytes(DATA)
    storage.copy(file_url(src), xrootd.url_for("ck/compare.fits"), checksum=("ADLER32", ""))
    assert storage.checksum(xrootd.url_for("ck/compare.fits")) == adler(DATA)


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["upload", "download", "local"])
def test_copy_with_a_wrong_adler32_fails_permanently_and_leaves_no_file(
    storage: Storage, xrootd: XRootDServer, tmp_path: Path, direction: str
) -> None:
    local_src = tmp_path / "src"
    local_src.write_bytes(DATA)
    remote_src = xrootd.put(f"wrong-{direction}/src", DATA)
    src, dst, dst_path = {
        "upload": (
            file_url(local_src),
            xrootd.url_for(f"wrong-{direction}/dst"),
            xrootd.path(f"wrong-{direction}/dst"),
        ),
        "download": (
            xrootd.url_for(f"wrong-{direction}/src"),
            file_url(tmp_path / "dst"),
            tmp_path / "dst",
        ),
        "local": (file_url(local_src), file_url(tmp_path / "dst"), tmp_path / "dst"),
    }[direction]
    assert remote_src.exists()
    with pytest.raises(StorageError) as info:
        storage.copy(src, dst, checksum=("ADLER32", "deadbeef"))
    err = info.value
    assert (err.code, err.transient) == (Code.CHECKSUM_MISMATCH, False)
    assert not dst_path.exists()
    assert not storage.exists(dst)


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["upload", "download", "local"])
def test_copy_of_a_missing_source_is_permanent_source_missing(
    storage: Storage, xrootd: XRootDServer, tmp_path: Path, direction: str
) -> None:
    src, dst = {
        "upload": (file_url(tmp_path / "nope"), xrootd.url_for("missing/dst")),
        "download": (xrootd.url_for("missing/nope"), file_url(tmp_path / "dst")),
        "local": (file_url(tmp_path / "nope"), file_url(tmp_path / "dst")),
    }[direction]
    for size in (None, 10):  # with a size no stat happens first: gfal2's own error is mapped
        with pytest.raises(StorageError) as info:
            storage.copy(src, dst, size=size)
        err = info.value
        assert (err.code, err.transient, err.errno) == (Code.SOURCE_MISSING, False, 2), str(err)
        assert "nope" in err.url
    assert not storage.exists(dst)


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["upload", "download"])
def test_copy_onto_an_existing_destination_without_overwrite_is_eexist_and_keeps_it(
    storage: Storage, xrootd: XRootDServer, tmp_path: Path, direction: str
) -> None:
    local = tmp_path / "local"
    local.write_bytes(DATA)
    remote_path = xrootd.put(f"exists-{direction}/remote", b"precious")
    remote = xrootd.url_for(f"exists-{direction}/remote")
    if direction == "upload":
        src, dst, kept = file_url(local), remote, remote_path
    else:
        # gfal2/XrdCl alone would *delete* this local file while failing with EEXIST.
        kept = tmp_path / "kept"
        kept.write_bytes(b"precious")
        src, dst = remote, file_url(kept)
    with pytest.raises(StorageError) as info:
        storage.copy(src, dst)
    err = info.value
    assert (err.errno, err.transient) == (17, False)
    assert err.code == Code.DEST_WRITE_FAILED
    assert kept.read_bytes() == b"precious"


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["upload", "download", "local"])
def test_copy_with_overwrite_replaces_the_destination(
    storage: Storage, xrootd: XRootDServer, tmp_path: Path, direction: str
) -> None:
    local = tmp_path / "local"
    local.write_bytes(DATA)
    remote = xrootd.url_for(f"ow-{direction}/file")
    if direction == "upload":
        xrootd.put(f"ow-{direction}/file", b"old")
        src, dst, written = file_url(local), remote, xrootd.path(f"ow-{direction}/file")
    else:
        xrootd.put(f"ow-{direction}/file", DATA)
        written = tmp_path / "old"
        written.write_bytes(b"old")
        src, dst = (remote if direction == "download" else file_url(local)), file_url(written)
    storage.copy(src, dst, overwrite=True, checksum=("ADLER32", adler(DATA)))
    assert written.read_bytes() == DATA


def test_copy_without_create_parents_fails_on_missing_local_directory(
    storage: Storage, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"1")
    dst = file_url(tmp_path / "no" / "dir" / "dst")
    with pytest.raises(StorageError) as info:
        storage.copy(file_url(src), dst, create_parents=False)
    err = info.value
    assert (err.code, err.transient, err.url) == (Code.DEST_WRITE_FAILED, False, dst)


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["upload", "local"])
def test_copy_asking_for_a_checksum_one_end_cannot_compute_is_a_permanent_config_error(
    storage: Storage, xrootd: XRootDServer, tmp_path: Path, direction: str
) -> None:
    src = tmp_path / "src"
    src.write_bytes(DATA)
    dst = xrootd.url_for("sha256/dst") if direction == "upload" else file_url(tmp_path / "dst")
    with pytest.raises(StorageError) as info:
        storage.copy(file_url(src), dst, checksum=("SHA256", ""))  # file:// has no SHA256
    err = info.value
    assert (err.code, err.transient) == (Code.CONFIG, False)
    assert "not supported" in str(err)
    assert not storage.exists(dst)


@pytest.mark.slow
def test_names_with_spaces_and_non_ascii_survive_a_round_trip(
    storage: Storage, xrootd: XRootDServer, tmp_path: Path
) -> None:
    name = "Ångström exposure ü 観測 #1.fits"
    src = tmp_path / "dir with space" / name
    src.parent.mkdir()
    src.write_bytes(DATA)
    remote = xrootd.url_for(f"ünï cödé/{name}")
    storage.copy(file_url(src), remote, checksum=("ADLER32", adler(DATA)))
    assert storage.listdir(xrootd.url_for("ünï cödé")) == [name]
    assert storage.stat(remote).size == len(DATA)
    assert storage.checksum(remote) == adler(DATA)
    back = tmp_path / "back" / f"copy of {name}"
    storage.copy(remote, file_url(back), checksum=("ADLER32", ""))
    assert back.read_bytes() == DATA
    storage.rename(remote, xrootd.url_for(f"ünï cödé/renamed {name}"))
    storage.unlink(xrootd.url_for(f"ünï cödé/renamed {name}"))


@pytest.mark.slow
def test_zero_byte_file_copies_and_checksums(
    storage: Storage, xrootd: XRootDServer, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    remote = xrootd.url_for("zero/empty.fits")
    assert storage.copy(file_url(empty), remote, checksum=("ADLER32", "00000001")).bytes == 0
    assert storage.stat(remote).size == 0
    assert storage.checksum(remote) == "00000001"
    storage.copy(remote, file_url(tmp_path / "back"), checksum=("ADLER32", ""))
    assert (tmp_path / "back").read_bytes() == b""
    assert list(storage.open_read(remote)) == []


@pytest.mark.slow
def test_concurrent_copies_from_several_threads_all_succeed(
    storage: Storage, xrootd: XRootDServer, tmp_path: Path
) -> None:
    payloads = {f"f{i}": os.urandom(MiB + i) for i in range(6)}
    for name, data in payloads.items():
        (tmp_path / name).write_bytes(data)
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            storage.copy(
                file_url(tmp_path / name),
                xrootd.url_for(f"threads/{name}"),
                checksum=("ADLER32", adler(payloads[name])),
            )
            assert storage.stat(xrootd.url_for(f"threads/{name}")).size == len(payloads[name])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert storage.listdir(xrootd.url_for("threads")) == sorted(payloads)


# ----------------------------------------------------------------------------- failures


def test_unreachable_server_is_transient(
    storage: Storage, tmp_path: Path, closed_port: int
) -> None:
    port = closed_port
    src = tmp_path / "src"
    src.write_bytes(b"1")
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        storage.stat(f"root://127.0.0.1:{port}//x")
    assert info.value.transient and info.value.code == Code.TRANSFER_FAILED
    for args in [
        (file_url(src), f"root://127.0.0.1:{port}//x"),
        (f"root://127.0.0.1:{port}//x", file_url(tmp_path / "dst")),
    ]:
        with pytest.raises(StorageError) as info:
            storage.copy(*args, size=1)
        assert info.value.transient, str(info.value)
        assert info.value.errno == 111
    assert time.monotonic() - started < 20  # XrdCl's default would retry for minutes
    assert src.read_bytes() == b"1"


def _copy_in_thread(
    storage: Storage, src: str, dst: str
) -> tuple[threading.Thread, list[BaseException]]:
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            storage.copy(src, dst)
        except BaseException as exc:  # inspected by the test
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _cancel_when_running(storage: Storage, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 10
    while storage.cancel() == 0:  # retry until the copy has registered its context
        assert thread.is_alive() and time.monotonic() < deadline, (
            "copy ended before it could be cancelled"
        )
        time.sleep(0.005)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["root", "file"])
def test_cancel_from_another_thread_raises_cancelled_and_storage_stays_usable(
    storage: Storage, xrootd: XRootDServer, big_file: Path, tmp_path: Path, target: str
) -> None:
    if target == "root":
        dst, dst_path = xrootd.url_for("cancel/big.bin"), xrootd.path("cancel/big.bin")
    else:
        dst, dst_path = file_url(tmp_path / "big.bin"), tmp_path / "big.bin"
    thread, outcome = _copy_in_thread(storage, file_url(big_file), dst)
    _cancel_when_running(storage, thread)
    thread.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled), outcome
    err = outcome[0]
    assert err.code == Code.INTERRUPTED and err.transient
    assert not dst_path.exists()  # no partial file left behind

    small = tmp_path / "small"
    small.write_bytes(DATA)
    storage.copy(file_url(small), dst, checksum=("ADLER32", adler(DATA)))
    assert dst_path.read_bytes() == DATA


@pytest.mark.slow
def test_copy_slower_than_min_rate_times_out_as_transient(
    xrootd: XRootDServer, big_file: Path
) -> None:
    slow = Storage(base_timeout=0.05, min_rate=1e12)
    with pytest.raises(StorageError) as info:
        slow.copy(file_url(big_file), xrootd.url_for("timeout/big.bin"))
    err = info.value
    assert not isinstance(err, Cancelled)
    assert (err.code, err.transient, err.errno) == (Code.TRANSFER_TIMEOUT, True, 110)
    assert not xrootd.path("timeout/big.bin").exists()


# ----------------------------------------------------------------------------- streaming


@pytest.mark.slow
@pytest.mark.parametrize("source", ["file", "root"])
def test_stream_writes_exactly_the_bytes_it_shows_and_creates_parents(
    storage: Storage, side: Side, xrootd: XRootDServer, tmp_path: Path, source: str
) -> None:
    data = os.urandom(3 * MiB + 17)  # several chunks, the last one short
    if source == "file":
        (tmp_path / "in").write_bytes(data)
        src = file_url(tmp_path / "in")
    else:
        rel = f"stream-src-{time.monotonic_ns()}/in"
        xrootd.put(rel, data)
        src = xrootd.url_for(rel)
    seen = bytearray()
    result = storage.stream(src, side.url("a/b/out"), seen.extend, chunk_size=MiB)
    assert result.bytes == len(data) and bytes(seen) == data
    assert (side.root / "a" / "b" / "out").read_bytes() == data
    assert storage.checksum(side.url("a/b/out"), "ADLER32") == adler(data)


def test_stream_of_a_missing_source_is_source_missing_and_leaves_nothing(
    storage: Storage, side: Side, tmp_path: Path
) -> None:
    with pytest.raises(StorageError) as info:
        storage.stream(file_url(tmp_path / "absent"), side.url("out"), lambda chunk: None, size=1)
    assert (info.value.code, info.value.transient) == (Code.SOURCE_MISSING, False)
    assert not (side.root / "out").exists()


def test_stream_onto_an_existing_file_refuses_and_keeps_it(
    storage: Storage, side: Side, tmp_path: Path
) -> None:
    side.put("out", b"keep me")
    (tmp_path / "in").write_bytes(DATA)
    with pytest.raises(StorageError) as info:
        storage.stream(file_url(tmp_path / "in"), side.url("out"), lambda chunk: None)
    assert info.value.errno == errno.EEXIST and info.value.code == Code.DEST_WRITE_FAILED
    assert (side.root / "out").read_bytes() == b"keep me"


def test_stream_cancelled_from_another_thread_stops_and_removes_its_partial_file(
    storage: Storage, side: Side, big_file: Path
) -> None:
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            storage.stream(file_url(big_file), side.url("big.bin"), lambda chunk: time.sleep(0.01))
        except BaseException as exc:  # inspected below
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    _cancel_when_running(storage, thread)
    thread.join(30)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled), outcome
    assert not (side.root / "big.bin").exists()


def test_stream_slower_than_min_rate_times_out_as_transient(side: Side, big_file: Path) -> None:
    slow = Storage(base_timeout=0.05, min_rate=1e12)
    with pytest.raises(StorageError) as info:
        slow.stream(file_url(big_file), side.url("big.bin"), lambda chunk: time.sleep(0.01))
    assert (info.value.code, info.value.transient) == (Code.TRANSFER_TIMEOUT, True)
    assert not (side.root / "big.bin").exists()


def test_open_read_streams_chunks_whose_sha256_matches_hashlib(
    storage: Storage, side: Side
) -> None:
    side.put("f", DATA)
    chunks = list(storage.open_read(side.url("f"), chunk_size=256 * 1024))
    assert len(chunks) >= len(DATA) // (256 * 1024)
    assert all(0 < len(c) <= 256 * 1024 for c in chunks)
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_open_read_of_a_missing_file_is_source_missing(storage: Storage, side: Side) -> None:
    side.put("f", b"")
    with pytest.raises(StorageError) as info:
        next(iter(storage.open_read(side.url("missing"))))
    assert info.value.code == Code.SOURCE_MISSING


# ----------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "root://alice:s3cret@host.example:1094//data/f.fits",
            "root://***@host.example:1094//data/f.fits",
        ),
        ("davs://bob:p@ss@host/path", "davs://***@host/path"),
        ("https://host/f?access_token=abc.def&x=1", "https://host/f?access_token=***&x=1"),
        ("https://host/f?x=1&authz=Bearer%20xyz", "https://host/f?x=1&authz=***"),
        (
            "s3://bucket/k?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA",
            "s3://bucket/k?X-Amz-Signature=***&X-Amz-Credential=***",
        ),
        (
            "root://host//f?xrd.wantprot=unix&password=hunter2",
            "root://host//f?xrd.wantprot=unix&password=***",
        ),
        ("file:///data/night/f.fits", "file:///data/night/f.fits"),
        (
            "root://host:1094//a b/ü.fits?svcClass=tape",
            "root://host:1094//a b/ü.fits?svcClass=tape",
        ),
    ],
)
def test_redact_hides_userinfo_and_secret_query_values(url: str, expected: str) -> None:
    assert redact(url) == expected


def test_redact_works_on_urls_inside_free_text() -> None:
    text = "failed to copy root://u:pw1@h//a -> https://h/b?token=tk2 (Authorization: Bearer abc)"
    cleaned = redact(text)
    assert "pw1" not in cleaned and "tk2" not in cleaned and "abc" not in cleaned
    assert "root://***@h//a" in cleaned


@pytest.mark.slow
def test_error_messages_never_contain_credentials(
    storage: Storage, xrootd: XRootDServer, tmp_path: Path, closed_port: int
) -> None:
    secret_remote = f"root://alice:s3cret@127.0.0.1:{xrootd.port}//nothing-here?authz=tok123"
    src = tmp_path / "src"
    src.write_bytes(b"1")
    closed = f"root://bob:hunter2@127.0.0.1:{closed_port}//x?access_token=tok456"
    attempts: list[Callable[[], object]] = [
        lambda: storage.stat(secret_remote),
        lambda: storage.checksum(secret_remote),
        lambda: storage.copy(secret_remote, file_url(tmp_path / "dst")),
        lambda: storage.copy(secret_remote, file_url(tmp_path / "dst"), size=1),
        lambda: storage.copy(file_url(src), closed, size=1),
        lambda: storage.stat(closed),
        lambda: list(storage.open_read(secret_remote)),
    ]
    for attempt in attempts:
        with pytest.raises(StorageError) as info:
            attempt()
        err = info.value
        text = f"{err} {err.url} {err!r}"
        for secret in ("s3cret", "tok123", "hunter2", "tok456"):
            assert secret not in text
        assert "\n" not in str(err)
        assert err.__cause__ is None and err.__suppress_context__  # no raw GError chained


# ----------------------------------------------------------------------------- errno mapping
# gfal2's own mock plugin fails real gfal2 calls with a chosen errno (?errno=N).


@pytest.mark.parametrize(
    ("errno", "code", "transient"),
    [
        (2, Code.SOURCE_MISSING, False),  # ENOENT
        (17, Code.DEST_WRITE_FAILED, False),  # EEXIST
        (13, Code.TRANSFER_FAILED, False),  # EACCES
        (1, Code.TRANSFER_FAILED, False),  # EPERM
        (110, Code.TRANSFER_TIMEOUT, True),  # ETIMEDOUT
        (111, Code.TRANSFER_FAILED, True),  # ECONNREFUSED
        (104, Code.TRANSFER_FAILED, True),  # ECONNRESET
        (11, Code.TRANSFER_FAILED, True),  # EAGAIN
        (113, Code.TRANSFER_FAILED, True),  # EHOSTUNREACH
        (101, Code.TRANSFER_FAILED, True),  # ENETUNREACH
        (70, Code.TRANSFER_FAILED, True),  # ECOMM
        (5, Code.TRANSFER_FAILED, True),  # EIO
        (16, Code.TRANSFER_FAILED, True),  # EBUSY
        (28, Code.DEST_WRITE_FAILED, True),  # ENOSPC
        (22, Code.TRANSFER_FAILED, False),  # EINVAL: anything else is permanent
    ],
)
def test_gfal2_errno_maps_to_code_and_transience(
    storage: Storage, errno: int, code: Code, transient: bool
) -> None:
    with pytest.raises(StorageError) as info:
        storage.stat(f"mock://localhost/f?errno={errno}")
    err = info.value
    assert not isinstance(err, Cancelled)
    assert (err.errno, err.code, err.transient) == (errno, code, transient)


def test_ecanceled_from_gfal2_raises_cancelled(storage: Storage) -> None:
    with pytest.raises(Cancelled) as info:
        storage.stat("mock://localhost/f?errno=125")
    assert info.value.code == Code.INTERRUPTED


@pytest.mark.parametrize(
    ("errno", "kind", "code", "transient"),
    [
        (110, StorageError, Code.TRANSFER_TIMEOUT, True),
        (13, StorageError, Code.TRANSFER_FAILED, False),
        (125, Cancelled, Code.INTERRUPTED, True),
    ],
    ids=["ETIMEDOUT", "EACCES", "ECANCELED"],
)
def test_copy_failures_reported_by_the_plugin_are_classified(
    storage: Storage, errno: int, kind: type[StorageError], code: Code, transient: bool
) -> None:
    dst = f"mock://localhost/d?errno=2&transfer_errno={errno}"  # errno=2: dst does not exist yet
    with pytest.raises(StorageError) as info:
        storage.copy("mock://localhost/s?size=100", dst)
    err = info.value
    assert type(err) is kind
    assert (err.errno, err.code, err.transient) == (errno, code, transient)


@pytest.mark.parametrize("locality", ["NEARLINE", "ONLINE_AND_NEARLINE"])
def test_status_reports_the_user_status_attribute(storage: Storage, locality: str) -> None:
    assert storage.status(f"mock://localhost/f?size=10&user.status={locality}") == locality


def test_cancel_stops_an_open_read_stream(storage: Storage, side: Side) -> None:
    side.put("f", DATA)
    chunks = storage.open_read(side.url("f"), chunk_size=64 * 1024)
    assert len(next(chunks)) == 64 * 1024
    assert storage.cancel() == 1
    with pytest.raises(Cancelled):
        for _ in chunks:
            pass
    assert storage.cancel() == 0  # nothing left registered
    assert sum(len(c) for c in storage.open_read(side.url("f"))) == len(DATA)
