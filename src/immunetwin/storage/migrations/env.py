"""Alembic environment: migrates the connection that :func:`immunetwin.storage.upgrade_to_head` passes.

To add a revision after changing ``tables.py``: migrate a scratch SQLite file to the current head, then
let Alembic compare it with the models, and review (and tidy) what it writes::

    from alembic import command
    from immunetwin.storage import open_database, upgrade_to_head
    from immunetwin.storage.database import _alembic_config

    db = open_database("sqlite:////tmp/scratch.db"); upgrade_to_head(db)
    with db.engine.begin() as conn:
        command.revision(_alembic_config(conn), message="what changed", autogenerate=True, rev_id="0002")

``tests/storage/test_storage_migrations.py`` then checks that the migrated schema equals the models.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from immunetwin.storage.tables import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs: object) -> None:
    context.configure(target_metadata=target_metadata, render_as_batch=True, compare_type=True, **kwargs)


def run_offline() -> None:
    """Write the SQL to stdout instead of running it (``alembic upgrade --sql``)."""
    _configure(url=context.get_x_argument(as_dictionary=True).get("url", "sqlite://"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run the migrations on the given connection (or on ``-x url=...``)."""
    connection = config.attributes.get("connection")
    if connection is None:
        engine = create_engine(context.get_x_argument(as_dictionary=True)["url"])
        with engine.begin() as own:
            _configure(connection=own)
            context.run_migrations()
        engine.dispose()
        return
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
