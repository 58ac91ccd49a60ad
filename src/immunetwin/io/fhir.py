"""FHIR R4 ``Observation`` resources and ``Bundle``\\ s -> checked measurements of a template's observables.

Payloads are validated with ``fhir.resources`` (the R4B models, whose ``Observation`` and ``Bundle`` are
those of R4) and then checked against a template (:class:`~immunetwin.io.clinical.ObservableCatalogue`):

* ``code.coding``: the first coding with system ``http://loinc.org`` must be a LOINC code that a template
  observable declares (``loinc`` in ``template.yaml``);
* ``subject.reference``: ``Patient/<pseudonym>``; ``effective[x]``: a date-time with a timezone;
* ``valueQuantity``: a finite number in a UCUM unit (``code`` when ``system`` is UCUM, else ``unit``) that
  converts to the observable's unit (see :mod:`immunetwin.io.clinical`);
* below the limit of detection, the row is left-censored: ``valueQuantity.comparator`` ``<``/``<=``
  (censored at that value), ``valueString`` such as ``"not detected"`` or ``"< 100 [copies]/mL"``,
  ``valueCodeableConcept`` SNOMED 260415000 (Not detected), ``interpretation`` ``ND``/``NEG``/``<``, or a
  ``dataAbsentReason`` with such an interpretation (censored at the observable's limit of detection), and a
  number below the template's limit (censored at the limit, as in Beal 2001, M3).

A bad payload raises one :class:`~immunetwin.errors.IngestError` naming the JSON path, e.g.
``entry[2].resource.valueQuantity.value: not a finite number``; nothing is returned for the rest of it.

The format-neutral names that lived here before :mod:`immunetwin.io.clinical` existed
(:class:`~immunetwin.io.clinical.ClinicalMeasurement`, :func:`~immunetwin.io.clinical.observable_catalogue`,
the unit functions) and :class:`~immunetwin.errors.IngestError` can still be imported from this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from immunetwin.errors import IngestError
from immunetwin.io.clinical import (
    ClinicalMeasurement,
    ObservableCatalogue,
    UnitMismatchError,
    observable_catalogue,
    payload_sha256,
    reading,
    text_reading,
    to_observable_scale,
    ucum_to_pint,
)
from immunetwin.templates import ObservableInfo

__all__ = [  # read_fhir, and the names of the earlier layout (see the module docstring)
    "ClinicalMeasurement",
    "IngestError",
    "ObservableCatalogue",
    "UnitMismatchError",
    "observable_catalogue",
    "payload_sha256",
    "read_fhir",
    "reading",
    "text_reading",
    "to_observable_scale",
    "ucum_to_pint",
]

LOINC_SYSTEM = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"
_STATUSES = ("final", "amended", "corrected", "preliminary")
_NOT_DETECTED_CODES = (
    "ND",
    "NEG",
    "<",
)  # HL7 v3 ObservationInterpretation: not detected, negative, off scale low
_NOT_DETECTED_SNOMED = "260415000"
_PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-._]{1,64})$")


def _load(payload: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(payload, Mapping):
        return dict(payload)
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise IngestError(f"not JSON ({type(err).__name__}: {err})", path="$") from None
    if not isinstance(raw, dict):
        raise IngestError(f"expected a JSON object, got {type(raw).__name__}", path="$")
    return raw


def _path(loc: tuple[Any, ...], message: str = "") -> str:
    """``("entry", 0, "resource", "valueQuantity")`` -> ``entry[0].resource.valueQuantity``.

    A choice-type error on the resource itself ("... got multiple") is put on the choice, e.g. ``value[x]``.
    """
    names = re.findall(r"'([a-z]+)[A-Z]\w*'", message) if "got multiple" in message else []
    choice = [f"{names[0]}[x]"] if names and len(set(names)) == 1 else []
    loc = (*loc, *choice)
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = {"resource_type": "resourceType"}.get(str(part), str(part))
            out += f".{name}" if out else name
    return out or "$"


def _validate(raw: dict[str, Any]) -> Any:
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.observation import Observation
    from pydantic import ValidationError

    kind = raw.get("resourceType")
    if kind not in ("Observation", "Bundle"):
        raise IngestError(f"expected 'Observation' or 'Bundle', got {kind!r}", path="resourceType")
    if kind == "Bundle":
        _check_entries(raw)
    try:
        return (Bundle if kind == "Bundle" else Observation).model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        message = str(first["msg"]).removeprefix("Value error, ")
        raise IngestError(f"{message}{more}", path=_path(tuple(first["loc"]), message)) from None


def _check_entries(raw: dict[str, Any]) -> None:
    entries = raw.get("entry")
    if not isinstance(entries, list) or not entries:
        raise IngestError("a Bundle needs a non-empty list of entries", path="entry")
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            raise IngestError("missing resource", path=f"entry[{i}].resource")
        if resource.get("resourceType") != "Observation":
            kind = resource.get("resourceType")
            raise IngestError(
                f"expected 'Observation', got {kind!r}", path=f"entry[{i}].resource.resourceType"
            )


def read_fhir(payload: str | bytes | Mapping[str, Any], catalogue: ObservableCatalogue) -> tuple[ClinicalMeasurement, ...]:  # fmt: skip
    """Read a FHIR R4 ``Observation`` or a ``Bundle`` of them (JSON text, bytes, or the parsed object).

    Returns:
        The measurements, in payload order.

    Raises:
        IngestError: the first problem, naming its JSON path (see the module docstring).
    """
    raw = _load(payload)
    model = _validate(raw)
    if raw["resourceType"] == "Observation":
        return (_observation(model, raw, catalogue, ""),)
    pairs = zip(model.entry, raw["entry"], strict=True)
    return tuple(_observation(e.resource, r["resource"], catalogue, f"entry[{i}].resource.") for i, (e, r) in enumerate(pairs))  # fmt: skip


def _observation(
    obs: Any, raw: dict[str, Any], catalogue: ObservableCatalogue, at: str
) -> ClinicalMeasurement:
    if obs.status not in _STATUSES:
        raise IngestError(f"status {obs.status!r} carries no result (expected one of {', '.join(_STATUSES)})", path=f"{at}status")  # fmt: skip
    loinc, observable = _loinc(obs, catalogue, at)
    info = catalogue.observables[observable]
    try:
        value, unit, observed, censored = _value(obs, info, at)
    except IngestError:
        raise
    except ValueError as err:
        raise IngestError(str(err), path=at + _value_field(obs)) from None
    ident = obs.identifier[0] if obs.identifier else None
    return ClinicalMeasurement(
        patient=_patient(obs, at),
        loinc=loinc,
        observable=observable,
        value=value,
        unit=unit,
        observable_value=observed,
        observable_unit=info.unit,
        censored=censored,
        time=_time(obs, at),
        source="fhir",
        payload_sha256=payload_sha256(raw),
        external_id=f"{ident.system or ''}|{ident.value or ''}" if ident else None,
        origin=at.rstrip("."),
    )


def _loinc(obs: Any, catalogue: ObservableCatalogue, at: str) -> tuple[str, str]:
    codings = (obs.code.coding if obs.code else None) or []
    for i, coding in enumerate(codings):
        if coding.system == LOINC_SYSTEM:
            observable = catalogue.by_loinc.get(coding.code or "")
            if observable is None:
                known = ", ".join(f"{c} ({n})" for c, n in catalogue.by_loinc.items())
                raise IngestError(f"LOINC {coding.code!r} is not observed by template '{catalogue.template}' (known: {known})", path=f"{at}code.coding[{i}].code")  # fmt: skip
            return coding.code, observable
    raise IngestError(f"no coding with system '{LOINC_SYSTEM}'", path=f"{at}code.coding")


def _patient(obs: Any, at: str) -> str:
    ref = obs.subject.reference if obs.subject else None
    match = _PATIENT_REF.search(ref or "")
    if match is None:
        raise IngestError(f"expected 'Patient/<pseudonym>', got {ref!r}", path=f"{at}subject.reference")
    return match.group(1)


def _time(obs: Any, at: str) -> datetime:
    for name, when in (
        ("effectiveDateTime", obs.effectiveDateTime),
        ("effectiveInstant", obs.effectiveInstant),
        ("effectivePeriod.start", obs.effectivePeriod.start if obs.effectivePeriod else None),
    ):
        if when is None:
            continue
        if not isinstance(when, datetime) or when.tzinfo is None:
            kind = "a date only" if isinstance(when, date | str) else "no timezone"
            raise IngestError(f"{when!s} is {kind}: give a date, a time and a timezone", path=at + name)
        return when.astimezone(UTC)
    raise IngestError("missing: when was it measured (effectiveDateTime)?", path=f"{at}effectiveDateTime")


def _value_field(obs: Any) -> str:
    for name in ("valueQuantity", "valueString", "valueCodeableConcept", "dataAbsentReason"):
        if getattr(obs, name, None) is not None:
            return name + (".value" if name == "valueQuantity" else "")
    return "valueQuantity"


def _not_detected_flag(obs: Any) -> bool:
    codes = {c.code for concept in obs.interpretation or [] for c in concept.coding or []}
    return bool(codes & set(_NOT_DETECTED_CODES))


def _value(obs: Any, info: ObservableInfo, at: str) -> tuple[float, str, float, bool]:
    flagged = _not_detected_flag(obs)
    if obs.valueQuantity is not None:
        return _quantity_value(obs.valueQuantity, info, flagged, at)
    if obs.valueString is not None:
        parsed = text_reading(obs.valueString, info)
        if parsed is None:
            raise ValueError(f"{obs.valueString!r} is neither a number with a unit nor 'not detected'")
        return parsed
    concept = obs.valueCodeableConcept
    if concept is not None or obs.dataAbsentReason is not None:
        codes = {c.code for c in (concept.coding or [])} if concept is not None else set()
        if (_NOT_DETECTED_SNOMED in codes or flagged) and info.lloq is not None:
            return info.lloq, info.unit, info.lloq, True
        raise ValueError(
            "no value: only 'not detected' (with a limit of detection in the template) is stored"
        )
    raise ValueError("missing: an Observation needs valueQuantity (or a 'not detected' value)")


def _quantity_value(quantity: Any, info: ObservableInfo, flagged: bool, at: str) -> tuple[float, str, float, bool]:  # fmt: skip
    if quantity.value is None:
        raise ValueError("missing number")
    ucum = bool(quantity.code) and quantity.system in (None, UCUM_SYSTEM)
    unit, unit_field = (quantity.code, "code") if ucum else (quantity.unit, "unit")
    if not unit:
        raise IngestError("missing unit (UCUM code)", path=f"{at}valueQuantity.code")
    if quantity.comparator in (">", ">="):
        raise IngestError("values above a limit (right-censored) are not supported", path=f"{at}valueQuantity.comparator")  # fmt: skip
    censored = flagged or quantity.comparator in ("<", "<=")
    value = float(quantity.value)
    try:
        observed, censored = reading(value, unit, info, censored=censored)
    except UnitMismatchError as err:
        raise IngestError(str(err), path=f"{at}valueQuantity.{unit_field}") from None
    except ValueError as err:
        raise IngestError(str(err), path=f"{at}valueQuantity.value") from None
    return value, unit, observed, censored
