"""Configuration: file discovery, environment overrides, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from GRID_XFER.config import load_config
from GRID_XFER.errors import ConfigError


def test_defaults_point_at_the_embedded_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert cfg.couchdb.url == ["http://127.0.0.1:5984"] and cfg.server.port == 5984
    assert cfg.path is None


def test_file_then_environment_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "couchdb: {url: 'http://db.example:5984', db: nights}\nworker: {max_attempts: 7}\n"
    )
    cfg = load_config(
        f,
        env={
            "GRIDXFER_COUCHDB_DB": "other",
            "GRIDXFER_COUCHDB_USER": "dm",
            "GRIDXFER_COUCHDB_PASSWORD": "pw",
        },
    )
    assert (cfg.couchdb.url, cfg.couchdb.db, cfg.worker.max_attempts) == (
        ["http://db.example:5984"],
        "other",
        7,
    )
    assert cfg.couchdb.secret() == "pw"
    assert "pw" not in repr(cfg) and "pw" not in cfg.model_dump_json()


def test_gridxfer_config_variable_and_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gridxfer.yaml").write_text("couchdb: {db: local}\n")
    assert load_config(env={}).couchdb.db == "local"
    other = tmp_path / "o.yaml"
    other.write_text("couchdb: {db: fromenv}\n")
    assert load_config(env={"GRIDXFER_CONFIG": str(other)}).couchdb.db == "fromenv"


def test_password_file_is_read_when_needed(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    cfg = load_config(env={"GRIDXFER_COUCHDB_PASSWORD_FILE": str(pw), "GRIDXFER_CONFIG": ""})
    assert cfg.couchdb.secret() == "s3cret"
    pw.unlink()
    with pytest.raises(ConfigError, match="password_file: cannot read"):
        cfg.couchdb.secret()


@pytest.mark.parametrize(
    "text, message",
    [
        ("worker: {lease_seconds: -5}", "worker.lease_seconds: Input should be greater than 0"),
        ("worker: {leese_seconds: 5}", "worker.leese_seconds: unknown key"),
        ("couchdb: {url: 'ftp://x'}", "couchdb.url: must be an http:// or https:// URL"),
        ("couchdb: {url: 'http://u:pw@host:5984'}", "couchdb.url: must not carry credentials"),
        (
            "couchdb: {url: ['http://a:5984', 'http://u:pw@b:5984']}",
            "couchdb.url: must not carry credentials",
        ),
        (
            "couchdb: {url: 'http://a:5984/?password=x'}",
            "couchdb.url: must not carry a query string",
        ),
        ("couchdb: {url: 'http://a:99999'}", "couchdb.url: has an invalid port"),
        (
            "couchdb: {url: ['http://a:5984', 'http://a:5984']}",
            "couchdb.url: lists the same URL twice",
        ),
        ("couchdb: {url: []}", "couchdb.url: must be a URL or a list of URLs"),
        ("couchdb: {db: 'Bad Name'}", "couchdb.db: must start with a lower-case letter"),
        ("server: {port: 70000}", "server.port: Input should be less than or equal to 65535"),
        ("worker: {lease_seconds: .inf}", "worker.lease_seconds: Input should be a finite number"),
        ("worker: {backoff_max: .inf}", "worker.backoff_max: Input should be a finite number"),
        ("couchdb: {timeout: .nan}", "couchdb.timeout: Input should be a finite number"),
        ("transfer: {min_rate: .inf}", "transfer.min_rate: Input should be a finite number"),
        ("- a list", "top level must be a mapping"),
        ("worker: {lease_seconds: [1", "is not valid YAML"),
    ],
)
def test_invalid_config_names_key_and_problem(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f, env={})
    shown = str(err.value)
    assert message in shown and "\n" not in shown
    # The credentials of the cases above ("u:pw@", "?password=x") never reach the message.
    assert "pw" not in shown and "password=x" not in shown


def test_bad_environment_override_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"GRIDXFER_MAX_ATTEMPTS.*worker.max_attempts"):
        load_config(env={"GRIDXFER_MAX_ATTEMPTS": "many"})


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", env={})


def test_several_coordinator_urls_from_file_or_environment(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("couchdb: {url: ['http://a:5984/', 'http://b:5984']}\n")
    assert load_config(f, env={}).couchdb.url == ["http://a:5984", "http://b:5984"]
    cfg = load_config(f, env={"GRIDXFER_COUCHDB_URL": "http://c:5984, http://d:5984"})
    assert cfg.couchdb.url == ["http://c:5984", "http://d:5984"]
    assert cfg.couchdb.primary == "http://c:5984"
