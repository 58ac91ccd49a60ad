"""The append-only audit log: who read or changed which patient's data, and when.

There is no update or delete here, and the database refuses them too (a trigger on SQLite and
PostgreSQL, created by the initial migration), so an entry once written stays as it was.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from immunetwin.errors import InputError
from immunetwin.storage._common import aware, now_or
from immunetwin.storage.records import AuditRecord, PatientRecord
from immunetwin.storage.tables import AuditRow

__all__ = ["list_audit", "record_audit"]


def _audit(row: AuditRow) -> AuditRecord:
    return AuditRecord(
        row.id, row.at, row.actor, row.action, row.resource, row.patient_id, row.patient, row.site, row.detail
    )


def record_audit(
    session: Session,
    *,
    actor: str,
    action: str,
    resource: str = "",
    patient: PatientRecord | None = None,
    detail: str = "",
    now: datetime | None = None,
) -> AuditRecord:
    """Append an entry: ``actor`` (a username, ``token:<prefix>`` or ``system``) did ``action``
    (e.g. ``read``, ``write``, ``ingest``, ``login``) on ``resource`` (e.g. ``measurements``), about
    ``patient`` if any.
    """
    if not actor or not action:
        raise InputError("an audit entry needs an actor and an action")
    row = AuditRow(
        at=now_or(now),
        actor=actor[:64],
        action=action[:64],
        resource=resource[:64],
        patient_id=patient.id if patient else None,
        patient=patient.pseudonym if patient else None,
        site=patient.site if patient else None,
        detail=detail,
    )
    session.add(row)
    session.flush()
    return _audit(row)


def list_audit(
    session: Session,
    *,
    patient_id: int | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    limit: int = 1000,
) -> tuple[AuditRecord, ...]:
    """Entries in the order they were written (filtered by patient, actor, time), at most ``limit``."""
    query = select(AuditRow).order_by(AuditRow.id).limit(limit)
    if patient_id is not None:
        query = query.where(AuditRow.patient_id == patient_id)
    if actor is not None:
        query = query.where(AuditRow.actor == actor)
    if since is not None:
        query = query.where(AuditRow.at >= aware(since, "since"))
    return tuple(_audit(r) for r in session.scalars(query))
