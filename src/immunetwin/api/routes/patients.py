"""``/api/patients`` and ``/api/measurements``: patients of the user's sites and their measurements."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status

from immunetwin import service
from immunetwin.api.schemas import (
    IngestPublic,
    JobPublic,
    MeasurementPublic,
    PatientCreate,
    PatientPublic,
    PatientUpdate,
)
from immunetwin.api.state import CurrentUser, Id, Service
from immunetwin.errors import IngestError, InputError

__all__ = ["router"]

router = APIRouter(tags=["patients"])

_BODY_TYPES: dict[str, Any] = {
    "application/fhir+json": {"schema": {"type": "object", "description": "FHIR R4 Observation or Bundle"}},
    "application/json": {"schema": {"type": "object", "description": "FHIR R4 Observation or Bundle"}},
    "text/csv": {
        "schema": {"type": "string", "description": "patient,loinc|observable,value,unit,time[,censored]"}
    },
}


@router.get("/patients", response_model=list[PatientPublic])
def list_patients(
    state: Service, principal: CurrentUser, site: Annotated[str | None, Query(max_length=32)] = None
) -> list[PatientPublic]:
    """The patients of the user's sites (of one site, if given), with their open alert counts."""
    patients = service.list_patients(state.db, principal, site=site)
    alerts = service.list_alerts(state.db, principal, open_only=True) if patients else ()
    counts: dict[int, int] = {}
    for a in alerts:
        counts[a.patient_id] = counts.get(a.patient_id, 0) + 1
    return [
        PatientPublic.model_validate(p).model_copy(update={"open_alerts": counts.get(p.id, 0)})
        for p in patients
    ]


@router.post("/patients", response_model=PatientPublic, status_code=status.HTTP_201_CREATED)
def add_patient(state: Service, principal: CurrentUser, body: PatientCreate) -> PatientPublic:
    """Add a patient at one of the user's sites (409 if the pseudonym exists there)."""
    patient = service.add_patient(
        state.db, principal, body.site, body.pseudonym, reference_time=body.reference_time
    )
    return PatientPublic.model_validate(patient)


@router.get("/patients/{patient_id}", response_model=PatientPublic)
def get_patient(state: Service, principal: CurrentUser, patient_id: Id) -> PatientPublic:
    """One patient."""
    return PatientPublic.model_validate(service.get_patient(state.db, principal, patient_id))


@router.patch("/patients/{patient_id}", response_model=PatientPublic)
def update_patient(
    state: Service, principal: CurrentUser, patient_id: Id, body: PatientUpdate
) -> PatientPublic:
    """Set or clear the patient's reference time (day 0)."""
    patient = service.set_reference_time(state.db, principal, patient_id, body.reference_time)
    return PatientPublic.model_validate(patient)


@router.get("/patients/{patient_id}/measurements", response_model=list[MeasurementPublic])
def measurements(
    state: Service, principal: CurrentUser, patient_id: Id,
    observable: Annotated[str | None, Query(max_length=64)] = None,
) -> list[MeasurementPublic]:  # fmt: skip
    """The patient's measurements in time order."""
    _, rows = service.list_measurements(state.db, principal, patient_id, observable=observable)
    return [MeasurementPublic.model_validate(r) for r in rows]


def _kind(request: Request) -> str:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in ("text/csv", "application/csv"):
        return "csv"
    if media in ("application/json", "application/fhir+json"):
        return "fhir"
    raise IngestError(f"content type {media or 'missing'!r}: send application/fhir+json or text/csv", path="Content-Type")  # fmt: skip


async def _body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(f"the request body is larger than {limit} bytes: send it in parts")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/measurements", response_model=IngestPublic, openapi_extra={"requestBody": {"required": True, "content": _BODY_TYPES}},
)  # fmt: skip
async def post_measurements(
    request: Request,
    state: Service,
    principal: CurrentUser,
    site: Annotated[str, Query(min_length=1, max_length=32, description="site of the patients")],
    template: Annotated[str, Query(min_length=1, max_length=64, description="template whose observables they are")],
    create_patients: bool = False,
    update_twins: Annotated[bool, Query(description="queue an assimilate job for each twin of these patients")] = False,
) -> IngestPublic:  # fmt: skip
    """Store a FHIR R4 Observation/Bundle (JSON) or a measurement CSV; idempotent (a resent measurement
    is a duplicate); a bad payload is refused whole with 422 naming the field (``where``)."""
    from starlette.concurrency import run_in_threadpool

    kind = _kind(request)
    payload = await _body(request, state.settings.max_body_bytes)
    result = await run_in_threadpool(
        service.ingest, state.db, principal, payload, kind=kind, site=site, template=template,
        create_patients=create_patients,
        cache=state.cache,
    )  # fmt: skip
    jobs = ()
    if update_twins and result.inserted:
        jobs = await run_in_threadpool(
            service.start_updates, state.db, principal, state.runner, result.patients
        )
    return IngestPublic(
        inserted=result.inserted, duplicates=result.duplicates,
        patients=[PatientPublic.model_validate(p) for p in result.patients],
        jobs=[JobPublic.model_validate(j) for j in jobs],
    )  # fmt: skip
