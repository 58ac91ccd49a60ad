"""What the repositories return: frozen values, detached from the session that read them.

The storage layer's errors (:class:`~immunetwin.errors.StorageError` and below) are defined in
:mod:`immunetwin.errors` and re-exported here and by :mod:`immunetwin.storage`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from immunetwin.errors import ChecksumError, ConflictError, NotFoundError, StorageError

__all__ = [
    "AlertRecord",
    "AuditRecord",
    "ChecksumError",
    "ConflictError",
    "JobRecord",
    "MeasurementRecord",
    "NotFoundError",
    "PatientRecord",
    "SiteRecord",
    "StorageError",
    "TokenRecord",
    "TwinRecord",
    "TwinVersionRecord",
    "UserRecord",
]


@dataclass(frozen=True)
class SiteRecord:
    """A site (hospital, study centre)."""

    id: int
    code: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class PatientRecord:
    """A patient: pseudonymous id, site, and the reference time (day 0) if known."""

    id: int
    site: str
    pseudonym: str
    reference_time: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class MeasurementRecord:
    """A stored measurement (see :class:`immunetwin.io.clinical.ClinicalMeasurement` for the fields).

    ``day`` is the time in days after the patient's reference time, or ``None`` when that is unknown.
    """

    id: int
    patient_id: int
    loinc: str | None
    observable: str | None
    value: float
    unit: str
    observable_value: float | None
    observable_unit: str | None
    censored: bool
    time: datetime
    day: float | None
    source: str
    external_id: str | None
    payload_sha256: str
    key: str
    ingested_at: datetime


@dataclass(frozen=True)
class TwinRecord:
    """A patient's twin of one template; ``latest_version`` is 0 before the first save."""

    id: int
    patient_id: int
    template: str
    name: str
    created_at: datetime
    created_by: str | None
    latest_version: int


@dataclass(frozen=True)
class TwinVersionRecord:
    """One saved twin version, without its bytes (see :func:`~immunetwin.storage.load_twin_version`)."""

    id: int
    twin_id: int
    version: int
    reason: str
    reference_time: datetime | None
    provenance_sha256: str
    blob_sha256: str
    size: int
    created_at: datetime
    created_by: str | None


@dataclass(frozen=True)
class JobRecord:
    """A job: ``state`` is one of queued, running, done, failed, cancelled, interrupted."""

    id: int
    kind: str
    state: str
    progress: float
    message: str
    error: str | None
    result_ref: str | None
    params: dict[str, Any]
    patient_id: int | None
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @property
    def finished(self) -> bool:
        """Whether the job has reached a final state."""
        return self.state in ("done", "failed", "cancelled", "interrupted")


@dataclass(frozen=True)
class AlertRecord:
    """An alert about a patient; ``acknowledged_at`` is ``None`` while it is open."""

    id: int
    patient_id: int
    twin_version_id: int | None
    observable: str | None
    severity: str
    message: str
    created_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None


@dataclass(frozen=True)
class UserRecord:
    """A user with their roles and the codes of their sites (never the password hash)."""

    id: int
    username: str
    full_name: str
    active: bool
    roles: tuple[str, ...]
    sites: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True)
class TokenRecord:
    """An API token's metadata (the secret is returned once, by ``create_api_token``)."""

    id: int
    user_id: int
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class AuditRecord:
    """One audit-log entry."""

    id: int
    at: datetime
    actor: str
    action: str
    resource: str
    patient_id: int | None
    patient: str | None
    site: str | None
    detail: str
