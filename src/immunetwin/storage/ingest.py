"""Ingest: read a FHIR or CSV payload, check all of it, then store it in the caller's transaction.

```python
catalogue = observable_catalogue("viral_immune")
with db.transaction() as session:
    result = ingest_fhir(session, bundle_json, catalogue, site="charite")
```

Parsing finishes before anything is written, and writing happens in one transaction, so a bad payload
leaves the database as it was (the :class:`~immunetwin.errors.IngestError` names the field). A
measurement stored before (same patient, observable, time and value) is counted as a duplicate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.orm import Session

from immunetwin.errors import IngestError
from immunetwin.io.clinical import ClinicalMeasurement, ObservableCatalogue
from immunetwin.io.fhir import read_fhir
from immunetwin.io.measurements_csv import read_measurements_csv
from immunetwin.storage.patients import add_measurements, ensure_patient, find_patient, get_site
from immunetwin.storage.records import PatientRecord

__all__ = ["IngestResult", "ingest_csv", "ingest_fhir", "store_measurements"]


@dataclass(frozen=True)
class IngestResult:
    """What an ingest stored: new rows, rows already there, and the patients they belong to."""

    inserted: int
    duplicates: int
    patients: tuple[PatientRecord, ...]


def _unknown_patient(row: ClinicalMeasurement, site: str) -> IngestError:
    message = f"no patient {row.patient!r} at site {site!r} (add the patient first)"
    if row.source == "csv" and row.origin.startswith("row "):
        return IngestError(message, row=int(row.origin.removeprefix("row ")), column="patient")
    return IngestError(message, path=f"{row.origin}.subject.reference" if row.origin else "subject.reference")


def store_measurements(
    session: Session,
    site: str,
    measurements: Iterable[ClinicalMeasurement],
    *,
    create_patients: bool = False,
    now: datetime | None = None,
) -> IngestResult:
    """Store checked measurements of patients of ``site``.

    Args:
        create_patients: add patients the site does not know yet; otherwise an unknown patient is an
            :class:`IngestError` naming where it appeared.
    """
    get_site(session, site)  # NotFoundError before anything is written
    by_patient: dict[str, list[ClinicalMeasurement]] = {}
    for row in measurements:
        by_patient.setdefault(row.patient, []).append(row)
    patients, inserted, duplicates = [], 0, 0
    for pseudonym, rows in by_patient.items():
        patient = find_patient(session, site, pseudonym)
        if patient is None and not create_patients:
            raise _unknown_patient(rows[0], site)
        patient = patient or ensure_patient(session, site, pseudonym, now=now)
        new, old = add_measurements(session, patient, rows, now=now)
        patients.append(patient)
        inserted, duplicates = inserted + new, duplicates + old
    return IngestResult(inserted, duplicates, tuple(patients))


def ingest_fhir(
    session: Session,
    payload: str | bytes | Mapping[str, Any],
    catalogue: ObservableCatalogue,
    *,
    site: str,
    create_patients: bool = False,
    now: datetime | None = None,
) -> IngestResult:
    """Check and store a FHIR ``Observation`` or ``Bundle`` (see :func:`immunetwin.io.fhir.read_fhir`)."""
    rows = read_fhir(payload, catalogue)
    return store_measurements(session, site, rows, create_patients=create_patients, now=now)


def ingest_csv(
    session: Session,
    source: str | bytes | Path | TextIO,
    catalogue: ObservableCatalogue,
    *,
    site: str,
    create_patients: bool = False,
    now: datetime | None = None,
) -> IngestResult:
    """Check and store a measurement CSV (see :mod:`immunetwin.io.measurements_csv`)."""
    rows = read_measurements_csv(source, catalogue)
    return store_measurements(session, site, rows, create_patients=create_patients, now=now)
