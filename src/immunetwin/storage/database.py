"""Opening a database (SQLite file or PostgreSQL URL), transactions, and the Alembic schema upgrade.

```python
db = open_database(default_database_url(os.environ))   # or "postgresql://user@host/db"
upgrade_to_head(db)
with db.transaction() as session:          # one transaction: committed on exit, rolled back on error
    patient = add_patient(session, "site-a", "P001")
```

SQLite (the embedded default) runs in WAL mode with foreign keys on, a 30 s busy timeout, full
synchronisation (a commit survives a killed process) and ``BEGIN IMMEDIATE`` for write transactions,
so concurrent writers queue instead of failing. PostgreSQL is reached through psycopg 3
(``postgresql://`` URLs are given that driver).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

__all__ = [
    "Database",
    "current_revision",
    "default_database_url",
    "head_revision",
    "normalise_url",
    "open_database",
    "sqlite_url",
    "upgrade_to_head",
]

DATABASE_FILE = "immunetwin.db"
_BUSY_TIMEOUT_S = 30.0
_READONLY = "immunetwin_readonly"


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of the SQLite file at ``path``."""
    return f"sqlite+pysqlite:///{Path(path).expanduser().resolve()}"


def default_database_url(environ: Mapping[str, str]) -> str:
    """Where the app's database is, from the environment (pure: nothing is created).

    ``IMMUNETWIN_DATABASE_URL`` if set (e.g. PostgreSQL); else ``$IMMUNETWIN_HOME/immunetwin.db``; else
    ``immunetwin.db`` in the user's data directory (platformdirs, e.g. ``~/.local/share/immunetwin``).
    """
    url = environ.get("IMMUNETWIN_DATABASE_URL", "").strip()
    if url:
        return normalise_url(url)
    home = environ.get("IMMUNETWIN_HOME", "").strip()
    if home:
        return sqlite_url(Path(home) / DATABASE_FILE)
    import platformdirs

    return sqlite_url(platformdirs.user_data_path("immunetwin", appauthor=False) / DATABASE_FILE)


def normalise_url(url: str) -> str:
    """Give ``postgresql://`` / ``postgres://`` URLs the psycopg 3 driver and SQLite URLs pysqlite."""
    parsed = make_url(
        url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url
    )
    driver = {"postgresql": "postgresql+psycopg", "sqlite": "sqlite+pysqlite"}.get(parsed.drivername)
    return parsed.set(drivername=driver).render_as_string(hide_password=False) if driver else url


@dataclass(frozen=True)
class Database:
    """An open database: the engine and its session factories. Build it with :func:`open_database`."""

    url: str
    engine: Engine
    writer: sessionmaker[Session]
    reader: sessionmaker[Session]

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @contextmanager
    def transaction(self, *, readonly: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed when the block ends, rolled back if it raises.

        ``readonly=True`` starts a deferred transaction on SQLite (it does not queue behind writers).
        """
        with (self.reader if readonly else self.writer)() as session, session.begin():
            yield session

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun by _sqlite_begin
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        "foreign_keys=ON",
        f"busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}",
        "synchronous=FULL",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    mode = "DEFERRED" if connection.get_execution_options().get(_READONLY) else "IMMEDIATE"
    connection.exec_driver_sql(f"BEGIN {mode}")


def _sqlite_engine(url: str) -> Engine:
    parsed = make_url(url)
    memory = parsed.database in (None, "", ":memory:")
    if not memory:
        Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": _BUSY_TIMEOUT_S},
        poolclass=StaticPool if memory else None,
    )
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def open_database(url: str, *, pool_size: int = 10) -> Database:
    """Open (not create or migrate) the database at ``url``; see :func:`upgrade_to_head` for the schema.

    Args:
        url: an SQLAlchemy URL: ``sqlite:///path/to/file.db`` (the parent folder is created) or
            ``postgresql://user:password@host:port/name``.
        pool_size: PostgreSQL connections kept open (plus as many again on demand).
    """
    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = _sqlite_engine(url)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size)
    writer = sessionmaker(engine, expire_on_commit=False)
    reader = sessionmaker(engine.execution_options(**{_READONLY: True}), expire_on_commit=False)
    return Database(url=url, engine=engine, writer=writer, reader=reader)


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    config.attributes["connection"] = connection
    return config


def upgrade_to_head(database: Database | str) -> str:
    """Create or upgrade the schema to the newest Alembic revision; returns that revision.

    Safe to run at every start: an up-to-date database is left as it is.
    """
    from alembic import command

    db = open_database(database) if isinstance(database, str) else database
    try:
        with db.engine.begin() as connection:
            command.upgrade(_alembic_config(connection), "head")
        return str(current_revision(db))
    finally:
        if isinstance(database, str):
            db.close()


def current_revision(db: Database) -> str | None:
    """The database's Alembic revision, or ``None`` for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The newest revision that ships with this version of immunetwin."""
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(_alembic_config(None)).get_current_head())
