"""What the storage layer knows about each protocol, and how the `storage:` section
becomes gfal2 settings: secrets from the environment or a file, never shown."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import gfal2
import pytest
from pydantic import ValidationError

from GRID_XFER.config import Config, StorageConfig
from GRID_XFER.errors import Code, ConfigError, StorageError
from GRID_XFER.storage import Storage
from GRID_XFER.storage.classify import classify
from GRID_XFER.storage.operation import new_context
from GRID_XFER.storage.protocols import (
    SFTP_WRITE,
    prepare_copy,
    settings_from,
    third_party_family,
    write_limit,
)


@pytest.mark.parametrize(
    ("src", "dst", "family"),
    [
        ("root://a//x", "root://b//y", "root"),
        ("xroot://a//x", "roots://b//y", "root"),
        ("davs://a/x", "https://b/y", "http"),
        ("https://a/x", "davs://b/y", "http"),
        ("file:///x", "davs://b/y", None),
        ("root://a//x", "davs://b/y", None),
        ("s3://a/b/x", "davs://b/y", None),
        ("sftp://a/x", "sftp://b/y", None),
    ],
)
def test_third_party_only_between_servers_of_one_family(
    src: str, dst: str, family: str | None
) -> None:
    assert third_party_family(src, dst) == family


def test_only_sftp_writes_are_cut_to_libssh2s_packet() -> None:
    assert write_limit("sftp://h:22/data/x") == SFTP_WRITE == 30000
    assert write_limit("SFTP://h/x") == SFTP_WRITE
    for url in ("file:///x", "root://h//x", "davs://h/x", "s3://h/b/x"):
        assert write_limit(url) is None


def test_settings_take_secrets_from_the_environment_and_never_show_them(tmp_path: Path) -> None:
    cfg = StorageConfig.model_validate(
        {
            "ca_dir": str(tmp_path),
            "sftp": {"user": "night", "private_key": str(tmp_path / "id")},
            "s3": {"access_key": "AK", "region": "eu-west-1"},
            "gfal2": {"HTTP PLUGIN:RETRIEVE_BEARER_TOKEN": False, "CORE:CHECKSUM_TIMEOUT": 60},
        }
    )
    env = {"GRIDXFER_S3_SECRET_KEY": "s3-hush", "GRIDXFER_SFTP_PASSPHRASE": "ssh-hush"}
    settings = settings_from(cfg, env)
    assert settings.options[("SFTP PLUGIN", "USER")] == "night"
    assert settings.options[("S3", "ACCESS_KEY")] == "AK"
    assert settings.options[("S3", "ALTERNATE")] is True
    assert settings.options[("CORE", "CHECKSUM_TIMEOUT")] == 60
    assert settings.secrets == {
        ("S3", "SECRET_KEY"): "s3-hush",
        ("SFTP PLUGIN", "PASSPHRASE"): "ssh-hush",
    }
    shown = repr(settings) + " ".join(settings.describe())
    assert "hush" not in shown and "S3:SECRET_KEY=***" in shown
    # Every context gets them (read back from a real gfal2 context).
    ctx = new_context(settings)
    assert ctx.get_opt_string("S3", "SECRET_KEY") == "s3-hush"
    assert ctx.get_opt_string("SFTP PLUGIN", "USER") == "night"
    assert ctx.get_opt_boolean("HTTP PLUGIN", "RETRIEVE_BEARER_TOKEN") is False


def test_secret_files_are_read_and_an_unreadable_one_is_a_config_error(tmp_path: Path) -> None:
    secret = tmp_path / "s3.secret"
    secret.write_text("from-file\n")
    cfg = StorageConfig.model_validate({"s3": {"secret_key_file": str(secret)}})
    assert settings_from(cfg, {}).secrets[("S3", "SECRET_KEY")] == "from-file"
    assert (
        settings_from(cfg, {"GRIDXFER_S3_SECRET_KEY": "env"}).secrets[("S3", "SECRET_KEY")] == "env"
    )
    cfg = StorageConfig.model_validate({"s3": {"secret_key_file": str(tmp_path / "none")}})
    with pytest.raises(ConfigError, match="storage.s3.secret_key_file: cannot read"):
        settings_from(cfg, {})


@pytest.mark.parametrize(
    "key", ["S3:SECRET_KEY", "SFTP PLUGIN:PASSWORD", "SFTP PLUGIN:PASSPHRASE", "BEARER:TOKEN"]
)
def test_secrets_are_refused_among_plain_gfal2_options(key: str) -> None:
    with pytest.raises(ValidationError, match="secrets go in the environment or a file"):
        Config.model_validate({"storage": {"gfal2": {key: "hush"}}})


def test_gfal2_options_must_name_a_group() -> None:
    with pytest.raises(ValidationError, match="GROUP:KEY"):
        Config.model_validate({"storage": {"gfal2": {"TIMEOUT": 3}}})


def test_a_strict_http_third_party_copy_never_falls_back_to_streaming() -> None:
    ctx = gfal2.creat_context()
    prepare_copy(
        ctx, "davs://a.example/x", "https://b.example/y", third_party=True, credential="none"
    )
    assert ctx.get_opt_boolean("HTTP PLUGIN", "ENABLE_STREAM_COPY") is False
    assert ctx.get_opt_boolean("HTTP PLUGIN", "ENABLE_FALLBACK_TPC_COPY") is False
    assert ctx.get_opt_string_list("DAV:A.EXAMPLE", "HEADERS") == ["Credential: none"]
    assert ctx.get_opt_string_list("HTTP:B.EXAMPLE", "HEADERS") == ["Credential: none"]


def test_an_sftp_copy_gets_its_buffer_capped() -> None:
    ctx = gfal2.creat_context()
    prepare_copy(ctx, "file:///x", "sftp://h/y", third_party=False, credential="none")
    assert ctx.get_opt_integer("CORE", "COPY_BUFFERSIZE") == SFTP_WRITE


@pytest.mark.parametrize(
    "message",
    [
        "Server certificate verification failed: issuer is not trusted",
        "SSL certificate problem: unable to get local issuer certificate",
        "All supported authentication methods failed",
    ],
)
def test_an_untrusted_server_or_a_refused_key_is_permanent_config(message: str) -> None:
    assert classify(112, message, copy=True) == (Code.CONFIG, False)
    assert classify(13, message) == (Code.CONFIG, False)


def _sigterm_blocked_after(make: str) -> bool:
    code = (
        "import signal, gfal2\n"
        "from GRID_XFER.storage.operation import new_context\n"
        f"{make}\n"
        "print(signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def test_making_a_context_leaves_the_threads_signal_mask_alone() -> None:
    """The srm and gridftp plugins (installed by scripts/setup) block SIGTERM and
    SIGINT while they load; a worker would then ignore both, and so would every
    command it starts. Each case runs in a fresh process: plugins load once."""
    if not _sigterm_blocked_after("gfal2.creat_context()"):
        pytest.skip("no gfal2 plugin here blocks signals (srm/gridftp plugins not installed)")
    assert not _sigterm_blocked_after("new_context(); new_context()")


def test_srm_and_gsiftp_urls_reach_their_plugins_and_a_missing_proxy_is_permanent() -> None:
    """scripts/setup installs the srm and gridftp plugins: their URLs are understood
    (no server runs here, so they fail at connecting or logging in, not before)."""
    storage = Storage()
    with pytest.raises(StorageError) as unknown:
        storage.stat("nosuch://127.0.0.1:1/x")
    assert unknown.value.errno == errno.EPROTONOSUPPORT
    with pytest.raises(StorageError) as gsiftp:
        storage.stat(f"gsiftp://127.0.0.1:{closed_port()}/data/x")
    assert gsiftp.value.errno != errno.EPROTONOSUPPORT and "Connection refused" in str(gsiftp.value)
    assert gsiftp.value.transient
    with pytest.raises(StorageError) as srm:
        storage.stat(f"srm://127.0.0.1:{closed_port()}/pnfs/x")
    assert srm.value.errno != errno.EPROTONOSUPPORT
    if "credentials" in str(srm.value):  # no grid proxy on this machine
        assert (srm.value.code, srm.value.transient) == (Code.CONFIG, False)


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
