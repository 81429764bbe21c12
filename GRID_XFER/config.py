"""Configuration: one YAML file, environment overrides, validated up front.

Search order for the file: ``--config``, ``$GRIDXFER_CONFIG``, ``./gridxfer.yaml``,
``$XDG_CONFIG_HOME/gridxfer/config.yaml``. Missing file means defaults, which point
at the embedded server. A bad value fails before any work starts, with the key
named, so a night never half-runs on a typo.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from GRID_XFER.errors import ConfigError
from GRID_XFER.nightly_config import NightlyConfig
from GRID_XFER.urls import PlainURL, http_url_problem

DEFAULT_PORT = 5984
# Storage secrets come from these (or their files), never from this file's keys.
SFTP_PASSPHRASE_ENV = "GRIDXFER_SFTP_PASSPHRASE"
S3_SECRET_ENV = "GRIDXFER_S3_SECRET_KEY"
STORAGE_SECRET_ENV = (SFTP_PASSPHRASE_ENV, S3_SECRET_ENV)
# gfal2 option names that hold a secret (SECRET_KEY, PASSWORD, PASSPHRASE, a token).
_SECRET_OPTION = re.compile(r"PASSW|SECRET|PASSPHRASE|TOKEN$", re.I)


def read_secret_file(path: Path, setting: str) -> str:
    """A secret kept in a file (read when needed); ConfigError naming ``setting``."""
    try:
        return path.expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None


def _http_url(v: str, credentials_from: str) -> str:
    """A service URL by the one URL policy (GRID_XFER/urls.py). The message never
    quotes the URL: pydantic's error would, and it may hold the secret refused."""
    problem = http_url_problem(v, credentials_from)
    if problem:
        raise ValueError(problem)
    return v


class _Section(BaseModel):
    # No infinities or NaN (YAML's .inf/.nan): a lease or timeout of .inf would
    # only fail later, when a token or a request is made of it.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CouchDBConfig(_Section):
    # One coordinator URL (a load balancer counts as one), or several: a list, or
    # comma-separated in GRIDXFER_COUCHDB_URL. Requests fail over between them.
    url: list[str] = [f"http://127.0.0.1:{DEFAULT_PORT}"]
    db: str = "gridxfer"
    user: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    auth: Literal["cookie", "basic"] = "cookie"
    timeout: float = Field(30.0, gt=0)
    retries: int = Field(4, ge=0)
    backoff: float = Field(0.5, gt=0)
    # Who else may use the database (CouchDB's _security members, set by `gridxfer
    # init` run with admin credentials): workers and status need no more.
    member_names: list[str] = []
    member_roles: list[str] = []

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, v: Any) -> list[str]:
        items = v.split(",") if isinstance(v, str) else v
        if not isinstance(items, list) or not items:
            raise ValueError("must be a URL or a list of URLs")
        urls = []
        for item in items:
            if not isinstance(item, str):
                raise ValueError("must be a URL or a list of URLs")
            urls.append(
                _http_url(
                    item.strip(),
                    "couchdb.user and GRIDXFER_COUCHDB_PASSWORD or couchdb.password_file",
                ).rstrip("/")
            )
        if len(set(urls)) != len(urls):
            raise ValueError("lists the same URL twice")
        return urls

    @property
    def primary(self) -> str:
        """The first coordinator URL: the one shown to people."""
        return self.url[0]

    @field_validator("db")
    @classmethod
    def _db(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[a-z][a-z0-9_$()+/-]*", v):
            raise ValueError("must start with a lower-case letter and hold only a-z 0-9 _$()+-/")
        return v

    def secret(self) -> str | None:
        """The password, read when needed (from a file if so configured)."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return read_secret_file(self.password_file, "couchdb.password_file")
        return None


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    data_dir: Path = Path(".gridxfer/couchdb")
    in_memory: bool = False
    # Where pouchdb-server was installed by scripts/setup (node_modules/.bin inside).
    prefix: Path | None = None
    start_timeout: float = Field(30.0, gt=0)


class WorkerConfig(_Section):
    lease_seconds: float = Field(300.0, gt=0)
    heartbeat_seconds: float | None = Field(None, gt=0)
    max_attempts: int = Field(3, ge=1)
    backoff_base: float = Field(30.0, ge=0)
    backoff_max: float = Field(3600.0, ge=0)
    claim_window: int = Field(64, ge=1, le=10000)
    idle_sleep: float = Field(10.0, gt=0)
    # How long a worker rides out a database outage before giving up.
    outage_seconds: float = Field(900.0, gt=0)
    # Default: "command" when a command is configured, else "transfer".
    task: Literal["command", "noop", "transfer"] | None = None
    command: list[str] | str | None = None
    task_timeout: float | None = Field(None, gt=0)

    @property
    def heartbeat(self) -> float:
        return self.heartbeat_seconds or max(1.0, self.lease_seconds / 4)


class TransferConfig(_Section):
    # Where the manifest's SHA-256 is computed: streamed from the source while
    # gfal2 copies (tied to the copy by end-to-end ADLER32), or read back from
    # the destination afterwards (slower, trusts only the written bytes).
    verify: Literal["source", "destination"] = "source"
    manifest: Literal["sha256", "adler32"] = "sha256"
    # Copy timeout: base_timeout + size / min_rate (bytes per second).
    base_timeout: float = Field(60.0, gt=0)
    min_rate: float = Field(1_000_000.0, gt=0)
    mismatch_retries: int = Field(1, ge=0)
    scan_threads: int = Field(16, ge=1, le=256)
    group: int = Field(10, ge=1)
    # Servers of one family (root/root, https-davs/https-davs) copy between themselves;
    # the copy is then read back for the SHA-256 (or only ADLER32 compared: "checksum").
    third_party: Literal["auto", "never"] = "auto"
    third_party_verify: Literal["read-back", "checksum"] = "read-back"


class SftpConfig(_Section):
    user: str | None = None
    private_key: Path | None = None
    # The key's passphrase: GRIDXFER_SFTP_PASSPHRASE, else this file (chmod 600).
    passphrase_file: Path | None = None


class S3Config(_Section):
    access_key: str | None = None
    # The secret key: GRIDXFER_S3_SECRET_KEY, else this file (chmod 600).
    secret_key_file: Path | None = None
    region: str | None = None
    path_style: bool = True


class StorageConfig(_Section):
    """How gfal2 reaches the endpoints (docs/configuration.md#storage)."""

    # The CA directory (X509_CERT_DIR) for https/davs; default: the environment's.
    ca_dir: Path | None = None
    # The Credential header of an HTTP third-party copy ("none": no delegation).
    http_tpc_credential: str = Field("none", pattern=r"^[A-Za-z0-9_-]+$")
    sftp: SftpConfig = SftpConfig()
    s3: S3Config = S3Config()
    # Any other gfal2 option, "GROUP:KEY": value (e.g. "HTTP PLUGIN:RETRIEVE_BEARER_TOKEN").
    gfal2: dict[str, str | bool | int | list[str]] = {}

    @field_validator("gfal2")
    @classmethod
    def _gfal2(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            group, _, name = key.rpartition(":")
            if not group or not name:
                raise ValueError(f"{key!r}: write gfal2 options as 'GROUP:KEY'")
            if _SECRET_OPTION.search(name) and isinstance(value, str):
                raise ValueError(f"{key!r}: secrets go in the environment or a file, not here")
        return v


class StagingConfig(_Section):
    """Tape: recall of sources before copying, confirmation of archiving after it."""

    # Ask the source for each claimed token's locality (user.status) and stage
    # NEARLINE files first. file:// sources are never asked (always on disk).
    check: bool = True
    method: Literal["gfal2", "stager"] = "gfal2"
    pin_seconds: int = Field(86400, ge=0)
    # A recall not finished this long after the request: error 23.
    timeout_seconds: float = Field(86400.0, gt=0)
    poll_interval: float = Field(60.0, gt=0)
    # Files per bring_online / bring_online_poll call (XRootD answers at most ~10).
    batch: int = Field(10, ge=1, le=10)
    # Parallel locality queries (state-all, the staging check).
    threads: int = Field(16, ge=1, le=256)
    # state-all over many files of a slow storage: this many processes (1: threads only).
    processes: int = Field(16, ge=1, le=64)
    # The LTA-style XML-RPC stager; credentials never go here (docs/staging.md).
    stager_url: str = "https://webportal.astron.nl/service-public/xmlrpc"
    stager_timeout: float = Field(60.0, gt=0)
    stager_retries: int = Field(3, ge=0)
    # Release the pins of staged files once their token's transfer is done.
    release_pins: bool = True
    # The destination is tape-backed: done only once every file is on tape.
    tape_destination: bool = False
    archive_timeout: float = Field(86400.0, gt=0)

    @field_validator("stager_url")
    @classmethod
    def _stager_url(cls, v: str) -> str:
        return _http_url(v, "~/.stagingrc or GRIDXFER_STAGER_USER / GRIDXFER_STAGER_PASSWORD")


class Config(_Section):
    couchdb: CouchDBConfig = CouchDBConfig()
    server: ServerConfig = ServerConfig()
    worker: WorkerConfig = WorkerConfig()
    transfer: TransferConfig = TransferConfig()
    staging: StagingConfig = StagingConfig()
    storage: StorageConfig = StorageConfig()
    nightly: NightlyConfig = NightlyConfig()
    # Defaults for `tokens create`, stored in every token: the URL policy applies.
    source: PlainURL | None = None
    destination: PlainURL | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    path: Path | None = Field(None, exclude=True)


# Environment variable -> dotted key.
ENV_OVERRIDES: dict[str, str] = {
    "GRIDXFER_COUCHDB_URL": "couchdb.url",
    "GRIDXFER_COUCHDB_DB": "couchdb.db",
    "GRIDXFER_COUCHDB_USER": "couchdb.user",
    "GRIDXFER_COUCHDB_PASSWORD": "couchdb.password",
    "GRIDXFER_COUCHDB_PASSWORD_FILE": "couchdb.password_file",
    "GRIDXFER_SERVER_PORT": "server.port",
    "GRIDXFER_SERVER_DATA_DIR": "server.data_dir",
    "GRIDXFER_SERVER_PREFIX": "server.prefix",
    "GRIDXFER_LEASE_SECONDS": "worker.lease_seconds",
    "GRIDXFER_MAX_ATTEMPTS": "worker.max_attempts",
    "GRIDXFER_SOURCE": "source",
    "GRIDXFER_DESTINATION": "destination",
    "GRIDXFER_STAGING_METHOD": "staging.method",
    "GRIDXFER_STAGER_URL": "staging.stager_url",
}


def find_config_file(
    explicit: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None
) -> Path | None:
    env = dict(os.environ) if env is None else env
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p
    named = env.get("GRIDXFER_CONFIG")
    if named:
        p = Path(named).expanduser()
        if not p.is_file():
            raise ConfigError(f"GRIDXFER_CONFIG points to a missing file: {p}")
        return p
    candidates = [Path("gridxfer.yaml")]
    xdg = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    candidates.append(Path(xdg) / "gridxfer" / "config.yaml")
    return next((c for c in candidates if c.is_file()), None)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{key}: must be a mapping")
        node = child
    node[leaf] = value


def _format_validation(exc: ValidationError, origin: str) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"invalid configuration in {origin}: {key}: {msg}{more}"


def load_config(
    path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None
) -> Config:
    """Read, override and validate; raise ConfigError naming the bad key."""
    env = dict(os.environ) if env is None else env
    file = find_config_file(path, env)
    data: dict[str, Any] = {}
    origin = "defaults"
    if file is not None:
        origin = str(file)
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {file}:{where} is not valid YAML") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {file}: top level must be a mapping")
        data = loaded
    overridden = []
    for var, dotted in ENV_OVERRIDES.items():
        if env.get(var):
            _set_dotted(data, dotted, env[var])
            overridden.append(var)
    if overridden:
        origin += " + environment (" + ", ".join(overridden) + ")"
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, origin)) from None
    cfg.path = file
    return cfg
