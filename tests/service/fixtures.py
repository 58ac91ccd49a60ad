"""Fixtures shared by the service and API tests (imported by both conftest files).

Databases come from the storage tests' fixtures (a fresh migrated database per test on SQLite and on
PostgreSQL; PostgreSQL skips with the reason locally without a server and fails under CI=true).
Two sites, five users and one patient per site; one small ``viral_tiv`` twin is personalised once per
session (200 particles, the twin package's default method) and stored into a test's database when asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunetwin import storage
from immunetwin.service import Principal, ServiceSettings, add_site, add_user, system_principal, twin_to_bytes
from immunetwin.storage import Database
from immunetwin.twin import Twin
from storage.conftest import (  # noqa: F401 (fixtures re-exported for the service and API tests)
    BACKENDS,
    database_url,
    db,
    pg_template,
    postgres_server,
    sqlite_template,
)

T0 = datetime(2024, 3, 1, tzinfo=UTC)  # every patient's day 0
ESTIMATE = ("beta", "delta", "c")
TIMES = np.arange(0.5, 6.01, 0.5)  # as tests/twin: the same shapes reuse compiled programs
EARLY = 3.0
PASSWORD = "correct-horse-battery"
USERS = {  # username: (roles, sites)
    "admin": (("admin",), ()),
    "clin_north": (("clinician",), ("north",)),
    "mod_north": (("modeller",), ("north",)),
    "clin_south": (("clinician",), ("south",)),
    "nobody_north": ((), ("north",)),
}


@pytest.fixture(scope="session", autouse=True)
def cheap_password_hashing() -> Iterator[None]:
    """Argon2 with small costs in tests (the recommended costs take ~1 s a hash on a loaded 2-core machine)."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    from immunetwin.storage import users

    cheap = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(users, "_hasher", lambda: cheap)
        yield


@dataclass(frozen=True)
class World:
    """Sites north and south, the users of :data:`USERS` (as principals), patient N1 (north) and S1 (south)."""

    principals: dict[str, Principal]
    north: storage.PatientRecord
    south: storage.PatientRecord


def make_world(database: Database) -> World:
    """Create the sites, users and patients of :class:`World` in ``db``."""
    system = system_principal()
    for code in ("north", "south"):
        add_site(database, system, code, code.title())
    principals = {}
    for name, (roles, sites) in USERS.items():
        user = add_user(database, system, name, PASSWORD, roles=roles, sites=sites)
        principals[name] = Principal(user, name)
    with database.transaction() as session:
        north = storage.add_patient(session, "north", "N1", reference_time=T0)
        south = storage.add_patient(session, "south", "S1", reference_time=T0)
    return World(principals, north, south)


@pytest.fixture
def world(db: Database) -> World:  # noqa: F811
    return make_world(db)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> ServiceSettings:  # noqa: F811
    """Settings of a test: its own home folder and database; small twins."""
    return ServiceSettings(home=tmp_path / "home", database_url=database_url, twin_draws=200)


def tiv_values() -> pd.DataFrame:
    """Noise-free log10 titres of the nominal viral_tiv patient at TIMES (days)."""
    import immunetwin as it
    from immunetwin.templates import load_template

    tpl = load_template("viral_tiv")
    traj = it.simulate(tpl.model, TIMES)
    return pd.DataFrame({"observable": "viral_load", "time": TIMES, "value": tpl.observe(traj)["viral_load"]})


def csv_text(pseudonym: str, frame: pd.DataFrame) -> str:
    """A measurement CSV of ``frame`` (observable, time in days, value) for one patient, day 0 = T0."""
    lines = ["patient,observable,value,unit,time"]
    for _, row in frame.iterrows():
        when = (T0 + timedelta(days=float(row.time))).isoformat()
        lines.append(f"{pseudonym},{row.observable},{float(row.value)!r},log10 TCID50/mL,{when}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def tiv_data() -> pd.DataFrame:
    return tiv_values()


@pytest.fixture(scope="session")
def tiv_twin(tiv_data: pd.DataFrame) -> Twin:
    """Version 1 of patient N1's viral_tiv twin, personalised on the rows up to day 3."""
    import jax

    from immunetwin.twin import personalise

    return personalise(
        "viral_tiv", tiv_data[tiv_data.time <= EARLY], patient="N1", key=jax.random.PRNGKey(0), estimate=ESTIMATE,
        draws=200,
    )  # fmt: skip


def store_twin(database: Database, world: World, twin: Twin, data: pd.DataFrame) -> int:
    """Ingest ``data`` (N1's early rows) and store ``twin`` as version 1 of a new N1 twin; its id."""
    from immunetwin.io.clinical import observable_catalogue

    with database.transaction() as session:
        storage.ingest_csv(session, csv_text("N1", data), observable_catalogue("viral_tiv"), site="north")
        record = storage.create_twin(session, world.north.id, "viral_tiv", created_by="clin_north")
        storage.save_twin_version(session, record.id, twin_to_bytes(twin), reason="personalise",
                                  provenance_sha256=twin.provenance, created_by="clin_north")  # fmt: skip
    return record.id


@pytest.fixture
def stored_twin(db: Database, world: World, tiv_twin: Twin, tiv_data: pd.DataFrame) -> Iterator[int]:  # noqa: F811
    """The id of N1's stored twin (version 1 = ``tiv_twin``), with N1's early rows in the database."""
    yield store_twin(db, world, tiv_twin, tiv_data[tiv_data.time <= EARLY])
