"""Manifest parsing and streaming hashes (pure Python, no servers)."""

from __future__ import annotations

import hashlib
import itertools
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from GRID_XFER.checksum import (
    ALGORITHMS,
    Hasher,
    ManifestError,
    hash_chunks,
    hash_file,
    manifest_name,
    parse_manifest,
)
from GRID_XFER.errors import Code, ConfigError

A = "a" * 64
B = "b" * 64
C = "0123456789abcdef" * 4


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


# ----------------------------------------------------------------------------- manifest names


def test_manifest_name_follows_desi_convention_for_sha256() -> None:
    assert manifest_name("00012345", "sha256") == "checksum-00012345.sha256sum"


def test_manifest_name_for_adler32_accepts_gfal2_spelling() -> None:
    assert manifest_name("00012345", "ADLER32") == "checksum-00012345.adler32"


def test_unknown_algorithm_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="md5"):
        manifest_name("1", "md5")
    with pytest.raises(ConfigError):
        parse_manifest("", "crc32")


# ----------------------------------------------------------------------------- parsing


def test_parse_text_and_binary_mode_lines() -> None:
    text = f"{A}  desi-00012345.fits.fz\n{B} *guide-00012345.fits.fz\n"
    assert parse_manifest(text, "sha256") == {
        "desi-00012345.fits.fz": A,
        "guide-00012345.fits.fz": B,
    }


def test_parse_tolerates_crlf_line_endings() -> None:
    text = f"{A}  one.fits\r\n{B}  two.fits\r\n"
    assert parse_manifest(text, "sha256") == {"one.fits": A, "two.fits": B}


def test_parse_normalises_upper_case_hex_to_lower() -> None:
    assert parse_manifest(f"{C.upper()}  x.fits\n", "sha256") == {"x.fits": C}


def test_parse_keeps_spaces_and_non_ascii_in_names() -> None:
    text = f"{A}  my file.fits\n{B}  Ångström ü 観測.fits\n{C}  trailing space \n"
    assert parse_manifest(text, "sha256") == {
        "my file.fits": A,
        "Ångström ü 観測.fits": B,
        "trailing space ": C,
    }


def test_parse_accepts_subdirectories_and_strips_dot_slash() -> None:
    text = f"{A}  sub/dir/file.fits\n{B}  ./top.fits\n"
    assert parse_manifest(text, "sha256") == {"sub/dir/file.fits": A, "top.fits": B}


def test_parse_skips_blank_lines_and_comments() -> None:
    text = f"# made by the DESI night pipeline\n\n   \n{A}  a.fits\n  # indented comment\n\n"
    assert parse_manifest(text, "sha256") == {"a.fits": A}


def test_parse_empty_manifest_gives_empty_mapping() -> None:
    assert parse_manifest("", "sha256") == {}


def test_parse_ignores_byte_order_mark() -> None:
    assert parse_manifest(f"\ufeff{A}  a.fits\n", "sha256") == {"a.fits": A}


def test_parse_adler32_manifest() -> None:
    text = "0000000A  a.fits\r\n71b90ae9 *b c.fits\n"
    assert parse_manifest(text, "adler32") == {"a.fits": "0000000a", "b c.fits": "71b90ae9"}


def test_parse_unescapes_gnu_escaped_names() -> None:
    text = f"\\{A}  back\\\\slash\\nnewline.fits\n"
    assert parse_manifest(text, "sha256") == {"back\\slash\nnewline.fits": A}


def test_parse_same_file_twice_with_same_checksum_is_fine() -> None:
    assert parse_manifest(f"{A}  a.fits\n{A}  ./a.fits\n", "sha256") == {"a.fits": A}


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (f"{A}  ok.fits\n{A[:-1]}  short.fits\n", 2, "64 hex digits, got 63"),
        (f"{A}0  long.fits\n", 1, "64 hex digits, got 65"),
        (f"# c\n\n{A}\n", 3, "no file name"),
        (f"{A}  \n", 1, "no file name"),
        (f"{A}  a.fits\nnot a checksum line\n", 2, "expected"),
        (f"{'g' * 64}  a.fits\n", 1, "expected"),
        (f"{A}\tx.fits\n", 1, "expected"),
        (f"{A}  /etc/passwd\n", 1, "not a relative path"),
        (f"{A}  ../../escape.fits\n", 1, "not a relative path"),
        (f"{A}  a//b.fits\n", 1, "not a relative path"),
        (f"{A}  a.fits\r\n{B}  a.fits\r\n", 2, "different checksum"),
    ],
    ids=[
        "short-hex",
        "long-hex",
        "hex-only",
        "blank-name",
        "garbage",
        "non-hex",
        "tab-separator",
        "absolute",
        "dotdot",
        "empty-segment",
        "conflicting-duplicate",
    ],
)
def test_invalid_line_raises_manifest_error_naming_the_line(
    text: str, line: int, fragment: str
) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "sha256", source="checksum-1.sha256sum")
    message = str(info.value)
    assert f"checksum-1.sha256sum line {line}:" in message
    assert fragment in message
    assert "\n" not in message
    assert info.value.code == Code.MANIFEST_MISSING


def test_adler32_manifest_rejects_sha256_length_values() -> None:
    with pytest.raises(ManifestError, match="line 1: adler32 checksum must have 8 hex digits"):
        parse_manifest(f"{A}  a.fits\n", "adler32")


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils sha256sum not available")
def test_parse_real_sha256sum_output_with_awkward_names(tmp_path: Path) -> None:
    names = [
        "plain.fits",
        "with space.fits",
        "ünïcödé 観測.fits",
        "back\\slash.fits",
        "new\nline.fits",
    ]
    (tmp_path / "sub").mkdir()
    names.append("sub/nested.fits")
    expected = {}
    for i, name in enumerate(names):
        data = f"exposure {i}".encode()
        (tmp_path / name).write_bytes(data)
        expected[name] = sha(data)
    out = subprocess.run(
        ["sha256sum", "--", *names], cwd=tmp_path, check=True, capture_output=True
    ).stdout.decode()
    assert parse_manifest(out, "sha256") == expected


# ----------------------------------------------------------------------------- hashing


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_hash_file_matches_reference_across_chunk_boundaries(tmp_path: Path, algo: str) -> None:
    data = bytes(range(256)) * 1000 + b"tail"
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    reference = sha(data) if algo == "sha256" else adler(data)
    assert hash_file(path, algo, chunk_size=4096) == reference
    assert hash_file(path, algo) == reference


@pytest.mark.parametrize(("algo", "digest"), [("sha256", sha(b"")), ("adler32", "00000001")])
def test_hash_of_empty_input(tmp_path: Path, algo: str, digest: str) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert hash_file(path, algo) == digest
    assert hash_chunks([], algo) == digest


def test_adler32_hex_is_zero_padded_to_eight_digits() -> None:
    # adler32(b"\x00") == 0x00010001: needs padding to stay 8 digits.
    assert hash_chunks([b"\x00"], "adler32") == "00010001"


def test_hasher_accepts_gfal2_style_upper_case_name() -> None:
    hasher = Hasher("ADLER32")
    hasher.update(memoryview(b"abc"))
    assert hasher.hexdigest() == adler(b"abc")


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=5000),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=20),
    algo=st.sampled_from(sorted(ALGORITHMS)),
)
def test_hash_chunks_is_independent_of_chunking(data: bytes, cuts: list[int], algo: str) -> None:
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    assert b"".join(chunks) == data
    reference = sha(data) if algo == "sha256" else adler(data)
    assert hash_chunks(chunks, algo) == reference
    assert hash_chunks([memoryview(c) for c in chunks], algo) == reference
