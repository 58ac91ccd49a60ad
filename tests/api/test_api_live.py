"""A real uvicorn server on loopback: concurrent writers lose and duplicate nothing; a SIGKILL during
ingest loses nothing that was acknowledged (a 2xx received), and the restarted server shows the job
that was running as interrupted."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import httpx
import pandas as pd
from api_support import LiveServer

from immunetwin import storage
from immunetwin.storage import Database
from service.fixtures import EARLY, PASSWORD, T0, World, csv_text

THREADS, PER_THREAD, BATCH = 8, 500, 50


@contextmanager
def _client(server: LiveServer, user: str = "clin_north") -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        token = client.post("/api/token", data={"username": user, "password": PASSWORD}).json()[
            "access_token"
        ]
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


def _batch(thread: int, first: int, size: int) -> str:
    """CSV rows of patient N1 at distinct minutes: thread ``thread``, rows ``first .. first+size-1``."""
    lines = ["patient,observable,value,unit,time"]
    for j in range(first, first + size):
        when = (T0 + timedelta(minutes=thread * PER_THREAD + j)).isoformat()
        lines.append(f"N1,il6,{1 + j},pg/mL,{when}")
    return "\n".join(lines) + "\n"


def _post(client: httpx.Client, text: str) -> httpx.Response:
    return client.post("/api/measurements?site=north&template=viral_immune", content=text,
                       headers={"content-type": "text/csv"})  # fmt: skip


def test_concurrent_writers_lose_and_duplicate_nothing(
    live_server: tuple[LiveServer, World], db: Database
) -> None:
    server, world = live_server
    server.start()
    results: list[tuple[int, int]] = []
    errors: list[str] = []
    start = threading.Barrier(THREADS)

    def writer(thread: int) -> None:
        with _client(server) as client:
            start.wait()
            for first in range(0, PER_THREAD, BATCH):
                for text in (_batch(thread, first, BATCH), _batch((thread + 1) % THREADS, first, BATCH)):
                    response = _post(client, text)  # its own rows, then a resend racing the neighbour
                    if response.status_code != 200:
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                        return
                    results.append((response.json()["inserted"], response.json()["duplicates"]))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors[:3]
    with db.transaction() as session:
        rows = storage.list_measurements(session, world.north.id)
    assert len(rows) == THREADS * PER_THREAD == len({r.time for r in rows})
    assert sum(i for i, _ in results) == THREADS * PER_THREAD
    assert sum(i + d for i, d in results) == 2 * THREADS * PER_THREAD


def test_sigkill_during_ingest_loses_nothing_acknowledged(
    live_server: tuple[LiveServer, World], db: Database, tiv_data: pd.DataFrame
) -> None:
    server, world = live_server
    server.start()
    with _client(server) as client:
        early = csv_text("N1", tiv_data[tiv_data.time <= EARLY])
        assert client.post("/api/measurements?site=north&template=viral_tiv", content=early,
                           headers={"content-type": "text/csv"}).status_code == 200  # fmt: skip
        job = client.post(f"/api/patients/{world.north.id}/twins", json={"template": "viral_tiv"}).json()[
            "job"
        ]
        deadline = time.monotonic() + 120
        while (
            client.get(f"/api/jobs/{job['id']}").json()["state"] == "queued" and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert client.get(f"/api/jobs/{job['id']}").json()["state"] == "running"
    acknowledged: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        with _client(server) as client:
            for k in range(10_000):
                if stop.is_set():
                    return
                try:
                    response = _post(client, _batch(0, 10 * k, 10))
                except httpx.TransportError:
                    return  # the server died mid-request: not acknowledged
                if response.status_code == 200:
                    acknowledged.append(k)

    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()
    stop.set()
    thread.join(timeout=60)
    assert len(acknowledged) >= 20
    server.start()
    with _client(server) as client:
        after = client.get(f"/api/jobs/{job['id']}").json()
        stored = client.get(f"/api/patients/{world.north.id}/measurements?observable=il6").json()
    assert after["state"] == "interrupted" and "server stopped" in after["error"]
    times = {r["time"] for r in stored}
    for k in acknowledged:
        expected = {
            (T0 + timedelta(minutes=j)).isoformat().replace("+00:00", "Z") for j in range(10 * k, 10 * k + 10)
        }
        assert expected <= times, f"batch {k} was acknowledged but is missing"
