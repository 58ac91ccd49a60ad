"""Small helpers shared by the repositories (not public)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from immunetwin.errors import InputError

__all__ = ["aware", "insert_ignoring", "now_or"]


def now_or(now: datetime | None) -> datetime:
    """``now`` (checked to be timezone-aware), or the current UTC time."""
    return datetime.now(UTC) if now is None else aware(now, "now")


def aware(when: datetime, what: str) -> datetime:
    """``when`` in UTC; a naive datetime is refused (its timezone would be a guess)."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise InputError(f"{what} {when.isoformat()} has no timezone")
    return when.astimezone(UTC)


def insert_ignoring(
    session: Session,
    table: Table,
    conflict: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    returning: bool = True,
) -> Any:
    """``INSERT ... ON CONFLICT (conflict) DO NOTHING [RETURNING id]`` for SQLite and PostgreSQL.

    Returns:
        The executed result; with ``returning``, its rows are the ids actually inserted.
    """
    module = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = module.insert(table).on_conflict_do_nothing(index_elements=list(conflict))
    return session.execute(statement.returning(table.c.id) if returning else statement, list(rows))
