"""The database tables (SQLAlchemy 2 typed declarative); the Alembic migrations create exactly these.

Times are stored in UTC (``timestamptz`` on PostgreSQL, ISO text on SQLite) and read back
timezone-aware. Primary keys are integers; patients are known by a pseudonymous id unique per site.
The audit log has no foreign keys, so deleting a patient or a user never touches it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "JOB_STATES",
    "ROLES",
    "SEVERITIES",
    "AlertRow",
    "ApiTokenRow",
    "AuditRow",
    "Base",
    "JobRow",
    "MeasurementRow",
    "PatientRow",
    "RoleRow",
    "SiteMembershipRow",
    "SiteRow",
    "TwinRow",
    "TwinVersionRow",
    "UTCDateTime",
    "UserRoleRow",
    "UserRow",
]

JOB_STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
SEVERITIES = ("info", "warning", "critical")
ROLES = ("admin", "clinician", "modeller")

_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored in UTC; naive datetimes are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} (give a timezone)")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base with constraint names that Alembic can address on every database."""

    metadata = MetaData(naming_convention=_NAMING)
    type_annotation_map = {datetime: UTCDateTime()}  # noqa: RUF012 (SQLAlchemy reads a class attribute)


def _states(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class SiteRow(Base):
    """A hospital or study site; patients and users belong to sites."""

    __tablename__ = "sites"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]


class PatientRow(Base):
    """A patient, known only by a pseudonymous id at one site."""

    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("site_id", "pseudonym"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="RESTRICT"), index=True)
    pseudonym: Mapped[str] = mapped_column(String(64))
    reference_time: Mapped[datetime | None]
    created_at: Mapped[datetime]


class MeasurementRow(Base):
    """One measurement as received (value, UCUM unit) and on its template observable's scale."""

    __tablename__ = "measurements"
    __table_args__ = (
        UniqueConstraint("patient_id", "key"),
        Index("ix_measurements_patient_time", "patient_id", "time"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    loinc: Mapped[str | None] = mapped_column(String(16))
    observable: Mapped[str | None] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(64))
    observable_value: Mapped[float | None] = mapped_column(Float)
    observable_unit: Mapped[str | None] = mapped_column(String(64))
    censored: Mapped[bool] = mapped_column(Boolean)
    time: Mapped[datetime]
    day: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str | None] = mapped_column(String(255))
    payload_sha256: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(64))
    ingested_at: Mapped[datetime]


class TwinRow(Base):
    """A patient's twin of one template; its states are the versions."""

    __tablename__ = "twins"
    __table_args__ = (UniqueConstraint("patient_id", "template", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    template: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(64))


class TwinVersionRow(Base):
    """One saved state of a twin: the serialised twin (opaque bytes) with its SHA-256."""

    __tablename__ = "twin_versions"
    __table_args__ = (UniqueConstraint("twin_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    twin_id: Mapped[int] = mapped_column(ForeignKey("twins.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(32))
    reference_time: Mapped[datetime | None]
    provenance_sha256: Mapped[str] = mapped_column(String(64))
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    blob_sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(64))


class JobRow(Base):
    """Long work (calibration, cohorts): state, progress, error and where its result is."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_states("state", JOB_STATES), name="state"),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    progress: Mapped[float] = mapped_column(Float)
    message: Mapped[str] = mapped_column(String(500))
    error: Mapped[str | None] = mapped_column(Text)
    result_ref: Mapped[str | None] = mapped_column(String(500))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id", ondelete="SET NULL"))
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class AlertRow(Base):
    """Something about a patient that a person should look at (e.g. a measurement outside the band)."""

    __tablename__ = "alerts"
    __table_args__ = (CheckConstraint(_states("severity", SEVERITIES), name="severity"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    twin_version_id: Mapped[int | None] = mapped_column(ForeignKey("twin_versions.id", ondelete="SET NULL"))
    observable: Mapped[str | None] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))


class UserRow(Base):
    """A person who logs in; the password is stored as an Argon2 hash only."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime]


class RoleRow(Base):
    """A role (admin, clinician, modeller); the migration creates these three."""

    __tablename__ = "roles"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(32), unique=True)


class UserRoleRow(Base):
    """A role held by a user."""

    __tablename__ = "user_roles"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True)


class SiteMembershipRow(Base):
    """A user's membership of a site: the user sees that site's patients."""

    __tablename__ = "site_memberships"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), primary_key=True)


class ApiTokenRow(Base):
    """A machine token; only its SHA-256 is stored (the secret is shown once, at creation)."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class AuditRow(Base):
    """One entry of the append-only audit log: who did what to which patient, when."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_patient_at", "patient_id", "at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[int | None] = mapped_column(Integer)
    patient: Mapped[str | None] = mapped_column(String(64))
    site: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
