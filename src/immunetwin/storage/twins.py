"""Twins and their versions: the serialised twin is stored as opaque bytes with a SHA-256 checksum.

The bytes come from the twin package's save function; this module never looks inside them. Versions
are numbered 1, 2, ... per twin; saving locks the twin's row (PostgreSQL ``SELECT ... FOR UPDATE``;
SQLite write transactions are exclusive already), so concurrent saves get consecutive numbers.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from immunetwin.errors import ChecksumError, ConflictError, InputError, NotFoundError
from immunetwin.storage._common import aware, now_or
from immunetwin.storage.records import TwinRecord, TwinVersionRecord
from immunetwin.storage.tables import PatientRow, TwinRow, TwinVersionRow

__all__ = ["create_twin", "get_twin", "list_twins", "load_twin_version", "save_twin_version", "twin_history"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _latest(session: Session, twin_id: int) -> int:
    query = select(func.max(TwinVersionRow.version)).where(TwinVersionRow.twin_id == twin_id)
    return int(session.scalar(query) or 0)


def _twin(session: Session, row: TwinRow) -> TwinRecord:
    return TwinRecord(
        row.id,
        row.patient_id,
        row.template,
        row.name,
        row.created_at,
        row.created_by,
        _latest(session, row.id),
    )


def _version(row: TwinVersionRow) -> TwinVersionRecord:
    return TwinVersionRecord(
        row.id, row.twin_id, row.version, row.reason, row.reference_time, row.provenance_sha256,
        row.blob_sha256, row.size, row.created_at, row.created_by,
    )  # fmt: skip


def create_twin(
    session: Session,
    patient_id: int,
    template: str,
    *,
    name: str = "",
    created_by: str | None = None,
    now: datetime | None = None,
) -> TwinRecord:
    """Create a patient's twin of ``template`` (no version yet); ``name`` tells twins of one template apart.

    Raises:
        NotFoundError: no such patient.
        ConflictError: the patient has a twin of that template and name.
    """
    if session.get(PatientRow, patient_id) is None:
        raise NotFoundError("patient", patient_id)
    row = TwinRow(
        patient_id=patient_id, template=template, name=name, created_at=now_or(now), created_by=created_by
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        raise ConflictError(f"patient {patient_id} has a '{template}' twin named {name!r} already") from None
    return _twin(session, row)


def get_twin(session: Session, twin_id: int) -> TwinRecord:
    """The twin with that id (raises :class:`NotFoundError`)."""
    row = session.get(TwinRow, twin_id)
    if row is None:
        raise NotFoundError("twin", twin_id)
    return _twin(session, row)


def list_twins(session: Session, patient_id: int) -> tuple[TwinRecord, ...]:
    """A patient's twins, oldest first."""
    rows = session.scalars(select(TwinRow).where(TwinRow.patient_id == patient_id).order_by(TwinRow.id))
    return tuple(_twin(session, r) for r in rows)


def save_twin_version(
    session: Session,
    twin_id: int,
    blob: bytes,
    *,
    reason: str,
    provenance_sha256: str,
    reference_time: datetime | None = None,
    created_by: str | None = None,
    now: datetime | None = None,
) -> TwinVersionRecord:
    """Store the next version of a twin.

    Args:
        blob: the serialised twin (opaque bytes).
        reason: why it changed, e.g. ``"personalise"``, ``"assimilate"``, ``"recalibrate"``.
        provenance_sha256: the twin's provenance hash (64 lowercase hex digits).
        reference_time: the twin's day 0.

    Raises:
        NotFoundError: no such twin.
        InputError: an empty blob or a malformed hash.
    """
    if not isinstance(blob, bytes | bytearray | memoryview) or len(blob) == 0:
        raise InputError("a twin version needs the non-empty bytes of the serialised twin")
    if not _SHA256.match(provenance_sha256):
        raise InputError(f"provenance_sha256 {provenance_sha256!r} is not 64 lowercase hex digits")
    twin = session.scalar(select(TwinRow).where(TwinRow.id == twin_id).with_for_update())
    if twin is None:
        raise NotFoundError("twin", twin_id)
    data = bytes(blob)
    row = TwinVersionRow(
        twin_id=twin_id,
        version=_latest(session, twin_id) + 1,
        reason=reason,
        reference_time=aware(reference_time, "reference_time") if reference_time else None,
        provenance_sha256=provenance_sha256,
        blob=data,
        blob_sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        created_at=now_or(now),
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    return _version(row)


def twin_history(session: Session, twin_id: int) -> tuple[TwinVersionRecord, ...]:
    """All versions of a twin, oldest first (without their bytes)."""
    columns = [c for c in TwinVersionRow.__table__.c if c.name != "blob"]
    query = select(*columns).where(TwinVersionRow.twin_id == twin_id).order_by(TwinVersionRow.version)
    return tuple(TwinVersionRecord(**row._asdict()) for row in session.execute(query))


def load_twin_version(
    session: Session, twin_id: int, version: int | None = None
) -> tuple[TwinVersionRecord, bytes]:
    """A twin version (the newest if ``version`` is None) and its bytes, checked against their SHA-256.

    Raises:
        NotFoundError: no such twin or version.
        ChecksumError: the stored bytes do not match their checksum.
    """
    query = select(TwinVersionRow).where(TwinVersionRow.twin_id == twin_id)
    if version is None:
        query = query.order_by(TwinVersionRow.version.desc()).limit(1)
    else:
        query = query.where(TwinVersionRow.version == version)
    row = session.scalar(query)
    if row is None:
        raise NotFoundError("twin version", f"{twin_id}/{version or 'latest'}")
    data = bytes(row.blob)
    if hashlib.sha256(data).hexdigest() != row.blob_sha256 or len(data) != row.size:
        raise ChecksumError(f"twin {twin_id} version {row.version}: stored bytes do not match their SHA-256")
    return _version(row), data
