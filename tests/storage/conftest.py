"""Fixtures of the storage tests: a fresh, migrated database per test on SQLite and on PostgreSQL.

PostgreSQL comes from ``IMMUNETWIN_TEST_POSTGRES_URL`` (a server URL; ``.ci/run`` starts one with
``tools/start_postgres.sh``), or else this file starts a throw-away server with that script when the
server binaries are installed. Without either the PostgreSQL cases skip with the reason; under
``CI=true`` they fail instead.

Each test gets its own database: on PostgreSQL a ``CREATE DATABASE ... TEMPLATE`` copy of one migrated
database, on SQLite a copy of one migrated file.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from immunetwin.io.clinical import ObservableCatalogue, observable_catalogue
from immunetwin.storage import Database, open_database, sqlite_url, upgrade_to_head

REPO = Path(__file__).resolve().parents[2]
START_POSTGRES = REPO / "tools" / "start_postgres.sh"
BACKENDS = ("sqlite", "postgresql")


def _absent(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}: the PostgreSQL storage tests must run in CI")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_binaries() -> bool:
    return shutil.which("pg_ctl") is not None or any(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server (its maintenance database) for this test session."""
    given = os.environ.get("IMMUNETWIN_TEST_POSTGRES_URL", "").strip()
    if given:
        yield given
        return
    if not _server_binaries():
        _absent("no IMMUNETWIN_TEST_POSTGRES_URL and no PostgreSQL server binaries (tools/start_postgres.sh installs them)")  # fmt: skip
    datadir = Path(tempfile.mkdtemp(prefix="immunetwin-pg-", dir="/tmp"))
    started = subprocess.run(
        ["bash", str(START_POSTGRES), "start", str(datadir), str(_free_port())],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    if started.returncode != 0:
        shutil.rmtree(datadir, ignore_errors=True)
        _absent(f"tools/start_postgres.sh failed: {started.stderr.strip()[-500:]}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(START_POSTGRES), "stop", str(datadir)], capture_output=True, check=False)
        shutil.rmtree(datadir, ignore_errors=True)


def _admin(server: str) -> Any:
    return create_engine(server, isolation_level="AUTOCOMMIT").connect()


def _pg_database(server: str, name: str, template: str | None = None) -> str:
    with _admin(server) as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    return make_url(server).set(database=name).render_as_string(hide_password=False)


def _pg_drop(server: str, name: str) -> None:
    with _admin(server) as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_template(postgres_server: str) -> Iterator[str]:
    """A migrated PostgreSQL database that each test copies."""
    name = f"itw_template_{uuid.uuid4().hex[:10]}"
    upgrade_to_head(_pg_database(postgres_server, name))
    yield name
    _pg_drop(postgres_server, name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    db = open_database(sqlite_url(path))
    upgrade_to_head(db)
    db.close()  # the last connection to close checkpoints the WAL into the file and removes it
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture
def blank_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of the backend named by ``request.param``."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "blank.db")
        return
    server = request.getfixturevalue("postgres_server")
    name = f"itw_blank_{uuid.uuid4().hex[:10]}"
    yield _pg_database(server, name)
    _pg_drop(server, name)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh database at the newest schema, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "test.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield sqlite_url(path)
        return
    server = request.getfixturevalue("postgres_server")
    name = f"itw_test_{uuid.uuid4().hex[:10]}"
    yield _pg_database(server, name, template=request.getfixturevalue("pg_template"))
    _pg_drop(server, name)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """The open database of :func:`database_url`."""
    database = open_database(database_url)
    yield database
    database.close()


@pytest.fixture(scope="session")
def catalogue() -> ObservableCatalogue:
    """The observables of the flagship template ``viral_immune``."""
    return observable_catalogue("viral_immune")
