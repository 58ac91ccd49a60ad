"""FHIR R4 ``Observation`` resources and ``Bundle``\\ s -> checked measurements of a template's observables.

Payloads are validated with ``fhir.resources`` (the R4B models, whose ``Observation`` and ``Bundle`` are
those of R4) and then checked against a template (:class:`ObservableCatalogue`):

* ``code.coding``: the first coding with system ``http://loinc.org`` must be a LOINC code that a template
  observable declares (``loinc`` in ``template.yaml``);
* ``subject.reference``: ``Patient/<pseudonym>``; ``effective[x]``: a date-time with a timezone;
* ``valueQuantity``: a finite number in a UCUM unit (``code`` when ``system`` is UCUM, else ``unit``) that
  converts (pint) to the observable's unit. A viral load in ``[copies]/mL`` is put on the observable's
  ``log10 copy/mL`` scale; a ``log10`` unit is taken as it is;
* below the limit of detection, the row is left-censored: ``valueQuantity.comparator`` ``<``/``<=``
  (censored at that value), ``valueString`` such as ``"not detected"`` or ``"< 100 [copies]/mL"``,
  ``valueCodeableConcept`` SNOMED 260415000 (Not detected), ``interpretation`` ``ND``/``NEG``/``<``, or a
  ``dataAbsentReason`` with such an interpretation (censored at the observable's limit of detection), and a
  number below the template's limit (censored at the limit, as in Beal 2001, M3).

A bad payload raises one :class:`IngestError` naming the JSON path, e.g.
``entry[2].resource.valueQuantity.value: not a finite number``; nothing is returned for the rest of it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from types import MappingProxyType
from typing import Any

from immunetwin.errors import InputError, TemplateError
from immunetwin.templates import ObservableInfo, Template, load_template
from immunetwin.templates.metadata import parse_unit

__all__ = [
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
_NOT_DETECTED_TEXT = re.compile(
    r"^\s*(not\s+detected|undetectable|undetected|negative|nd|below\s+(the\s+)?(limit|lod|lloq)\b.*)\s*$",
    re.I,
)
_BELOW_TEXT = re.compile(r"^\s*<=?\s*([-+]?\d+(\.\d*)?([eE][-+]?\d+)?)\s*(.*?)\s*$")
_PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-._]{1,64})$")


class UnitMismatchError(ValueError):
    """A unit that is unknown or does not convert to the observable's unit."""


class IngestError(InputError):
    """A measurement payload is refused whole; the message names where (JSON path or CSV row/column).

    Attributes:
        path: the JSON path of the offending field (FHIR), e.g. ``entry[1].resource.valueQuantity.code``.
        row: the 1-based data row (CSV; the header is not counted), or ``None``.
        column: the CSV column, or ``""``.
    """

    def __init__(self, message: str, *, path: str = "", row: int | None = None, column: str = "") -> None:
        self.path, self.row, self.column = path, row, column
        parts = [path] if path else []
        if row is not None:
            parts.append(f"row {row}")
        if column:
            parts.append(f"column '{column}'")
        self.where = ", ".join(parts)
        super().__init__(f"{self.where}: {message}" if self.where else message)


@dataclass(frozen=True)
class ClinicalMeasurement:
    """One measurement of one patient, checked and converted to a template observable.

    Attributes:
        patient: the patient's pseudonymous id.
        loinc: the LOINC code, or ``None`` (CSV rows that name the observable only).
        observable: the template observable it measures.
        value, unit: as received (UCUM unit); for a censored row the limit; for "not detected" without
            a number, the observable's limit of detection in the observable's unit.
        observable_value, observable_unit: the value on the observable's scale and unit.
        censored: left-censored (below the limit of detection) at ``observable_value``.
        time: when it was measured (timezone-aware, UTC).
        source: ``"fhir"`` or ``"csv"``.
        payload_sha256: SHA-256 of the original payload (the FHIR resource, or the CSV row).
        external_id: the FHIR ``identifier`` (``system|value``), if any.
        origin: where it came from in its payload (for error messages); not part of equality.
    """

    patient: str
    loinc: str | None
    observable: str
    value: float
    unit: str
    observable_value: float
    observable_unit: str
    censored: bool
    time: datetime
    source: str
    payload_sha256: str
    external_id: str | None = None
    origin: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        """The idempotency key: the same patient, observable, time and value give the same key."""
        parts = [self.patient, self.observable, self.time.astimezone(UTC).isoformat()]
        parts += [f"{self.observable_value:.9g}", self.observable_unit, str(self.censored)]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


@dataclass(frozen=True)
class ObservableCatalogue:
    """The observables of one template, indexed by name and by LOINC code."""

    template: str
    observables: Mapping[str, ObservableInfo]
    by_loinc: Mapping[str, str]

    def by_name(self, name: str) -> ObservableInfo | None:
        """The observable called ``name``, or ``None``."""
        return self.observables.get(name)


def observable_catalogue(template: Template | str) -> ObservableCatalogue:
    """The LOINC -> observable map of a template (an object, or the name of a built-in one)."""
    tpl = load_template(template) if isinstance(template, str) else template
    observables = tpl.metadata.observables
    by_loinc = {info.loinc: name for name, info in observables.items() if info.loinc}
    return ObservableCatalogue(tpl.name, MappingProxyType(dict(observables)), MappingProxyType(by_loinc))


def payload_sha256(raw: Any) -> str:
    """SHA-256 of a JSON value in canonical form (sorted keys, no spaces)."""
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------- units

_ANNOTATIONS = MappingProxyType({"copies": "copy", "copy": "copy", "rna copies": "copy", "cells": "cell"})


def ucum_to_pint(code: str) -> str:
    """Translate a UCUM unit code to a unit string that :func:`parse_unit` reads.

    ``[copies]/mL`` and ``{copies}/mL`` -> ``copy/mL``; ``10*3/uL`` -> ``10^3/uL``; ``/uL`` -> ``1/uL``;
    ``[IU]`` -> ``IU``; other ``{annotations}`` are dropped; ``log10 <unit>`` keeps its prefix.
    """
    text = code.strip()
    log = re.match(r"^log10\s*\(?\s*(.*?)\s*\)?$", text)
    if log:
        return f"log10 {ucum_to_pint(log.group(1))}"

    def annotation(match: re.Match[str]) -> str:
        return _ANNOTATIONS.get(match.group(1).strip().lower(), "")

    text = re.sub(r"\[([^\]]*copies|cells)\]", lambda m: "{" + m.group(1) + "}", text)
    text = re.sub(r"\{([^}]*)\}", annotation, text)
    text = re.sub(r"\[(iU|IU)\]", "IU", text)
    text = re.sub(r"10\*(-?\d+)", r"10^\1", text)
    text = re.sub(r"(10\^-?\d+)(?=[A-Za-z])", r"\1*", text)
    if text.startswith("/"):
        text = "1" + text
    return "dimensionless" if text in ("", "1") else text


def _quantity(unit: str) -> Any:
    parsed = parse_unit(unit)
    return parsed if hasattr(parsed, "magnitude") else 1.0 * parsed


def _factor(unit: str, target: str) -> float:
    """The number that converts a value in ``unit`` to ``target`` (both linear pint strings).

    A bare count (``10^3/uL``) converts to a counted unit (``cell/nL``): the count's dimension is added.
    """
    ratio = (_quantity(unit) / _quantity(target)).to_base_units()
    if ratio.dimensionless:
        return float(ratio.magnitude)
    for count in ("cell", "copy"):
        with_count = (ratio * _quantity(count)).to_base_units()
        if with_count.dimensionless:
            return float(with_count.magnitude)
    raise ValueError(f"[{ratio.dimensionality}] left over")


def _split_log(unit: str) -> tuple[bool, str]:
    match = re.match(r"^\s*log10\s*\(?\s*(.*?)\s*\)?\s*$", unit)
    return (True, match.group(1)) if match else (False, unit.strip())


@functools.lru_cache(maxsize=256)
def _conversion(ucum: str, target: str) -> tuple[bool, bool, float]:
    """(input is log10, target is log10, factor between their linear units); cached: pint is slow."""
    try:
        log_in, unit_in = _split_log(ucum_to_pint(ucum))
        log_out, unit_out = _split_log(target)
        return log_in, log_out, _factor(unit_in, unit_out)
    except TemplateError:
        raise UnitMismatchError(f"'{ucum}' is not a UCUM unit immunetwin knows") from None
    except Exception:  # pint's DimensionalityError and friends
        raise UnitMismatchError(f"'{ucum}' does not convert to the observable's unit [{target}]") from None


def to_observable_scale(value: float, ucum: str, info: ObservableInfo) -> float:
    """Convert ``value`` in the UCUM unit ``ucum`` to the observable's unit and scale (linear or log10).

    Raises:
        UnitMismatchError: unknown unit, or dimensions that do not match.
        ValueError: a value that has no log10 (<= 0), or overflows.
    """
    log_in, log_out, factor = _conversion(ucum, info.unit)
    try:
        if log_in and log_out:
            return value + math.log10(factor)
        if log_in:
            return 10.0**value * factor
        if not log_out:
            return value * factor
    except OverflowError:
        raise ValueError(f"{value:g} {ucum} is out of range") from None
    if value <= 0:
        raise ValueError(f"{value:g} {ucum} has no log10 for [{info.unit}] (report 'not detected' instead)")
    return math.log10(value * factor)


def reading(value: float, ucum: str, info: ObservableInfo, *, censored: bool) -> tuple[float, bool]:
    """The observable-scale value and censoring of a number; below the limit of detection -> censored there.

    Raises:
        UnitMismatchError: as :func:`to_observable_scale`.
        ValueError: not finite, no log10, or a negative value on a linear scale.
    """
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    if (
        value == 0
        and _split_log(info.unit)[0]
        and not _split_log(ucum_to_pint(ucum))[0]
        and info.lloq is not None
    ):
        return info.lloq, True  # zero copies: not detected
    converted = to_observable_scale(value, ucum, info)
    if not math.isfinite(converted):
        raise ValueError(f"{value:g} {ucum} is out of range in [{info.unit}]")
    if not _split_log(info.unit)[0] and converted < 0:
        raise ValueError(f"{value:g} is negative: concentrations and counts are >= 0")
    if info.lloq is not None and converted < info.lloq:
        return info.lloq, True
    return converted, censored


def text_reading(text: str, info: ObservableInfo) -> tuple[float, str, float, bool] | None:
    """``"not detected"`` or ``"< 100 [copies]/mL"`` -> (value, unit, observable value, censored), else None.

    Raises:
        UnitMismatchError: a bad unit after ``<``.
        ValueError: a not-detected text for an observable without a limit of detection.
    """
    below = _BELOW_TEXT.match(text)
    if below:
        value, unit = float(below.group(1)), below.group(4)
        if not unit:
            raise ValueError(f"'{text}' has no unit")
        observed, _ = reading(value, unit, info, censored=True)
        return value, unit, observed, True
    if not _NOT_DETECTED_TEXT.match(text):
        return None
    if info.lloq is None:
        raise ValueError(f"'{text}' but the observable has no limit of detection; give '< value unit'")
    return info.lloq, info.unit, info.lloq, True


# ------------------------------------------------------------------------------------------------ FHIR


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
