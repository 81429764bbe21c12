"""What each protocol's gfal2 plugin can be trusted with, and the settings its contexts get.

Facts measured with gfal2 2.21.3 on Debian 12 (docs/transfer.md, "Endpoints"):

- **sftp** ignores libssh2's short writes: a write or copy buffer over 30000 bytes
  (libssh2's largest SFTP packet) ends truncated or hangs *while reporting success*.
  Writes to sftp therefore go in pieces of at most :data:`SFTP_WRITE` bytes and a
  gfal2 copy involving sftp gets ``CORE:COPY_BUFFERSIZE`` capped to it. The plugin
  computes no checksum and never checks the server's host key.
- **s3** computes only MD5 (the ETag, and not for multipart objects).
- **HTTP third-party copy**: gfal2 asks the active endpoint for GridSite
  delegation (``Credential: gridsite``) unless told otherwise; XRootD refuses it.

A destination that computes no ADLER32 is verified by reading it back, so none of
this is taken on trust; the settings here only make the copies come out right.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import gfal2

from GRID_XFER.config import (
    S3_SECRET_ENV,
    SFTP_PASSPHRASE_ENV,
    StorageConfig,
    read_secret_file,
)

SFTP_WRITE = 30000  # libssh2's MAX_SFTP_OUTGOING_SIZE
HTTP_FAMILY = frozenset({"http", "https", "dav", "davs"})
ROOT_FAMILY = frozenset({"root", "roots", "xroot", "xroots"})

Value = str | int | bool | list[str]


def scheme(url: str) -> str:
    return url.partition("://")[0].lower()


def write_limit(url: str) -> int | None:
    """The largest write the plugin for ``url`` stores in full, where there is one."""
    return SFTP_WRITE if scheme(url) == "sftp" else None


def third_party_family(src: str, dst: str) -> str | None:
    """``"root"`` or ``"http"`` when the two servers can copy between themselves."""
    a, b = scheme(src), scheme(dst)
    if a in ROOT_FAMILY and b in ROOT_FAMILY:
        return "root"
    if a in HTTP_FAMILY and b in HTTP_FAMILY:
        return "http"
    return None


def _host_group(prefix: str, url: str) -> str:
    return f"{prefix}:{(urlsplit(url).hostname or '').upper()}"


@dataclass(frozen=True)
class Settings:
    """gfal2 options every context of a Storage gets (``(group, key) -> value``).

    ``secrets`` are set the same way but never shown: ``repr`` and ``describe``
    leave them out. ``http_tpc_credential`` is the ``Credential`` header sent
    to both ends of an HTTP third-party copy (``none``: no delegation asked).
    """

    options: dict[tuple[str, str], Value] = field(default_factory=dict)
    secrets: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    ca_dir: str | None = None
    http_tpc_credential: str = "none"

    def apply(self, ctx: gfal2.Gfal2Context) -> None:
        for (group, key), value in [*self.options.items(), *self.secrets.items()]:
            set_option(ctx, group, key, value)

    def export_ca_dir(self) -> None:
        """davix reads X509_CERT_DIR when the http plugin loads, not from an option."""
        if self.ca_dir:
            os.environ["X509_CERT_DIR"] = self.ca_dir

    def describe(self) -> list[str]:
        shown = [f"{g}:{k}={v}" for (g, k), v in sorted(self.options.items())]
        return shown + [f"{g}:{k}=***" for (g, k) in sorted(self.secrets)]


def set_option(ctx: gfal2.Gfal2Context, group: str, key: str, value: Value) -> None:
    if isinstance(value, bool):
        ctx.set_opt_boolean(group, key, value)
    elif isinstance(value, int):
        ctx.set_opt_integer(group, key, value)
    elif isinstance(value, list):
        ctx.set_opt_string_list(group, key, value)
    else:
        ctx.set_opt_string(group, key, value)


def prepare_copy(
    ctx: gfal2.Gfal2Context, src: str, dst: str, *, third_party: bool, credential: str
) -> None:
    """Per-copy options: sftp's buffer cap, and a strict third-party copy.

    A third-party copy must not fall back to streaming through this process
    unnoticed: the caller chose it because the data should not pass here, and
    verifies differently when it does not.
    """
    if "sftp" in (scheme(src), scheme(dst)):
        ctx.set_opt_integer("CORE", "COPY_BUFFERSIZE", SFTP_WRITE)
    if not third_party or third_party_family(src, dst) != "http":
        return
    ctx.set_opt_boolean("HTTP PLUGIN", "ENABLE_STREAM_COPY", False)
    ctx.set_opt_boolean("HTTP PLUGIN", "ENABLE_FALLBACK_TPC_COPY", False)
    ctx.set_opt_boolean("HTTP PLUGIN", "ENABLE_REMOTE_COPY", True)
    ctx.set_opt_string("HTTP PLUGIN", "DEFAULT_COPY_MODE", "3rd pull")
    for url in (src, dst):
        group = "DAV" if scheme(url).startswith("dav") else "HTTP"
        ctx.set_opt_string_list(_host_group(group, url), "HEADERS", [f"Credential: {credential}"])


def _secret(env: Mapping[str, str], name: str, path: Path | None, key: str) -> str | None:
    if env.get(name):
        return env[name]
    return None if path is None else read_secret_file(path, key)


def settings_from(cfg: StorageConfig, env: Mapping[str, str] = os.environ) -> Settings:
    """The gfal2 settings of the ``storage:`` section; secrets from ``env`` or their files.

    The sftp options live in ``SFTP PLUGIN`` (its ``PASSWORD`` is taken as a key
    file by gfal2 2.21, so only key authentication is offered); the S3 ones in
    ``S3`` for every host, with path-style addressing, which listings need.
    """
    options: dict[tuple[str, str], Value] = {}
    secrets: dict[tuple[str, str], str] = {}
    for dotted, value in cfg.gfal2.items():
        group, _, key = dotted.rpartition(":")
        options[(group, key)] = value
    if cfg.sftp.user:
        options[("SFTP PLUGIN", "USER")] = cfg.sftp.user
    if cfg.sftp.private_key:
        options[("SFTP PLUGIN", "PRIVKEY")] = str(cfg.sftp.private_key.expanduser())
    passphrase = _secret(
        env, SFTP_PASSPHRASE_ENV, cfg.sftp.passphrase_file, "storage.sftp.passphrase_file"
    )
    if passphrase:
        secrets[("SFTP PLUGIN", "PASSPHRASE")] = passphrase
    s3 = cfg.s3
    if s3.access_key:
        options[("S3", "ACCESS_KEY")] = s3.access_key
    if s3.region:
        options[("S3", "REGION")] = s3.region
    options[("S3", "ALTERNATE")] = s3.path_style
    secret = _secret(env, S3_SECRET_ENV, s3.secret_key_file, "storage.s3.secret_key_file")
    if secret:
        secrets[("S3", "SECRET_KEY")] = secret
    return Settings(
        options=options,
        secrets=secrets,
        ca_dir=str(cfg.ca_dir.expanduser()) if cfg.ca_dir else None,
        http_tpc_credential=cfg.http_tpc_credential,
    )
