"""Service benchmark: measurements ingested per second and forecast latency under concurrent clients.

A real ``uvicorn`` server on loopback (``immunetwin.api.app:app_from_environ``) on SQLite and, when a
server URL is given, PostgreSQL. Ingest: ``--clients`` threads each POST ``--batches`` CSV batches of
``--rows`` measurements (distinct times, one patient per client). Forecast: the same clients each ask
``--forecasts`` 14-day forecasts of one stored ``viral_tiv`` twin (200 particles). Targets: at least
1,000 measurements/s, forecast p95 under 1 s.

    python benchmarks/service.py                                   # SQLite only
    python benchmarks/service.py --postgres postgresql+psycopg://immunetwin@127.0.0.1:55432/postgres
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np

T0 = datetime(2024, 3, 1, tzinfo=UTC)
PASSWORD = "benchmark-password"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare(url: str, clients: int) -> int:
    """Migrate, add a site, a clinician, one patient per client and a stored twin; the twin's id."""
    import jax

    import immunetwin as it
    from immunetwin import storage
    from immunetwin.service import add_site, add_user, system_principal, twin_to_bytes
    from immunetwin.templates import load_template
    from immunetwin.twin import personalise

    db = storage.open_database(url)
    storage.upgrade_to_head(db)
    add_site(db, system_principal(), "bench")
    add_user(db, system_principal(), "bench", PASSWORD, roles=["clinician"], sites=["bench"])
    tpl = load_template("viral_tiv")
    times = np.arange(0.5, 3.01, 0.5)
    values = tpl.observe(it.simulate(tpl.model, times))["viral_load"]
    twin = personalise(tpl, {"observable": ["viral_load"] * len(times), "time": times, "value": values},
                       patient="B0", key=jax.random.PRNGKey(0), draws=200, estimate=("beta", "delta", "c"))  # fmt: skip
    with db.transaction() as session:
        for k in range(clients):
            storage.add_patient(session, "bench", f"B{k}", reference_time=T0)
        record = storage.create_twin(session, 1, "viral_tiv")
        storage.save_twin_version(session, record.id, twin_to_bytes(twin), reason="personalise", provenance_sha256=twin.provenance)  # fmt: skip
    db.close()
    return record.id


def _serve(url: str, home: Path, port: int) -> subprocess.Popen:
    env = os.environ | {"IMMUNETWIN_DATABASE_URL": url, "IMMUNETWIN_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "immunetwin.api.app:app_from_environ",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], env=env)  # fmt: skip
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise TimeoutError("the server did not start")


def _csv(client: int, batch: int, rows: int) -> str:
    lines = ["patient,observable,value,unit,time"]
    for j in range(rows):
        when = (T0 + timedelta(minutes=batch * rows + j)).isoformat()
        lines.append(f"B{client},viral_load,{2 + (j % 50) / 10},log10 TCID50/mL,{when}")
    return "\n".join(lines) + "\n"


def run(url: str, label: str, args: argparse.Namespace) -> None:
    twin_id = _prepare(url, args.clients)
    home, port = Path(tempfile.mkdtemp(prefix="immunetwin-bench-")), _port()
    proc = _serve(url, home, port)
    base = f"http://127.0.0.1:{port}"
    try:
        token = httpx.post(f"{base}/api/token", data={"username": "bench", "password": PASSWORD}).json()[
            "access_token"
        ]
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=headers, timeout=120) as warm:  # compile the forecast once
            warm.get(f"/api/twins/{twin_id}/forecast", params={"horizon": 14}).raise_for_status()

        def ingest(k: int) -> int:
            with httpx.Client(
                base_url=base, headers={**headers, "content-type": "text/csv"}, timeout=120
            ) as c:
                return sum(c.post("/api/measurements", params={"site": "bench", "template": "viral_tiv"},
                                  content=_csv(k, b, args.rows)).json()["inserted"] for b in range(args.batches))  # fmt: skip

        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            stored = sum(pool.map(ingest, range(args.clients)))
        rate = stored / (time.perf_counter() - start)

        def forecasts(_k: int) -> list[float]:
            out = []
            with httpx.Client(base_url=base, headers=headers, timeout=120) as c:
                for _ in range(args.forecasts):
                    t = time.perf_counter()
                    c.get(f"/api/twins/{twin_id}/forecast", params={"horizon": 14}).raise_for_status()
                    out.append(time.perf_counter() - t)
            return out

        with ThreadPoolExecutor(args.clients) as pool:
            lat = sorted(x for xs in pool.map(forecasts, range(args.clients)) for x in xs)
        p50, p95 = statistics.median(lat), lat[int(0.95 * (len(lat) - 1))]
        print(f"{label}: {stored} measurements in batches of {args.rows} by {args.clients} clients: {rate:,.0f}/s"
              f" (target >= 1,000); forecast latency over {len(lat)} requests: p50 {p50 * 1000:.0f} ms,"
              f" p95 {p95 * 1000:.0f} ms (target < 1,000 ms)")  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _pg_database(server: str) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"itw_bench_{uuid.uuid4().hex[:8]}"
    with create_engine(server, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return make_url(server).set(database=name).render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--forecasts", type=int, default=10)
    parser.add_argument("--postgres", default=os.environ.get("IMMUNETWIN_TEST_POSTGRES_URL", ""),
                        help="a PostgreSQL server URL (its maintenance database); a new database is made there")  # fmt: skip
    args = parser.parse_args()
    print(
        f"machine: {os.uname().machine}, {os.cpu_count()} cores; server and clients on one machine (loopback)"
    )
    folder = Path(tempfile.mkdtemp(prefix="immunetwin-bench-db-"))
    run(f"sqlite+pysqlite:///{folder / 'bench.db'}", "SQLite", args)
    if args.postgres:
        run(_pg_database(args.postgres), "PostgreSQL", args)


if __name__ == "__main__":
    main()
