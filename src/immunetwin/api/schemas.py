"""Request and response bodies of the REST API (``XCreate`` in, ``XPublic`` out).

Numbers that may be undefined (a margin without a runner-up, a quantile where every particle failed)
are ``null``, never NaN (JSON has no NaN).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "AlertPublic",
    "ApiTokenCreate",
    "ApiTokenPublic",
    "DecisionPublic",
    "DecisionRequest",
    "ForecastPublic",
    "IngestPublic",
    "JobPublic",
    "MeasurementPublic",
    "PatientCreate",
    "PatientPublic",
    "PatientUpdate",
    "ReportRequest",
    "SiteCreate",
    "SitePublic",
    "TemplatePublic",
    "TokenPublic",
    "TwinCreate",
    "TwinHistory",
    "TwinPublic",
    "TwinStarted",
    "TwinVersionPublic",
    "UserCreate",
    "UserPublic",
    "finite",
]

Code = Field(pattern=r"^[A-Za-z0-9\-._]{1,64}$", min_length=1, max_length=64)
RoleName = Literal["admin", "clinician", "modeller"]
Weights = dict[str, float]


def finite(value: Any) -> float | None:
    """``value`` as a float, or ``None`` when it is NaN or infinite."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


class Public(BaseModel):
    """Responses are read from frozen records' attributes."""

    model_config = ConfigDict(from_attributes=True)


class TokenPublic(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime | None


class ApiTokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class ApiTokenPublic(Public):
    id: int
    name: str
    prefix: str
    expires_at: datetime | None
    secret: str = Field(description="shown once: store it now")


class UserCreate(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=8, max_length=256)
    full_name: str = Field(default="", max_length=200)
    roles: list[RoleName] = Field(default_factory=list, max_length=3)
    sites: list[str] = Field(default_factory=list, max_length=100)


class UserPublic(Public):
    id: int
    username: str
    full_name: str
    active: bool
    roles: tuple[str, ...]
    sites: tuple[str, ...]


class SiteCreate(BaseModel):
    code: str = Field(pattern=r"^[A-Za-z0-9\-._]{1,32}$", min_length=1, max_length=32)
    name: str = Field(default="", max_length=200)


class SitePublic(Public):
    id: int
    code: str
    name: str


class ObservablePublic(BaseModel):
    name: str
    unit: str
    loinc: str | None


class TemplatePublic(BaseModel):
    name: str
    version: str
    title: str
    observables: list[ObservablePublic]
    interventions: list[str]
    outcomes: list[str]


class PatientCreate(BaseModel):
    site: str = Field(min_length=1, max_length=32)
    pseudonym: str = Code
    reference_time: AwareDatetime | None = Field(default=None, description="day 0, e.g. symptom onset")


class PatientUpdate(BaseModel):
    reference_time: AwareDatetime | None


class PatientPublic(Public):
    id: int
    site: str
    pseudonym: str
    reference_time: datetime | None
    created_at: datetime
    open_alerts: int | None = None


class MeasurementPublic(Public):
    id: int
    observable: str | None
    loinc: str | None
    value: float
    unit: str
    observable_value: float | None
    observable_unit: str | None
    censored: bool
    time: datetime
    day: float | None
    source: str


class JobPublic(Public):
    id: int
    kind: str
    state: str
    progress: float
    message: str
    error: str | None
    result_ref: str | None
    patient_id: int | None
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class IngestPublic(BaseModel):
    inserted: int
    duplicates: int
    patients: list[PatientPublic]
    jobs: list[JobPublic] = Field(default_factory=list, description="assimilate jobs queued (update_twins)")


class TwinCreate(BaseModel):
    template: str = Field(min_length=1, max_length=64)
    name: str = Field(default="", max_length=64)
    draws: int | None = Field(default=None, ge=2)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    estimate: list[str] | None = Field(default=None, max_length=50)


class TwinPublic(Public):
    id: int
    patient_id: int
    template: str
    name: str
    created_at: datetime
    created_by: str | None
    latest_version: int


class TwinStarted(BaseModel):
    twin: TwinPublic
    job: JobPublic


class TwinVersionPublic(Public):
    version: int
    reason: str
    provenance_sha256: str
    blob_sha256: str
    size: int
    created_at: datetime
    created_by: str | None


class TwinHistory(BaseModel):
    twin: TwinPublic
    versions: list[TwinVersionPublic]


class ForecastPublic(BaseModel):
    twin_id: int
    version: int
    patient: str
    reference_time: float = Field(description="days since the patient's day 0 up to which the twin has data")
    scenario: str
    levels: list[float]
    times: list[float]
    units: dict[str, str]
    predictive: dict[str, list[list[float | None]]] = Field(description="observable -> [time][level]")
    states: dict[str, list[list[float | None]]] = Field(description="latent state -> [time][level]")
    particles: int
    failed: int


class DecisionRequest(BaseModel):
    weights: Weights = Field(min_length=1, description="utility weight per unit of each outcome metric")
    costs: Weights = Field(default_factory=dict, description="cost of each intervention, same points")
    scenarios: list[str] | None = Field(default=None, max_length=20, description="e.g. 'antiviral(start=3)'")
    horizon: float = Field(default=40.0, gt=0, le=365)
    version: int | None = Field(default=None, ge=1)


class DecisionPublic(BaseModel):
    twin_id: int
    version: int
    action: str
    chosen: str | None
    runner_up: str | None
    criterion: str
    margin: float | None
    margin_mcse: float | None
    ess: float | None
    reasons: list[str]
    scores: list[dict[str, Any]]
    comparison: list[dict[str, Any]]


class ReportRequest(BaseModel):
    version: int | None = Field(default=None, ge=1)
    horizon: float = Field(default=14.0, gt=0, le=365)
    weights: Weights = Field(default_factory=dict, description="give weights to add a decision")
    costs: Weights = Field(default_factory=dict)
    scenarios: list[str] | None = Field(default=None, max_length=20)


class AlertPublic(Public):
    id: int
    patient_id: int
    twin_version_id: int | None
    observable: str | None
    severity: str
    message: str
    created_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
