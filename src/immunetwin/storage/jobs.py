"""Jobs (long work and its progress) and alerts.

A job moves ``queued -> running -> done | failed | cancelled``; a queued job may also be cancelled or
fail. Final states never change again, so a worker whose job was cancelled learns it from the
:class:`ConflictError` of its next :func:`update_job`. At start-up the service calls
:func:`mark_interrupted_jobs_on_startup`: every job still queued or running is then ``interrupted`` with
the reason in ``error`` -- shown, never lost silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from immunetwin.errors import ConflictError, InputError, NotFoundError
from immunetwin.storage._common import now_or
from immunetwin.storage.records import AlertRecord, JobRecord
from immunetwin.storage.tables import JOB_STATES, SEVERITIES, AlertRow, JobRow

__all__ = [
    "acknowledge_alert",
    "add_alert",
    "create_job",
    "get_alert",
    "get_job",
    "list_alerts",
    "list_jobs",
    "mark_interrupted_jobs_on_startup",
    "update_job",
]

FINAL_STATES = frozenset({"done", "failed", "cancelled", "interrupted"})
_NEXT: Mapping[str, frozenset[str]] = {
    "queued": frozenset({"queued", "running", "failed", "cancelled", "interrupted"}),
    "running": frozenset({"running", "done", "failed", "cancelled", "interrupted"}),
}
_UNSET: Any = object()


def _job(row: JobRow) -> JobRecord:
    return JobRecord(
        row.id, row.kind, row.state, row.progress, row.message, row.error, row.result_ref, dict(row.params),
        row.patient_id, row.created_by, row.created_at, row.started_at, row.finished_at, row.updated_at,
    )  # fmt: skip


def create_job(
    session: Session,
    kind: str,
    *,
    params: Mapping[str, Any] | None = None,
    patient_id: int | None = None,
    created_by: str | None = None,
    now: datetime | None = None,
) -> JobRecord:
    """Queue a job of ``kind`` (e.g. ``"personalise"``) with JSON-serialisable ``params``."""
    stamp = now_or(now)
    row = JobRow(
        kind=kind, state="queued", progress=0.0, message="", error=None, result_ref=None, params=dict(params or {}),
        patient_id=patient_id, created_by=created_by, created_at=stamp, started_at=None, finished_at=None,
        updated_at=stamp,
    )  # fmt: skip
    session.add(row)
    session.flush()
    return _job(row)


def get_job(session: Session, job_id: int) -> JobRecord:
    """The job with that id (raises :class:`NotFoundError`)."""
    row = session.get(JobRow, job_id)
    if row is None:
        raise NotFoundError("job", job_id)
    return _job(row)


def list_jobs(
    session: Session, *, state: str | None = None, kind: str | None = None, limit: int = 100
) -> tuple[JobRecord, ...]:
    """The newest jobs first (optionally of one state or kind), at most ``limit``."""
    query = select(JobRow).order_by(JobRow.id.desc()).limit(limit)
    if state is not None:
        query = query.where(JobRow.state == state)
    if kind is not None:
        query = query.where(JobRow.kind == kind)
    return tuple(_job(r) for r in session.scalars(query))


def update_job(
    session: Session,
    job_id: int,
    *,
    state: str | None = None,
    progress: float | None = None,
    message: str | None = None,
    error: str | None = _UNSET,
    result_ref: str | None = _UNSET,
    now: datetime | None = None,
) -> JobRecord:
    """Move a job on: new state, progress in [0, 1], a message, the error or the result reference.

    Raises:
        NotFoundError: no such job.
        ConflictError: the job is final already, or cannot go from its state to ``state``.
        InputError: unknown state, or progress outside [0, 1].
    """
    row = session.scalar(select(JobRow).where(JobRow.id == job_id).with_for_update())
    if row is None:
        raise NotFoundError("job", job_id)
    target = state or row.state
    if target not in JOB_STATES:
        raise InputError(f"unknown job state {target!r} (known: {', '.join(JOB_STATES)})")
    if row.state in FINAL_STATES or target not in _NEXT[row.state]:
        raise ConflictError(f"job {job_id} is {row.state}: it cannot become {target}")
    if progress is not None and not 0.0 <= progress <= 1.0:
        raise InputError(f"progress {progress} is outside [0, 1]")
    _apply(row, target, progress, message, error, result_ref, now_or(now))
    session.flush()
    return _job(row)


def _apply(row: JobRow, target: str, progress: float | None, message: str | None, error: Any, result: Any, stamp: datetime) -> None:  # fmt: skip
    if target == "running" and row.started_at is None:
        row.started_at = stamp
    if target in FINAL_STATES:
        row.finished_at = stamp
    row.state, row.updated_at = target, stamp
    row.progress = 1.0 if target == "done" else (row.progress if progress is None else progress)
    row.message = row.message if message is None else message[:500]
    row.error = row.error if error is _UNSET else error
    row.result_ref = row.result_ref if result is _UNSET else result


def mark_interrupted_jobs_on_startup(
    session: Session,
    reason: str = "the server stopped while the job was unfinished",
    *,
    now: datetime | None = None,
) -> tuple[JobRecord, ...]:
    """Mark every queued or running job ``interrupted`` with ``reason``; returns them."""
    stamp = now_or(now)
    rows = session.scalars(select(JobRow).where(JobRow.state.in_(("queued", "running"))).with_for_update())
    changed = []
    for row in rows:
        _apply(row, "interrupted", None, None, reason, _UNSET, stamp)
        changed.append(row)
    session.flush()
    return tuple(_job(r) for r in changed)


def _alert(row: AlertRow) -> AlertRecord:
    return AlertRecord(
        row.id, row.patient_id, row.twin_version_id, row.observable, row.severity, row.message, row.created_at,
        row.acknowledged_at, row.acknowledged_by,
    )  # fmt: skip


def add_alert(
    session: Session,
    patient_id: int,
    message: str,
    *,
    severity: str = "warning",
    observable: str | None = None,
    twin_version_id: int | None = None,
    now: datetime | None = None,
) -> AlertRecord:
    """Raise an alert about a patient (severity ``info``, ``warning`` or ``critical``)."""
    if severity not in SEVERITIES:
        raise InputError(f"unknown severity {severity!r} (known: {', '.join(SEVERITIES)})")
    row = AlertRow(
        patient_id=patient_id, twin_version_id=twin_version_id, observable=observable, severity=severity,
        message=message, created_at=now_or(now), acknowledged_at=None, acknowledged_by=None,
    )  # fmt: skip
    session.add(row)
    session.flush()
    return _alert(row)


def get_alert(session: Session, alert_id: int) -> AlertRecord:
    """One alert by id.

    Raises:
        NotFoundError: no such alert.
    """
    row = session.get(AlertRow, alert_id)
    if row is None:
        raise NotFoundError("alert", alert_id)
    return _alert(row)


def list_alerts(
    session: Session, patient_id: int | None = None, *, open_only: bool = False
) -> tuple[AlertRecord, ...]:
    """Alerts, newest first (of one patient, and only unacknowledged ones, if asked)."""
    query = select(AlertRow).order_by(AlertRow.id.desc())
    if patient_id is not None:
        query = query.where(AlertRow.patient_id == patient_id)
    if open_only:
        query = query.where(AlertRow.acknowledged_at.is_(None))
    return tuple(_alert(r) for r in session.scalars(query))


def acknowledge_alert(
    session: Session, alert_id: int, by: str, *, now: datetime | None = None
) -> AlertRecord:
    """Mark an alert seen by ``by`` (acknowledging twice keeps the first acknowledgement)."""
    row = session.get(AlertRow, alert_id)
    if row is None:
        raise NotFoundError("alert", alert_id)
    if row.acknowledged_at is None:
        row.acknowledged_at, row.acknowledged_by = now_or(now), by
        session.flush()
    return _alert(row)
