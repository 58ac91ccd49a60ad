"""``/api/patients/{id}/twins`` and ``/api/twins/{id}``: create (a personalise job), assimilate (a job),
forecast, scenarios and decision, report (a job), history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from immunetwin import service
from immunetwin.api.schemas import (
    DecisionPublic,
    DecisionRequest,
    ForecastPublic,
    JobPublic,
    ReportRequest,
    TwinCreate,
    TwinHistory,
    TwinPublic,
    TwinStarted,
    TwinVersionPublic,
    finite,
)
from immunetwin.api.state import CurrentUser, Id, Service

__all__ = ["router"]

router = APIRouter(tags=["twins"])


@router.get("/patients/{patient_id}/twins", response_model=list[TwinPublic])
def list_twins(state: Service, principal: CurrentUser, patient_id: Id) -> list[TwinPublic]:
    """The patient's twins."""
    return [TwinPublic.model_validate(t) for t in service.list_twins(state.db, principal, patient_id)]


@router.post("/patients/{patient_id}/twins", response_model=TwinStarted, status_code=status.HTTP_202_ACCEPTED)
def create_twin(state: Service, principal: CurrentUser, patient_id: Id, body: TwinCreate) -> TwinStarted:
    """Create a twin of a template and queue its personalise job (poll ``/api/jobs/{id}``)."""
    twin, job = service.start_twin(
        state.db, principal, state.runner, state.settings, state.cache, patient_id, body.template, name=body.name,
        draws=body.draws, seed=body.seed, estimate=body.estimate,
    )  # fmt: skip
    return TwinStarted(twin=TwinPublic.model_validate(twin), job=JobPublic.model_validate(job))


@router.get("/twins/{twin_id}", response_model=TwinPublic)
def get_twin(state: Service, principal: CurrentUser, twin_id: Id) -> TwinPublic:
    """One twin (``latest_version`` 0 while its personalise job runs)."""
    return TwinPublic.model_validate(service.get_twin(state.db, principal, twin_id)[0])


@router.get("/twins/{twin_id}/history", response_model=TwinHistory)
def history(state: Service, principal: CurrentUser, twin_id: Id) -> TwinHistory:
    """The twin's stored versions, oldest first."""
    twin, versions = service.twin_history(state.db, principal, twin_id)
    return TwinHistory(twin=TwinPublic.model_validate(twin), versions=[TwinVersionPublic.model_validate(v) for v in versions])  # fmt: skip


@router.post("/twins/{twin_id}/assimilate", response_model=JobPublic, status_code=status.HTTP_202_ACCEPTED)
def assimilate(state: Service, principal: CurrentUser, twin_id: Id) -> JobPublic:
    """Queue a job that absorbs the measurements the twin has not seen (one version per day)."""
    return JobPublic.model_validate(service.start_assimilate(state.db, principal, state.runner, twin_id))


def _rows(q: object) -> list[list[float | None]]:
    return [[finite(x) for x in row] for row in q]  # type: ignore[attr-defined]


@router.get("/twins/{twin_id}/forecast", response_model=ForecastPublic)
def forecast(
    state: Service,
    principal: CurrentUser,
    twin_id: Id,
    horizon: Annotated[float, Query(gt=0, le=365, description="days after the twin's last data")] = 28.0,
    version: Annotated[int | None, Query(ge=1)] = None,
    treatment: Annotated[list[str] | None, Query(max_length=10, description="scenario term, e.g. antiviral(start=3)")] = None,
) -> ForecastPublic:  # fmt: skip
    """Predictive quantiles (5, 25, 50, 75, 95 %) of every observable and latent state."""
    view, fc = service.forecast_twin(state.db, principal, state.cache, twin_id, horizon=horizon, version=version,
                                     treatments=treatment or ())  # fmt: skip
    return ForecastPublic(
        twin_id=twin_id, version=view.version.version, patient=view.patient.pseudonym,
        reference_time=fc.reference_time, scenario=fc.scenario, levels=list(fc.levels),
        times=[float(t) for t in fc.times], units=dict(fc.units),
        predictive={k: _rows(v) for k, v in fc.predictive.items()}, states={k: _rows(v) for k, v in fc.states.items()},
        particles=fc.particles, failed=fc.failed,
    )  # fmt: skip


def _records(frame: object) -> list[dict]:
    rows = frame.to_dict(orient="records")  # type: ignore[attr-defined]
    return [{str(k): (finite(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]


@router.post("/twins/{twin_id}/decide", response_model=DecisionPublic)
def decide(state: Service, principal: CurrentUser, twin_id: Id, body: DecisionRequest) -> DecisionPublic:
    """Compare treatment scenarios over the twin's particles and decide by expected utility."""
    view, comparison, d = service.decide_twin(
        state.db, principal, state.cache, twin_id, weights=body.weights, costs=body.costs, scenarios=body.scenarios,
        horizon=body.horizon, version=body.version,
    )  # fmt: skip
    return DecisionPublic(
        twin_id=twin_id, version=view.version.version, action=str(d.action), chosen=d.chosen, runner_up=d.runner_up,
        criterion=d.criterion, margin=finite(d.margin), margin_mcse=finite(d.margin_mcse), ess=finite(d.ess),
        reasons=list(d.reasons), scores=_records(d.to_frame()), comparison=_records(comparison.to_frame()),
    )  # fmt: skip


@router.post("/twins/{twin_id}/report", response_model=JobPublic, status_code=status.HTTP_202_ACCEPTED)
def report(state: Service, principal: CurrentUser, twin_id: Id, body: ReportRequest) -> JobPublic:
    """Queue an HTML report job; fetch the page from ``/api/jobs/{id}/report`` when it is done."""
    job = service.start_report(
        state.db, principal, state.runner, twin_id, version=body.version, horizon=body.horizon,
        weights=body.weights, costs=body.costs, scenarios=body.scenarios,
    )  # fmt: skip
    return JobPublic.model_validate(job)
