"""Sites, patients and their measurements.

Every function takes a :class:`~sqlalchemy.orm.Session` inside the caller's transaction
(:meth:`Database.transaction`) and returns frozen records; none commits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from immunetwin.errors import ConflictError, InputError, NotFoundError
from immunetwin.io.clinical import ClinicalMeasurement
from immunetwin.storage._common import aware, insert_ignoring, now_or
from immunetwin.storage.records import MeasurementRecord, PatientRecord, SiteRecord
from immunetwin.storage.tables import MeasurementRow, PatientRow, SiteRow

__all__ = [
    "add_measurements",
    "add_patient",
    "add_site",
    "count_measurements",
    "ensure_patient",
    "find_patient",
    "get_patient",
    "get_site",
    "list_measurements",
    "list_patients",
    "list_sites",
    "set_reference_time",
]

_CODE = re.compile(r"^[A-Za-z0-9\-._]{1,64}$")


def _code(text: str, what: str, limit: int = 64) -> str:
    if not _CODE.match(text) or len(text) > limit:
        raise InputError(f"{what} {text!r}: use 1 to {limit} letters, digits, '-', '.' or '_'")
    return text


def _site(row: SiteRow) -> SiteRecord:
    return SiteRecord(row.id, row.code, row.name, row.created_at)


def _patient(row: PatientRow, site: str) -> PatientRecord:
    return PatientRecord(row.id, site, row.pseudonym, row.reference_time, row.created_at)


def add_site(session: Session, code: str, name: str = "", *, now: datetime | None = None) -> SiteRecord:
    """Add a site with a short ``code`` (e.g. ``"charite"``) and a display name.

    Raises:
        ConflictError: a site with that code exists.
    """
    row = SiteRow(code=_code(code, "site code", 32), name=name or code, created_at=now_or(now))
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        raise ConflictError(f"site {code!r} exists already") from None
    return _site(row)


def _site_row(session: Session, code: str) -> SiteRow:
    row = session.scalar(select(SiteRow).where(SiteRow.code == code))
    if row is None:
        raise NotFoundError("site", code)
    return row


def get_site(session: Session, code: str) -> SiteRecord:
    """The site with that code (raises :class:`NotFoundError`)."""
    return _site(_site_row(session, code))


def list_sites(session: Session) -> tuple[SiteRecord, ...]:
    """All sites, by code."""
    return tuple(_site(r) for r in session.scalars(select(SiteRow).order_by(SiteRow.code)))


def add_patient(
    session: Session,
    site: str,
    pseudonym: str,
    *,
    reference_time: datetime | None = None,
    now: datetime | None = None,
) -> PatientRecord:
    """Add a patient known by ``pseudonym`` at ``site``; ``reference_time`` is their day 0 if known.

    Raises:
        NotFoundError: no such site.
        ConflictError: the site has a patient with that pseudonym already.
    """
    site_row = _site_row(session, site)
    ref = aware(reference_time, "reference_time") if reference_time else None
    row = PatientRow(
        site_id=site_row.id,
        pseudonym=_code(pseudonym, "pseudonym"),
        reference_time=ref,
        created_at=now_or(now),
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        raise ConflictError(f"site {site!r} has a patient {pseudonym!r} already") from None
    return _patient(row, site)


def ensure_patient(
    session: Session, site: str, pseudonym: str, *, now: datetime | None = None
) -> PatientRecord:
    """The patient ``pseudonym`` at ``site``, added if absent (safe when writers race)."""
    site_row = _site_row(session, site)
    values = {"site_id": site_row.id, "pseudonym": _code(pseudonym, "pseudonym"), "created_at": now_or(now)}
    insert_ignoring(session, PatientRow.__table__, ("site_id", "pseudonym"), [values])
    found = find_patient(session, site, pseudonym)  # inserted now, or by the writer we raced
    if found is None:
        raise NotFoundError("patient", f"{site}/{pseudonym}")
    return found


def find_patient(session: Session, site: str, pseudonym: str) -> PatientRecord | None:
    """The patient ``pseudonym`` at ``site``, or ``None``."""
    query = select(PatientRow).join(SiteRow).where(SiteRow.code == site, PatientRow.pseudonym == pseudonym)
    row = session.scalar(query)
    return None if row is None else _patient(row, site)


def get_patient(session: Session, patient_id: int) -> PatientRecord:
    """The patient with that id (raises :class:`NotFoundError`)."""
    found = session.execute(
        select(PatientRow, SiteRow.code).join(SiteRow).where(PatientRow.id == patient_id)
    ).first()
    if found is None:
        raise NotFoundError("patient", patient_id)
    return _patient(found[0], found[1])


def list_patients(session: Session, *, sites: Iterable[str] | None = None) -> tuple[PatientRecord, ...]:
    """Patients (of the given site codes only, if ``sites`` is given), by site and pseudonym."""
    query = select(PatientRow, SiteRow.code).join(SiteRow).order_by(SiteRow.code, PatientRow.pseudonym)
    if sites is not None:
        query = query.where(SiteRow.code.in_(list(sites)))
    return tuple(_patient(row, code) for row, code in session.execute(query))


def set_reference_time(session: Session, patient_id: int, when: datetime | None) -> PatientRecord:
    """Set (or clear) a patient's day 0, and recompute the ``day`` of their measurements."""
    ref = aware(when, "reference_time") if when else None
    session.execute(update(PatientRow).where(PatientRow.id == patient_id).values(reference_time=ref))
    patient = get_patient(session, patient_id)
    rows = session.scalars(select(MeasurementRow).where(MeasurementRow.patient_id == patient_id))
    for row in rows:
        row.day = _day(row.time, ref)
    session.flush()
    return patient


def _day(time: datetime, reference: datetime | None) -> float | None:
    return None if reference is None else (time - reference).total_seconds() / 86400.0


def add_measurements(
    session: Session,
    patient: PatientRecord,
    rows: Iterable[ClinicalMeasurement],
    *,
    now: datetime | None = None,
) -> tuple[int, int]:
    """Store a patient's measurements; one already stored (same idempotency key) is skipped.

    Returns:
        ``(inserted, duplicates)``.

    Raises:
        InputError: a row of another patient.
    """
    rows = tuple(rows)
    stamp, values = now_or(now), {}
    for row in rows:
        if row.patient != patient.pseudonym:
            raise InputError(
                f"{row.origin or 'row'}: patient {row.patient!r}, expected {patient.pseudonym!r}"
            )
        values.setdefault(row.key, _values(row, patient, stamp))
    if not values:
        return 0, 0
    result = insert_ignoring(session, MeasurementRow.__table__, ("patient_id", "key"), list(values.values()))
    inserted = len(result.all())
    return inserted, len(rows) - inserted


def _values(row: ClinicalMeasurement, patient: PatientRecord, stamp: datetime) -> dict[str, object]:
    return {
        "patient_id": patient.id,
        "loinc": row.loinc,
        "observable": row.observable,
        "value": row.value,
        "unit": row.unit,
        "observable_value": row.observable_value,
        "observable_unit": row.observable_unit,
        "censored": row.censored,
        "time": aware(row.time, "time"),
        "day": _day(aware(row.time, "time"), patient.reference_time),
        "source": row.source,
        "external_id": row.external_id,
        "payload_sha256": row.payload_sha256,
        "key": row.key,
        "ingested_at": stamp,
    }


def _measurement(row: MeasurementRow) -> MeasurementRecord:
    return MeasurementRecord(
        row.id, row.patient_id, row.loinc, row.observable, row.value, row.unit, row.observable_value,
        row.observable_unit, row.censored, row.time, row.day, row.source, row.external_id, row.payload_sha256,
        row.key, row.ingested_at,
    )  # fmt: skip


def list_measurements(
    session: Session,
    patient_id: int,
    *,
    observable: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[MeasurementRecord, ...]:
    """A patient's measurements in time order (optionally of one observable, in ``[since, until)``)."""
    query = select(MeasurementRow).where(MeasurementRow.patient_id == patient_id)
    if observable is not None:
        query = query.where(MeasurementRow.observable == observable)
    if since is not None:
        query = query.where(MeasurementRow.time >= aware(since, "since"))
    if until is not None:
        query = query.where(MeasurementRow.time < aware(until, "until"))
    rows = session.scalars(query.order_by(MeasurementRow.time, MeasurementRow.id))
    return tuple(_measurement(r) for r in rows)


def count_measurements(session: Session, patient_id: int | None = None) -> int:
    """How many measurements are stored (of one patient, if given)."""
    query = select(func.count()).select_from(MeasurementRow)
    if patient_id is not None:
        query = query.where(MeasurementRow.patient_id == patient_id)
    return int(session.scalar(query) or 0)
