"""Shared fixtures: a real pouchdb-server for the session, a fresh database per test.

Nothing here mocks CouchDB: the server is started through the package's own
EmbeddedServer, exactly as `gridxfer server start` does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from GRID_XFER import views
from GRID_XFER.config import CouchDBConfig, ServerConfig
from GRID_XFER.couch import Couch
from GRID_XFER.errors import ServerError
from GRID_XFER.pool import Pool, PoolSettings
from GRID_XFER.server import EmbeddedServer

if TYPE_CHECKING:
    from tests.plugins.couchdb import CouchDB3

pytest_plugins = [
    "tests.plugins.xrootd",
    "tests.plugins.slurm",
    "tests.plugins.tape",
    "tests.plugins.couchdb",
    "tests.plugins.grid",
]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int | None = None) -> EmbeddedServer:
    """Start pouchdb-server; a probed free port can be taken meanwhile, so try a few."""
    for attempt in range(3):
        srv = EmbeddedServer(ServerConfig(port=port or free_port(), data_dir=data_dir))
        try:
            srv.start()
            return srv
        except ServerError:
            if port is not None or attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def couchdb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    srv = start_server(tmp_path_factory.mktemp("couchdb") / "data")
    try:
        yield srv
    finally:
        srv.stop()


@dataclass
class Database:
    """A fresh, initialised database and a config file pointing at it."""

    cfg: CouchDBConfig
    couch: Couch
    config_file: Path
    tmp: Path

    def pool(self, *, clock: Any = None, **settings: Any) -> Pool:
        if clock is None:
            return Pool(Couch(self.cfg), PoolSettings(**settings))
        return Pool(Couch(self.cfg), PoolSettings(**settings), clock=clock)

    @contextmanager
    def without_validation(self) -> Iterator[None]:
        """Lift the design document's write check, to plant documents that an older
        version or a careless script could have left behind."""
        ddoc = self.couch.get("_design/gridxfer")
        check = ddoc.pop("validate_doc_update")
        self.couch.put(ddoc)
        try:
            yield
        finally:
            ddoc["validate_doc_update"] = check
            self.couch.put(ddoc)

    @property
    def engine(self) -> str:
        """pouchdb (the embedded default) or couchdb (Apache CouchDB 3)."""
        return "couchdb" if self.cfg.user else "pouchdb"

    def write_config(self, **sections: Any) -> Path:
        couchdb: dict[str, Any] = {
            "url": self.cfg.url,
            "db": self.cfg.db,
            "retries": 2,
            "backoff": 0.2,
        }
        if self.cfg.user:  # the password goes in a 0600 file, never in the config or argv
            couchdb.update(user=self.cfg.user, password_file=str(self.cfg.password_file))
        data: dict[str, Any] = {"couchdb": couchdb}
        for key, value in sections.items():
            if isinstance(value, dict):
                data.setdefault(key, {}).update(value)
            else:
                data[key] = value
        self.config_file.write_text(yaml.safe_dump(data))
        return self.config_file


def make_database(url: str | list[str], tmp: Path, server: CouchDB3 | None = None) -> Database:
    """A new database with our design documents; on CouchDB 3 as its admin."""
    auth: dict[str, Any] = {}
    if server is not None:
        auth = {"user": server.user, "password_file": server.password_file(tmp)}
    cfg = CouchDBConfig(url=url, db=f"t{uuid.uuid4().hex[:12]}", retries=2, backoff=0.2, **auth)
    couch = Couch(cfg)
    couch.create_db()
    views.install(couch)
    db = Database(cfg, couch, tmp / "gridxfer.yaml", tmp)
    db.write_config()
    return db


# The database fixture runs each test against both engines: pouchdb-server (the
# embedded default) and Apache CouchDB 3 (one node). Cluster tests ask for
# ``couchdb_cluster`` themselves. Modules about storage, batch systems and
# sandboxes use the database only as a bystander: pouchdb-server is enough there.
ENGINES = ["pouchdb", "couchdb"]
BYSTANDERS = {
    "test_launch",
    "test_sandbox",
    "test_scan",
    "test_transfer",
    "test_storage",
    "test_checksum",
    "test_status_page",
}


SERVER_FIXTURES = frozenset({"db", "couchdb_server", "couchdb3", "couchdb_cluster"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)  # it starts a database server
        engine = getattr(item, "callspec", None) and item.callspec.params.get("db")
        bystander = (
            item.module is not None and item.module.__name__.rpartition(".")[2] in BYSTANDERS
        )
        (drop if engine == "couchdb" and bystander else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(params=ENGINES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "couchdb":
        server: CouchDB3 = request.getfixturevalue("couchdb3")
        return make_database(server.url, tmp_path, server)
    return make_database(request.getfixturevalue("couchdb_server").url, tmp_path)


def cli_env(config_file: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDXFER_")}
    env["GRIDXFER_CONFIG"] = str(config_file)
    env.update(extra)
    return env


def gridxfer(
    *args: str,
    config: Path,
    env: dict[str, str] | None = None,
    check: bool = False,
    timeout: float = 120,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "GRID_XFER.cli", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(config),
        timeout=timeout,
        input=input,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"gridxfer {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def spawn_worker(
    config: Path, *args: str, env: dict[str, str] | None = None, stderr: Any = subprocess.PIPE
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "GRID_XFER.cli", "worker", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env or cli_env(config),
    )


def wait_for(
    predicate,
    timeout: float = 60.0,
    every: float = 0.1,  # noqa: ANN001, ANN201
    what: str = "condition",
):
    """Poll ``predicate`` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what} not met within {timeout}s")
