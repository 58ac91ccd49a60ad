"""The API under test: an in-process app with a manual job runner, and a real uvicorn server.

``api`` builds the app of a test's database (SQLite or PostgreSQL) with the :class:`World` of the
service tests and logs every user in. ``live_server`` starts ``uvicorn`` in a subprocess on a free
loopback port (jobs on an in-process Dask cluster), which a test may SIGKILL and start again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from immunetwin.api import create_app
from immunetwin.service import JobContext, ManualRunner, ServiceSettings, TwinCache
from immunetwin.storage import Database
from service.fixtures import PASSWORD, USERS, World, make_world

__all__ = ["Api", "LiveServer", "api", "live_server"]


@dataclass
class Api:
    """A test client of the app, the manual runner behind it, the world and each user's auth headers."""

    client: TestClient
    runner: ManualRunner
    world: World
    db: Database
    settings: ServiceSettings
    headers: dict[str, dict[str, str]] = field(default_factory=dict)

    def as_(self, user: str | None) -> dict[str, str]:
        """The auth headers of ``user`` (``None``: no credentials)."""
        return {} if user is None else self.headers[user]


def log_in(client: TestClient | httpx.Client, user: str) -> dict[str, str]:
    response = client.post("/api/token", data={"username": user, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
def api(db: Database, settings: ServiceSettings) -> Iterator[Api]:
    world = make_world(db)
    runner = ManualRunner(JobContext(db, TwinCache(), settings.reports_dir))
    with TestClient(create_app(settings, database=db, runner=runner)) as client:
        handle = Api(client, runner, world, db, settings)
        handle.headers = {user: log_in(client, user) for user in USERS}
        yield handle


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """A uvicorn subprocess serving ``app_from_environ`` for one database and home folder."""

    database_url: str
    home: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> None:
        env = os.environ | {"IMMUNETWIN_DATABASE_URL": self.database_url, "IMMUNETWIN_HOME": str(self.home),
                            "IMMUNETWIN_JOB_THREADS": "1", "IMMUNETWIN_TWIN_DRAWS": "200"}  # fmt: skip
        log = open(self.home / f"server-{time.time_ns()}.log", "wb")  # noqa: SIM115 (kept open for the child)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "immunetwin.api.app:app_from_environ",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}: see {log.name}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        raise TimeoutError(f"the server did not answer within {timeout} s: see {log.name}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def live_server(db: Database, database_url: str, tmp_path: Path) -> Iterator[tuple[LiveServer, World]]:
    """A started server on a test database with the service tests' world (not started: call start())."""
    world = make_world(db)
    home = tmp_path / "home"
    home.mkdir()
    server = LiveServer(database_url, home)
    try:
        yield server, world
    finally:
        server.stop()
