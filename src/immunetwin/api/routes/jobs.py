"""``/api/jobs`` (status, cancel, report page) and ``/api/alerts``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from immunetwin import service
from immunetwin.api.schemas import AlertPublic, JobPublic
from immunetwin.api.state import MAX_ID, CurrentUser, Id, Service

__all__ = ["router"]

router = APIRouter()

JobState = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]


@router.get("/jobs", response_model=list[JobPublic], tags=["jobs"])
def list_jobs(
    state: Service, principal: CurrentUser, job_state: Annotated[JobState | None, Query(alias="state")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobPublic]:  # fmt: skip
    """The newest jobs the user may see."""
    return [
        JobPublic.model_validate(j)
        for j in service.list_jobs(state.db, principal, state=job_state, limit=limit)
    ]


@router.get("/jobs/{job_id}", response_model=JobPublic, tags=["jobs"])
def get_job(state: Service, principal: CurrentUser, job_id: Id) -> JobPublic:
    """A job's state, progress, message, error and result reference."""
    return JobPublic.model_validate(service.get_job(state.db, principal, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic, tags=["jobs"])
def cancel_job(state: Service, principal: CurrentUser, job_id: Id) -> JobPublic:
    """Cancel a queued or running job (409 when it has finished)."""
    return JobPublic.model_validate(service.cancel_job(state.db, principal, state.runner, job_id))


@router.get("/jobs/{job_id}/report", response_class=HTMLResponse, tags=["jobs"])
def job_report(state: Service, principal: CurrentUser, job_id: Id) -> HTMLResponse:
    """The HTML page a finished report job wrote."""
    path = service.job_report_path(state.db, principal, job_id, state.settings.reports_dir)
    return HTMLResponse(path.read_text(encoding="utf-8"))


@router.get("/alerts", response_model=list[AlertPublic], tags=["alerts"])
def list_alerts(
    state: Service,
    principal: CurrentUser,
    patient_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    open_only: bool = False,
) -> list[AlertPublic]:
    """Alerts of the user's patients, newest first."""
    alerts = service.list_alerts(state.db, principal, patient_id=patient_id, open_only=open_only)
    return [AlertPublic.model_validate(a) for a in alerts]


@router.get("/alerts/{alert_id}", response_model=AlertPublic, tags=["alerts"])
def get_alert(state: Service, principal: CurrentUser, alert_id: Id) -> AlertPublic:
    """One alert of a patient the user may see."""
    return AlertPublic.model_validate(service.get_alert(state.db, principal, alert_id))


@router.post("/alerts/{alert_id}/acknowledge", response_model=AlertPublic, tags=["alerts"])
def acknowledge(state: Service, principal: CurrentUser, alert_id: Id) -> AlertPublic:
    """Mark an alert seen."""
    return AlertPublic.model_validate(service.acknowledge_alert(state.db, principal, alert_id))
