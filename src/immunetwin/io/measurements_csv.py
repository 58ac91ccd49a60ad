"""Patient measurements from CSV -> checked measurements of a template's observables.

One row per measurement, with a header. Columns (names are case-sensitive; others are refused):

============  =========================================================================================
``patient``   the patient's pseudonymous id (letters, digits, ``-``, ``.``, ``_``; at most 64)
``loinc``     the LOINC code of the test, or
``observable``  the template observable's name (one of the two is required; if both, they must agree)
``value``     a number; ``< 100`` (censored at 100) or ``not detected`` (censored at the template's
              limit of detection) for a result below the limit of detection
``unit``      the UCUM unit of ``value`` (``[copies]/mL``, ``10*3/uL``, ``mg/dL``, ``log10 [copies]/mL``)
``time``      ISO 8601 date and time with a timezone, e.g. ``2024-03-01T08:30:00+01:00`` or ``...Z``
``censored``  optional: ``true``/``false`` (``true``: the value is a limit the result was below)
============  =========================================================================================

Units, censoring and the limit of detection follow :mod:`immunetwin.io.clinical`. A bad file raises one
:class:`~immunetwin.errors.IngestError` naming the data row (1-based, header not counted) and column;
nothing is returned for the rest of the file.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from immunetwin.errors import IngestError
from immunetwin.io.clinical import (
    ClinicalMeasurement,
    ObservableCatalogue,
    UnitMismatchError,
    payload_sha256,
    reading,
    text_reading,
)

__all__ = ["CSV_COLUMNS", "read_measurements_csv"]

#: Allowed columns; ``patient``, ``value``, ``unit``, ``time`` and ``loinc`` or ``observable`` are required.
CSV_COLUMNS = ("patient", "loinc", "observable", "value", "unit", "time", "censored")
_PATIENT = re.compile(r"^[A-Za-z0-9\-._]{1,64}$")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


def _text(source: str | bytes | Path | TextIO) -> str:
    if isinstance(source, Path):
        try:
            return source.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise IngestError(f"{source}: cannot read ({err})") from None
    if isinstance(source, bytes):
        try:
            return source.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise IngestError(f"not UTF-8 text ({err})") from None
    return source if isinstance(source, str) else source.read()


def _header(fields: list[str] | None) -> tuple[str, ...]:
    if not fields:
        raise IngestError("empty file: expected a header line", row=0)
    names = tuple(name.strip() for name in fields)
    for name in names:
        if name not in CSV_COLUMNS:
            raise IngestError(f"unknown column (allowed: {', '.join(CSV_COLUMNS)})", row=0, column=name)
    for name in ("patient", "value", "unit", "time"):
        if name not in names:
            raise IngestError(f"missing column '{name}'", row=0, column=name)
    if "loinc" not in names and "observable" not in names:
        raise IngestError("needs a 'loinc' or an 'observable' column", row=0, column="loinc")
    if len(set(names)) != len(names):
        raise IngestError("a column appears twice", row=0)
    return names


def read_measurements_csv(
    source: str | bytes | Path | TextIO, catalogue: ObservableCatalogue
) -> tuple[ClinicalMeasurement, ...]:
    """Read a measurement CSV (a path, the text, bytes or an open text file); see the module docstring.

    Returns:
        The measurements, in file order.

    Raises:
        IngestError: the first problem, naming the data row and column.
    """
    reader = csv.reader(io.StringIO(_text(source)))
    try:
        names = _header(next(reader, None))
        rows = [row for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as err:
        raise IngestError(f"not CSV ({err})", row=reader.line_num) from None
    if not rows:
        raise IngestError("no data rows", row=1)
    out = []
    for number, cells in enumerate(rows, start=1):
        if len(cells) != len(names):
            raise IngestError(f"{len(cells)} cells, expected {len(names)}", row=number)
        out.append(_row(dict(zip(names, (c.strip() for c in cells), strict=True)), catalogue, number))
    return tuple(out)


def _observable(cells: Mapping[str, str], catalogue: ObservableCatalogue, row: int) -> tuple[str | None, str]:
    loinc = cells.get("loinc") or None
    name = cells.get("observable") or None
    by_code = catalogue.by_loinc.get(loinc) if loinc else None
    if loinc and by_code is None:
        raise IngestError(f"LOINC {loinc!r} is not observed by template '{catalogue.template}'", row=row, column="loinc")  # fmt: skip
    if name and catalogue.by_name(name) is None:
        known = ", ".join(catalogue.observables)
        raise IngestError(f"{name!r} is not an observable of '{catalogue.template}' (known: {known})", row=row, column="observable")  # fmt: skip
    if by_code and name and by_code != name:
        raise IngestError(f"LOINC {loinc} is '{by_code}', not '{name}'", row=row, column="observable")
    chosen = by_code or name
    if chosen is None:
        raise IngestError("empty: give a LOINC code or an observable", row=row, column="loinc" if "loinc" in cells else "observable")  # fmt: skip
    return loinc or catalogue.observables[chosen].loinc, chosen


def _time(text: str, row: int) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise IngestError(f"{text!r} is not an ISO 8601 date and time", row=row, column="time") from None
    if when.tzinfo is None:
        raise IngestError(f"{text!r} has no timezone (add Z or +01:00)", row=row, column="time")
    return when.astimezone(UTC)


def _flag(text: str, row: int) -> bool:
    if text.lower() not in _TRUE + _FALSE:
        raise IngestError(f"{text!r} is not true/false", row=row, column="censored")
    return text.lower() in _TRUE


def _value(cells: Mapping[str, str], observable: str, catalogue: ObservableCatalogue, row: int) -> tuple[float, str, float, bool]:  # fmt: skip
    info = catalogue.observables[observable]
    text, unit = cells["value"], cells["unit"]
    try:
        parsed = text_reading(f"{text} {unit}" if text.startswith("<") else text, info)
        if parsed is not None:
            return parsed
        value = float(text)
    except UnitMismatchError as err:
        raise IngestError(str(err), row=row, column="unit") from None
    except ValueError as err:
        raise IngestError(f"{text!r}: {err}", row=row, column="value") from None
    if not unit:
        raise IngestError("empty: give the UCUM unit of the value", row=row, column="unit")
    censored = _flag(cells.get("censored", ""), row)
    try:
        observed, censored = reading(value, unit, info, censored=censored)
    except UnitMismatchError as err:
        raise IngestError(str(err), row=row, column="unit") from None
    except ValueError as err:
        raise IngestError(f"{text!r}: {err}", row=row, column="value") from None
    return value, unit, observed, censored


def _row(cells: Mapping[str, str], catalogue: ObservableCatalogue, row: int) -> ClinicalMeasurement:
    patient = cells["patient"]
    if not _PATIENT.match(patient):
        raise IngestError(f"{patient!r} is not a pseudonymous id (letters, digits, - . _; 1 to 64)", row=row, column="patient")  # fmt: skip
    loinc, observable = _observable(cells, catalogue, row)
    value, unit, observed, censored = _value(cells, observable, catalogue, row)
    return ClinicalMeasurement(
        patient=patient,
        loinc=loinc,
        observable=observable,
        value=value,
        unit=unit,
        observable_value=observed,
        observable_unit=catalogue.observables[observable].unit,
        censored=censored,
        time=_time(cells["time"], row),
        source="csv",
        payload_sha256=payload_sha256(dict(cells)),
        origin=f"row {row}",
    )
