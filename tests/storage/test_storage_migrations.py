"""Migrations build exactly the models' schema on SQLite and PostgreSQL; URLs and the default location."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from immunetwin.storage import (
    current_revision,
    default_database_url,
    head_revision,
    list_roles,
    normalise_url,
    open_database,
    sqlite_url,
    upgrade_to_head,
)
from immunetwin.storage.database import _alembic_config
from immunetwin.storage.tables import Base

BOTH = pytest.mark.parametrize("blank_url", ["sqlite", "postgresql"], indirect=True)


def _schema_diff(url: str) -> list:
    db = open_database(url)
    try:
        with db.engine.connect() as conn:
            return compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
    finally:
        db.close()


@BOTH
def test_upgrade_builds_the_models_schema(blank_url: str) -> None:
    assert current_revision(open_database(blank_url)) is None
    assert upgrade_to_head(blank_url) == head_revision()
    assert _schema_diff(blank_url) == []
    tables = set(inspect(open_database(blank_url).engine).get_table_names())
    assert set(Base.metadata.tables) <= tables


@BOTH
def test_upgrade_is_idempotent_and_seeds_the_roles(blank_url: str) -> None:
    upgrade_to_head(blank_url)
    upgrade_to_head(blank_url)  # a second start changes nothing
    db = open_database(blank_url)
    with db.transaction(readonly=True) as session:
        assert list_roles(session) == ("admin", "clinician", "modeller")
    db.close()


@BOTH
def test_downgrade_then_upgrade_round_trips(blank_url: str) -> None:
    upgrade_to_head(blank_url)
    db = open_database(blank_url)
    with db.engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "base")
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    db.close()
    upgrade_to_head(blank_url)
    assert _schema_diff(blank_url) == []


@BOTH
def test_a_model_change_without_migration_is_detected(blank_url: str) -> None:
    """The schema test can fail: a column dropped from the database shows up in the diff."""
    upgrade_to_head(blank_url)
    db = open_database(blank_url)
    with db.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_jobs_state"))
    db.close()
    diff = _schema_diff(blank_url)
    assert [d[0] for d in diff] == ["add_index"]


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    db = open_database(sqlite_url(tmp_path / "x.db"))
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
    db.close()


def test_open_creates_the_sqlite_folder(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "new" / "folder" / "immunetwin.db")
    upgrade_to_head(url)
    assert (tmp_path / "new" / "folder" / "immunetwin.db").is_file()


def test_default_database_url_from_the_environment(tmp_path: Path) -> None:
    assert default_database_url({"IMMUNETWIN_HOME": str(tmp_path)}) == sqlite_url(tmp_path / "immunetwin.db")
    pg = default_database_url(
        {"IMMUNETWIN_DATABASE_URL": "postgresql://u:p@db:5432/twins", "IMMUNETWIN_HOME": "/x"}
    )
    assert pg == "postgresql+psycopg://u:p@db:5432/twins"
    fallback = default_database_url({})
    assert fallback.startswith("sqlite+pysqlite:///") and fallback.endswith("immunetwin/immunetwin.db")


def test_normalise_url_picks_the_drivers() -> None:
    assert normalise_url("postgres://a@h/d") == "postgresql+psycopg://a@h/d"
    assert normalise_url("postgresql+psycopg://a@h/d") == "postgresql+psycopg://a@h/d"
    assert normalise_url("sqlite:///x.db") == "sqlite+pysqlite:///x.db"
