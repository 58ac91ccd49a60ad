"""FHIR payloads for the storage tests (plain JSON objects)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def observation(
    patient: str = "P001",
    loinc: str = "94819-0",
    value: Any = 1.0e6,
    unit: str = "[copies]/mL",
    *,
    hours: float = 0.0,
    **extra: Any,
) -> dict[str, Any]:
    """A FHIR R4 Observation as parsed JSON (a viral load unless told otherwise)."""
    when = (T0 + timedelta(hours=hours)).isoformat()
    quantity = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
        "valueQuantity": quantity,
    }
    resource.update(extra)
    return resource


def bundle(*observations: dict[str, Any]) -> dict[str, Any]:
    """A FHIR collection Bundle of the given resources."""
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": o} for o in observations]}
