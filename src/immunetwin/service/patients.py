"""Patients and their measurements: each function is one transaction with its authorisation check and
an audit entry for every patient whose data it reads or writes.

```python
patients = list_patients(db, principal)                      # only the user's sites
patient = add_patient(db, principal, "charite", "P001", reference_time=onset)
result = ingest(db, principal, csv_bytes, kind="csv", site="charite", template="viral_tiv")
```
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from immunetwin import storage
from immunetwin.errors import ImmunetwinError, IngestError, InputError
from immunetwin.io.clinical import ObservableCatalogue, observable_catalogue
from immunetwin.service.auth import Principal, check_patient, require
from immunetwin.service.errors import PermissionDeniedError
from immunetwin.service.twinstore import TwinCache
from immunetwin.storage import Database, IngestResult, MeasurementRecord, PatientRecord

__all__ = [
    "PayloadKind",
    "add_patient",
    "get_patient",
    "ingest",
    "list_measurements",
    "list_patients",
    "set_reference_time",
]

PayloadKind = Literal["fhir", "csv"]


def _site_access(principal: Principal, site: str, permission: str) -> None:
    require(principal, permission)
    if not principal.sees_site(site):
        raise PermissionDeniedError(f"{principal.user.username} has no access to site {site!r}")


def list_patients(
    db: Database, principal: Principal, *, site: str | None = None
) -> tuple[PatientRecord, ...]:
    """The patients the user may see (of one site, if given); the listing is audited."""
    require(principal, "patients:read")
    if site is not None:
        _site_access(principal, site, "patients:read")
    sites = (site,) if site is not None else principal.visible_sites
    with db.transaction() as session:
        patients = storage.list_patients(session, sites=sites)
        detail = f"{len(patients)} patients of {', '.join(sites) if sites is not None else 'every site'}"
        storage.record_audit(
            session, actor=principal.actor, action="list", resource="patients", detail=detail
        )
    return patients


def add_patient(
    db: Database, principal: Principal, site: str, pseudonym: str, *, reference_time: datetime | None = None
) -> PatientRecord:
    """Add a patient at ``site`` (``reference_time``: their day 0, e.g. symptom onset)."""
    _site_access(principal, site, "patients:write")
    with db.transaction() as session:
        patient = storage.add_patient(session, site, pseudonym, reference_time=reference_time)
        storage.record_audit(
            session, actor=principal.actor, action="create", resource="patient", patient=patient
        )
    return patient


def get_patient(db: Database, principal: Principal, patient_id: int) -> PatientRecord:
    """One patient (audited)."""
    with db.transaction() as session:
        patient = storage.get_patient(session, patient_id)
        check_patient(principal, patient, "patients:read")
        storage.record_audit(
            session, actor=principal.actor, action="read", resource="patient", patient=patient
        )
    return patient


def set_reference_time(
    db: Database, principal: Principal, patient_id: int, when: datetime | None
) -> PatientRecord:
    """Set (or clear) a patient's day 0; their measurements' days follow."""
    with db.transaction() as session:
        check_patient(principal, storage.get_patient(session, patient_id), "patients:write")
        patient = storage.set_reference_time(session, patient_id, when)
        detail = when.isoformat() if when is not None else "cleared"
        storage.record_audit(
            session, actor=principal.actor, action="update", resource="reference_time", patient=patient,
            detail=detail,
        )  # fmt: skip
    return patient


def list_measurements(
    db: Database, principal: Principal, patient_id: int, *, observable: str | None = None
) -> tuple[PatientRecord, tuple[MeasurementRecord, ...]]:
    """A patient and their measurements in time order (audited)."""
    with db.transaction() as session:
        patient = storage.get_patient(session, patient_id)
        check_patient(principal, patient, "patients:read")
        rows = storage.list_measurements(session, patient_id, observable=observable)
        storage.record_audit(
            session, actor=principal.actor, action="read", resource="measurements", patient=patient,
            detail=f"{len(rows)} rows",
        )  # fmt: skip
    return patient, rows


def _template_catalogue(template: str, cache: TwinCache | None) -> ObservableCatalogue:
    try:
        return cache.catalogue(template) if cache is not None else observable_catalogue(template)
    except ImmunetwinError as err:  # TemplateError, UnknownIdError: an unknown template name
        raise IngestError(f"unknown template {template!r} ({err})", path="template") from None


def ingest(
    db: Database,
    principal: Principal,
    payload: str | bytes,
    *,
    kind: PayloadKind,
    site: str,
    template: str,
    create_patients: bool = False,
    cache: TwinCache | None = None,
) -> IngestResult:
    """Check and store a FHIR ``Observation``/``Bundle`` or a measurement CSV of patients of ``site``.

    Idempotent: a measurement stored before is counted as a duplicate. The payload is parsed whole
    before anything is written, and written in one transaction together with one audit entry per
    patient, so a refused payload (an :class:`~immunetwin.errors.IngestError` naming the field) leaves
    nothing behind.

    Args:
        kind: ``"fhir"`` (JSON) or ``"csv"``.
        template: the template whose observables the measurements are mapped to (LOINC codes, units).
        create_patients: add pseudonyms the site does not know yet (else they are refused).
        cache: where to find the template's catalogue (a server passes its cache: loading a template
            is slow and not thread-safe).
    """
    _site_access(principal, site, "measurements:write")
    if create_patients:
        _site_access(principal, site, "patients:write")
    catalogue = _template_catalogue(template, cache)
    if kind == "fhir":
        from immunetwin.io.fhir import read_fhir

        rows = read_fhir(payload, catalogue)  # type: ignore[arg-type]
    elif kind == "csv":
        from immunetwin.io.measurements_csv import read_measurements_csv

        rows = read_measurements_csv(payload, catalogue)  # type: ignore[arg-type]
    else:
        raise InputError(f"unknown payload kind {kind!r} (fhir or csv)")
    with db.transaction() as session:
        result = storage.store_measurements(session, site, rows, create_patients=create_patients)
        for patient in result.patients:
            count = sum(r.patient == patient.pseudonym for r in rows)
            storage.record_audit(
                session, actor=principal.actor, action="ingest", resource="measurements", patient=patient,
                detail=f"{count} rows ({kind}, template {template})",
            )  # fmt: skip
    return result
