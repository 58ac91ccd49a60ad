"""A twin's measurements: a frozen, checked table on each observable's own scale and unit.

Every row a twin sees passes :func:`read_observations` first, which refuses what cannot be a
measurement of the template's observables and names the row (1-based, in the order given):

* an observable the template does not define (:class:`~immunetwin.errors.UnknownIdError`);
* a time or value that is missing, not a number or not finite; a negative time (days since the
  twin's origin, e.g. infection);
* a time before ``not_before`` (a twin absorbs measurements in time order);
* a value in a ``unit`` that is not the observable's dimension. Compatible units are converted
  (pint, through :func:`immunetwin.templates.metadata.parse_unit`), also between a linear unit and
  the observable's ``log10`` unit (``copy/mL`` -> ``log10 copy/mL``);
* an impossible value: negative on an observable measured on a linear scale (concentrations and
  counts), or not positive when converted to a ``log10`` scale.

Values at or below an observable's limit of detection are left-censored there, as in
:func:`immunetwin.inference.patient_problem` (Beal 2001, J Pharmacokinet Pharmacodyn 28:481, M3).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from immunetwin.errors import InputError, TemplateError, UnknownIdError
from immunetwin.templates import Template
from immunetwin.templates.metadata import parse_unit

__all__ = ["Observations", "read_observations"]

_REQUIRED = ("observable", "time", "value")
_LOG10 = re.compile(r"^\s*log10\b")


def _frozen(a: Any, dtype: Any) -> np.ndarray:
    out = np.array(a, dtype=dtype)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Observations:
    """Measurements, one entry per row (read-only arrays), sorted by time.

    Attributes:
        observable: template observable names.
        time: days since the twin's origin.
        value: on the observable's scale and unit (e.g. log10 copies/mL); the limit for censored rows.
        censored: the true value is at or below ``value`` (a limit of detection).
    """

    observable: np.ndarray
    time: np.ndarray
    value: np.ndarray
    censored: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.time)
        for name, dtype in (("observable", str), ("time", float), ("value", float), ("censored", bool)):
            arr = _frozen(getattr(self, name), dtype)
            if arr.shape != (n,):
                raise InputError(f"observations: column '{name}' has shape {arr.shape}, expected ({n},)")
            object.__setattr__(self, name, arr)

    def __len__(self) -> int:
        return len(self.time)

    @classmethod
    def empty(cls) -> Observations:
        return cls(np.zeros(0, str), np.zeros(0), np.zeros(0), np.zeros(0, bool))

    def __add__(self, other: Observations) -> Observations:
        """Both tables, sorted by time (stable: rows of ``self`` first at equal times)."""
        cat = [np.concatenate([getattr(self, k), getattr(other, k)]) for k in _FIELDS]
        order = np.argsort(cat[1], kind="stable")
        return Observations(*(c[order] for c in cat))

    def to_frame(self) -> pd.DataFrame:
        """A new table with columns observable, time, value, censored."""
        return pd.DataFrame({k: np.array(getattr(self, k)) for k in _FIELDS})

    def records(self) -> list[list[Any]]:
        """Rows as plain Python values (for JSON and hashing)."""
        return [
            [str(o), float(t), float(v), bool(c)]
            for o, t, v, c in zip(self.observable, self.time, self.value, self.censored, strict=True)
        ]

    @classmethod
    def from_records(cls, rows: list[list[Any]]) -> Observations:
        if not rows:
            return cls.empty()
        o, t, v, c = zip(*rows, strict=True)
        return cls(np.array(o, str), np.array(t, float), np.array(v, float), np.array(c, bool))


_FIELDS = ("observable", "time", "value", "censored")


def _number(raw: Any, what: str, row: int) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InputError(f"measurement row {row}: {what} {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"measurement row {row}: {what} is {value} (missing or not finite)")
    return value


def _convert(value: float, unit: str, target: str, observable: str, row: int) -> float:
    """``value`` in ``unit`` -> the observable's unit ``target`` (either may be ``log10 <unit>``)."""
    if unit.strip() == target.strip():
        return value
    try:
        have, want = parse_unit(unit), parse_unit(target)
        factor = float((1.0 * have).to(want).magnitude)
    except TemplateError as err:
        raise InputError(f"measurement row {row}: unit '{unit}' is not a unit ({err})") from None
    except Exception:  # pint's DimensionalityError and friends
        raise InputError(
            f"measurement row {row}: unit '{unit}' does not match observable '{observable}' [{target}]"
        ) from None
    log_in, log_out = bool(_LOG10.match(unit)), bool(_LOG10.match(target))
    if log_in and log_out:
        return value + math.log10(factor)
    if log_in:
        return 10.0**value * factor
    if not log_out:
        return value * factor
    if value <= 0:
        raise InputError(
            f"measurement row {row}: {observable} = {value:g} {unit} cannot be put on the log10 scale"
            f" of [{target}]: it must be > 0 (mark values below detection as censored)"
        )
    return math.log10(value * factor)


def _columns(data: Any) -> pd.DataFrame:
    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        raise InputError(
            f"measurements: missing column '{missing[0]}' (columns: {', '.join(map(str, frame.columns))};"
            " required: observable, time, value; optional: censored, unit)"
        )
    if len(frame) == 0:
        raise InputError("measurements: the table has no rows")
    return frame


def _censored(raw: Any, row: int) -> bool:
    if isinstance(raw, bool | np.bool_):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false", "1", "0", ""):
        return raw.strip().lower() in ("true", "1")
    if isinstance(raw, int | float | np.integer | np.floating) and raw in (0, 1):
        return bool(raw)
    raise InputError(f"measurement row {row}: censored {raw!r} is not true/false")


def read_observations(template: Template, data: Any, *, not_before: float | None = None) -> Observations:
    """Check and convert a measurement table (see the module docstring).

    Args:
        template: the twin's template (observables, units, limits of detection).
        data: a table (DataFrame, or a mapping of columns) with columns ``observable``, ``time``
            (days), ``value`` and optionally ``censored`` (bool) and ``unit`` (pint string; default:
            the observable's unit).
        not_before: earliest allowed time (a twin's reference time).

    Returns:
        The rows as :class:`Observations`, sorted by time.

    Raises:
        UnknownIdError: an observable the template does not define (names the row).
        InputError: any other impossible row (names the row and the column).
    """
    frame = _columns(data)
    meta = template.metadata.observables
    units = frame["unit"] if "unit" in frame.columns else None
    flags = frame["censored"] if "censored" in frame.columns else None
    rows = []
    for i, (name, t_raw, v_raw) in enumerate(zip(frame["observable"], frame["time"], frame["value"], strict=True)):  # fmt: skip
        row = i + 1
        info = meta.get(str(name))
        if info is None:
            raise UnknownIdError(f"observable in measurement row {row}", str(name), tuple(meta))
        t = _number(t_raw, "time", row)
        if t < 0:
            raise InputError(f"measurement row {row}: time {t:g} is negative (days since the twin's origin)")
        if not_before is not None and t < not_before:
            raise InputError(
                f"measurement row {row}: time {t:g} is before the twin's reference time {not_before:g}:"
                " a twin absorbs measurements in time order (personalise again to add earlier data)"
            )
        v = _number(v_raw, "value", row)
        unit = info.unit if units is None or pd.isna(units.iloc[i]) else str(units.iloc[i])
        v = _convert(v, unit, info.unit, str(name), row)
        if not _LOG10.match(info.unit) and v < 0:
            raise InputError(
                f"measurement row {row}: {name} = {v:g} {info.unit} is impossible (it cannot be negative)"
            )
        cens = False if flags is None else _censored(flags.iloc[i], row)
        if info.lloq is not None and v <= info.lloq:
            cens, v = True, float(info.lloq)
        rows.append([str(name), t, v, cens])
    rows.sort(key=lambda r: r[1])
    return Observations.from_records(rows)
