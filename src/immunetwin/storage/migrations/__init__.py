"""Alembic migrations of the immunetwin schema (run them with :func:`immunetwin.storage.upgrade_to_head`)."""
