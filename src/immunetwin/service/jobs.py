"""Jobs and alerts as the acting user sees them: status, cancellation, results; alerts and their
acknowledgement. A job about a patient is visible to whoever may see that patient; a job about no
patient to its creator and admins.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from immunetwin import storage
from immunetwin.errors import InputError
from immunetwin.service.auth import Principal, check_patient, require
from immunetwin.service.errors import PermissionDeniedError
from immunetwin.service.runners import Runner
from immunetwin.storage import AlertRecord, Database, JobRecord, PatientRecord

__all__ = [
    "acknowledge_alert",
    "cancel_job",
    "get_alert",
    "get_job",
    "job_report_path",
    "list_alerts",
    "list_jobs",
    "mark_interrupted",
]


def _job_access(
    session: Session, principal: Principal, job: JobRecord, permission: str
) -> PatientRecord | None:
    if job.patient_id is None:
        require(principal, permission)
        if not (principal.is_admin or job.created_by == principal.actor):
            raise PermissionDeniedError(f"job {job.id} belongs to {job.created_by}")
        return None
    patient = storage.get_patient(session, job.patient_id)
    check_patient(principal, patient, permission)
    return patient


def get_job(db: Database, principal: Principal, job_id: int) -> JobRecord:
    """A job's state, progress, message, error and result (audited when it concerns a patient)."""
    with db.transaction() as session:
        job = storage.get_job(session, job_id)
        patient = _job_access(session, principal, job, "twins:read")
        if patient is not None:
            storage.record_audit(session, actor=principal.actor, action="read", resource="job", patient=patient, detail=f"job {job_id}")  # fmt: skip
    return job


def list_jobs(db: Database, principal: Principal, *, state: str | None = None, limit: int = 100) -> tuple[JobRecord, ...]:  # fmt: skip
    """The newest jobs the user may see (of one state, if given)."""
    require(principal, "twins:read")
    with db.transaction() as session:
        jobs = storage.list_jobs(session, state=state, limit=limit if principal.is_admin else 10 * limit)
        sites: dict[int, str] = {}
        visible = []
        for job in jobs:
            if job.patient_id is None:
                ok = principal.is_admin or job.created_by == principal.actor
            else:
                if job.patient_id not in sites:
                    sites[job.patient_id] = storage.get_patient(session, job.patient_id).site
                ok = principal.sees_site(sites[job.patient_id])
            if ok:
                visible.append(job)
        storage.record_audit(session, actor=principal.actor, action="list", resource="jobs", detail=f"{len(visible[:limit])} jobs")  # fmt: skip
    return tuple(visible[:limit])


def cancel_job(db: Database, principal: Principal, runner: Runner, job_id: int) -> JobRecord:
    """Cancel a queued or running job (a finished one is a :class:`~immunetwin.storage.ConflictError`)."""
    with db.transaction() as session:
        job = storage.get_job(session, job_id)
        patient = _job_access(session, principal, job, "twins:write")
        job = storage.update_job(
            session, job_id, state="cancelled", message=f"cancelled by {principal.actor}"
        )
        storage.record_audit(session, actor=principal.actor, action="cancel", resource="job", patient=patient, detail=f"job {job_id}")  # fmt: skip
    runner.cancel(job_id)
    return job


def job_report_path(db: Database, principal: Principal, job_id: int, reports_dir: Path) -> Path:
    """The HTML file a finished report job wrote (audited read)."""
    job = get_job(db, principal, job_id)
    if job.kind != "report" or job.state != "done" or not (job.result_ref or "").startswith("report:"):
        raise InputError(f"job {job_id} is a {job.kind} job in state {job.state}: no report to show")
    path = reports_dir / str(job.result_ref).removeprefix("report:")
    if not path.is_file():
        raise storage.NotFoundError("report file", path.name)
    return path


def mark_interrupted(db: Database, reason: str = "the server stopped while the job was unfinished") -> tuple[JobRecord, ...]:  # fmt: skip
    """At start-up: every queued or running job becomes ``interrupted`` with ``reason`` (audited as system)."""
    with db.transaction() as session:
        jobs = storage.mark_interrupted_jobs_on_startup(session, reason)
        if jobs:
            ids = ", ".join(str(j.id) for j in jobs)
            storage.record_audit(session, actor="system", action="interrupt", resource="jobs", detail=f"jobs {ids}: {reason}")  # fmt: skip
    return jobs


def list_alerts(db: Database, principal: Principal, *, patient_id: int | None = None, open_only: bool = False) -> tuple[AlertRecord, ...]:  # fmt: skip
    """Alerts of the patients the user may see, newest first (audited)."""
    require(principal, "patients:read")
    with db.transaction() as session:
        if patient_id is not None:
            patient = storage.get_patient(session, patient_id)
            check_patient(principal, patient, "patients:read")
            alerts = storage.list_alerts(session, patient_id, open_only=open_only)
            storage.record_audit(session, actor=principal.actor, action="read", resource="alerts", patient=patient, detail=f"{len(alerts)} alerts")  # fmt: skip
            return alerts
        alerts = storage.list_alerts(session, open_only=open_only)
        sites = {}
        for alert in alerts:
            if alert.patient_id not in sites:
                sites[alert.patient_id] = storage.get_patient(session, alert.patient_id).site
        visible = tuple(a for a in alerts if principal.sees_site(sites[a.patient_id]))
        storage.record_audit(session, actor=principal.actor, action="list", resource="alerts", detail=f"{len(visible)} alerts")  # fmt: skip
    return visible


def get_alert(db: Database, principal: Principal, alert_id: int) -> AlertRecord:
    """One alert, if the user may see its patient (audited read)."""
    with db.transaction() as session:
        alert = storage.get_alert(session, alert_id)
        patient = storage.get_patient(session, alert.patient_id)
        check_patient(principal, patient, "patients:read")
        storage.record_audit(session, actor=principal.actor, action="read", resource="alert", patient=patient, detail=f"alert {alert_id}")  # fmt: skip
    return alert


def acknowledge_alert(db: Database, principal: Principal, alert_id: int) -> AlertRecord:
    """Mark an alert seen by the acting user."""
    with db.transaction() as session:
        alert = storage.get_alert(session, alert_id)
        patient = storage.get_patient(session, alert.patient_id)
        check_patient(principal, patient, "alerts:acknowledge")
        alert = storage.acknowledge_alert(session, alert_id, principal.actor)
        storage.record_audit(session, actor=principal.actor, action="acknowledge", resource="alert", patient=patient, detail=f"alert {alert_id}")  # fmt: skip
    return alert
