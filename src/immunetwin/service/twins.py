"""Twins of stored patients: start personalise / assimilate / report jobs, forecast, decide, history.

Long work is a job (:mod:`immunetwin.service.work`) handed to a :class:`~immunetwin.service.runners.Runner`
after the transaction that queued it has committed; a forecast or a decision is computed in the
request from the cached twin (:class:`~immunetwin.service.twinstore.TwinCache`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from immunetwin import storage
from immunetwin.decisions import Decision, ScenarioComparison
from immunetwin.errors import InputError
from immunetwin.service.auth import Principal, check_patient
from immunetwin.service.decisions import compare_and_decide
from immunetwin.service.runners import Runner
from immunetwin.service.settings import ServiceSettings
from immunetwin.service.twinstore import TwinCache
from immunetwin.storage import Database, JobRecord, PatientRecord, TwinRecord, TwinVersionRecord
from immunetwin.twin import Forecast, Twin, forecast

__all__ = [
    "TwinView",
    "decide_twin",
    "forecast_twin",
    "get_twin",
    "list_twins",
    "load_twin_view",
    "start_assimilate",
    "start_report",
    "start_twin",
    "start_updates",
    "twin_history",
]

MAX_HORIZON = 365.0


@dataclass(frozen=True, eq=False)
class TwinView:
    """A stored twin version, loaded: its row, its patient, the version record and the twin itself."""

    record: TwinRecord
    patient: PatientRecord
    version: TwinVersionRecord
    twin: Twin


def _twin_and_patient(session: Session, principal: Principal, twin_id: int, permission: str) -> tuple[TwinRecord, PatientRecord]:  # fmt: skip
    record = storage.get_twin(session, twin_id)
    patient = storage.get_patient(session, record.patient_id)
    check_patient(principal, patient, permission)
    return record, patient


def _audit(session: Session, principal: Principal, action: str, patient: PatientRecord, detail: str) -> None:
    storage.record_audit(session, actor=principal.actor, action=action, resource="twin", patient=patient, detail=detail)  # fmt: skip


def _queue(session: Session, principal: Principal, kind: str, patient: PatientRecord, params: dict[str, Any]) -> JobRecord:  # fmt: skip
    job = storage.create_job(session, kind, params=params, patient_id=patient.id, created_by=principal.actor)
    _audit(session, principal, "write", patient, f"queued {kind} job {job.id} (twin {params['twin_id']})")
    return job


def start_twin(
    db: Database,
    principal: Principal,
    runner: Runner,
    settings: ServiceSettings,
    cache: TwinCache,
    patient_id: int,
    template: str,
    *,
    name: str = "",
    draws: int | None = None,
    seed: int = 0,
    estimate: Sequence[str] | None = None,
) -> tuple[TwinRecord, JobRecord]:
    """Create a patient's twin of ``template`` and queue its personalise job (version 1).

    The twin is personalised with the twin package's default method; ``draws`` (particles) defaults
    to, and may not exceed, ``settings.twin_draws``.
    """
    tpl = cache.template(template)  # UnknownIdError for an unknown template, before any write
    draws = settings.twin_draws if draws is None else draws
    if not 2 <= draws <= settings.twin_draws:
        raise InputError(f"draws must lie in [2, {settings.twin_draws}], got {draws}")
    if estimate is not None:
        unknown = [p for p in estimate if p not in tpl.metadata.parameters]
        if unknown or not estimate:
            raise InputError(
                f"estimate: {unknown[0] if unknown else 'empty'} is not a parameter of '{template}'"
            )
    with db.transaction() as session:
        patient = storage.get_patient(session, patient_id)
        check_patient(principal, patient, "twins:write")
        if patient.reference_time is None:
            raise InputError(f"patient {patient.pseudonym!r} has no reference time (day 0): set it first")
        record = storage.create_twin(session, patient.id, tpl.name, name=name, created_by=principal.actor)
        params = {"twin_id": record.id, "draws": draws, "seed": seed,
                  "estimate": list(estimate) if estimate is not None else None}  # fmt: skip
        job = _queue(session, principal, "personalise", patient, params)
    runner.submit(job.id)
    return record, job


def start_assimilate(
    db: Database, principal: Principal, runner: Runner, twin_id: int, *, seed: int = 0
) -> JobRecord:
    """Queue a job that absorbs the patient's measurements the twin has not seen."""
    with db.transaction() as session:
        _, patient = _twin_and_patient(session, principal, twin_id, "twins:write")
        job = _queue(session, principal, "assimilate", patient, {"twin_id": twin_id, "seed": seed})
    runner.submit(job.id)
    return job


def start_updates(db: Database, principal: Principal, runner: Runner, patients: Sequence[PatientRecord]) -> tuple[JobRecord, ...]:  # fmt: skip
    """Queue an assimilate job for every personalised twin of these patients (after an ingest)."""
    with db.transaction(readonly=True) as session:
        twins = [t for p in patients for t in storage.list_twins(session, p.id) if t.latest_version > 0]
    return tuple(start_assimilate(db, principal, runner, t.id) for t in twins)


def start_report(
    db: Database,
    principal: Principal,
    runner: Runner,
    twin_id: int,
    *,
    version: int | None = None,
    horizon: float = 14.0,
    weights: Mapping[str, float] | None = None,
    costs: Mapping[str, float] | None = None,
    scenarios: Sequence[str] | None = None,
) -> JobRecord:
    """Queue a report job (HTML; with a scenario comparison and decision when ``weights`` are given)."""
    if not 0 < horizon <= MAX_HORIZON:
        raise InputError(f"horizon must lie in (0, {MAX_HORIZON:g}] days, got {horizon}")
    with db.transaction() as session:
        _, patient = _twin_and_patient(session, principal, twin_id, "twins:read")
        params = {"twin_id": twin_id, "version": version, "horizon": horizon, "weights": dict(weights or {}),
                  "costs": dict(costs or {}), "scenarios": list(scenarios) if scenarios else None}  # fmt: skip
        job = _queue(session, principal, "report", patient, params)
    runner.submit(job.id)
    return job


def get_twin(db: Database, principal: Principal, twin_id: int) -> tuple[TwinRecord, PatientRecord]:
    """A twin row and its patient (audited read)."""
    with db.transaction() as session:
        record, patient = _twin_and_patient(session, principal, twin_id, "twins:read")
        _audit(session, principal, "read", patient, f"twin {twin_id}")
    return record, patient


def list_twins(db: Database, principal: Principal, patient_id: int) -> tuple[TwinRecord, ...]:
    """A patient's twins (audited read)."""
    with db.transaction() as session:
        patient = storage.get_patient(session, patient_id)
        check_patient(principal, patient, "twins:read")
        twins = storage.list_twins(session, patient_id)
        _audit(session, principal, "read", patient, f"{len(twins)} twins")
    return twins


def twin_history(db: Database, principal: Principal, twin_id: int) -> tuple[TwinRecord, tuple[TwinVersionRecord, ...]]:  # fmt: skip
    """A twin and its stored versions, oldest first (audited read)."""
    with db.transaction() as session:
        record, patient = _twin_and_patient(session, principal, twin_id, "twins:read")
        versions = storage.twin_history(session, twin_id)
        _audit(session, principal, "read", patient, f"history of twin {twin_id}")
    return record, versions


def load_twin_view(db: Database, principal: Principal, cache: TwinCache, twin_id: int, version: int | None = None, *, what: str = "twin") -> TwinView:  # fmt: skip
    """A stored twin version, loaded through the cache (audited read; ``what`` says what for)."""
    with db.transaction() as session:
        record, patient = _twin_and_patient(session, principal, twin_id, "twins:read")
        versions = storage.twin_history(session, twin_id)
        if not versions:
            raise InputError(f"twin {twin_id} has no version yet (its personalise job has not finished)")
        chosen = (
            versions[-1] if version is None else next((v for v in versions if v.version == version), None)
        )
        if chosen is None:
            raise storage.NotFoundError("twin version", f"{twin_id}/{version}")
        _audit(session, principal, "read", patient, f"{what} of twin {twin_id} version {chosen.version}")

        def read() -> bytes:
            return storage.load_twin_version(session, twin_id, chosen.version)[1]

        twin = cache.twin(chosen, record.template, read)
    return TwinView(record, patient, chosen, twin)


def _schedule(twin: Twin, treatments: Sequence[str]) -> Any:
    from immunetwin.decisions import scenario as parse_scenario

    if not treatments:
        return None
    return parse_scenario(twin.template, "+".join(treatments)).schedule


def forecast_twin(
    db: Database,
    principal: Principal,
    cache: TwinCache,
    twin_id: int,
    *,
    horizon: float = 28.0,
    version: int | None = None,
    treatments: Sequence[str] = (),
) -> tuple[TwinView, Forecast]:
    """Predictive bands of a twin version over ``horizon`` days, optionally under treatments given as
    scenario specs (``"antiviral(start=3)"``)."""
    if not 0 < horizon <= MAX_HORIZON:
        raise InputError(f"horizon must lie in (0, {MAX_HORIZON:g}] days, got {horizon}")
    view = load_twin_view(db, principal, cache, twin_id, version, what="forecast")
    return view, forecast(view.twin, horizon, _schedule(view.twin, treatments))


def decide_twin(
    db: Database,
    principal: Principal,
    cache: TwinCache,
    twin_id: int,
    *,
    weights: Mapping[str, float],
    costs: Mapping[str, float] | None = None,
    scenarios: Sequence[str] | None = None,
    horizon: float = 40.0,
    version: int | None = None,
) -> tuple[TwinView, ScenarioComparison, Decision]:
    """Compare treatment scenarios over the twin's particles and decide by expected utility."""
    if not 0 < horizon <= MAX_HORIZON:
        raise InputError(f"horizon must lie in (0, {MAX_HORIZON:g}] days, got {horizon}")
    view = load_twin_view(db, principal, cache, twin_id, version, what="decision")
    comparison, decision = compare_and_decide(view.twin, scenarios, weights, costs or {}, horizon)
    return view, comparison, decision
