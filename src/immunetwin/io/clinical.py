"""Clinical measurements, whatever their format: units, censoring, the observable catalogue, the value type.

What the FHIR reader (:mod:`immunetwin.io.fhir`) and the CSV reader (:mod:`immunetwin.io.measurements_csv`)
share once a payload has been taken apart:

* :class:`ObservableCatalogue` (:func:`observable_catalogue`): a template's observables, by name and by
  the LOINC code each declares (``loinc`` in ``template.yaml``);
* units: a UCUM code (:func:`ucum_to_pint`) converts with ``pint`` to the observable's unit
  (:func:`to_observable_scale`). A viral load in ``[copies]/mL`` is put on the observable's
  ``log10 copy/mL`` scale; a ``log10`` unit is taken as it is;
* censoring (:func:`reading`, :func:`text_reading`): a number below the template's limit of detection is
  left-censored at the limit (Beal 2001, M3), as are texts such as ``"not detected"`` and
  ``"< 100 [copies]/mL"`` (censored at that value);
* :class:`ClinicalMeasurement`, the checked row both readers return, with the SHA-256 of its original
  payload (:func:`payload_sha256`) and an idempotency key.

Problems come out as :class:`UnitMismatchError` or ``ValueError``; each reader turns them into one
:class:`~immunetwin.errors.IngestError` naming the field (JSON path, or CSV row and column).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from immunetwin.errors import TemplateError
from immunetwin.templates import ObservableInfo, Template, load_template
from immunetwin.templates.metadata import parse_unit

__all__ = [
    "ClinicalMeasurement",
    "ObservableCatalogue",
    "UnitMismatchError",
    "observable_catalogue",
    "payload_sha256",
    "reading",
    "text_reading",
    "to_observable_scale",
    "ucum_to_pint",
]

_NOT_DETECTED_TEXT = re.compile(
    r"^\s*(not\s+detected|undetectable|undetected|negative|nd|below\s+(the\s+)?(limit|lod|lloq)\b.*)\s*$",
    re.I,
)
_BELOW_TEXT = re.compile(r"^\s*<=?\s*([-+]?\d+(\.\d*)?([eE][-+]?\d+)?)\s*(.*?)\s*$")


class UnitMismatchError(ValueError):
    """A unit that is unknown or does not convert to the observable's unit."""


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
