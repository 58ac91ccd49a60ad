"""One patient's calibration problem from a template and that patient's measurements.

The template supplies the model, which parameters are personalised (``estimate``), their bounds
(``range``), priors and scales (``log10`` for positive parameters, as in the template's PEtab
export), and each observable's formula, noise model and lower limit of detection. The patient supplies
a table of measurements. The result is an ordinary :class:`~immunetwin.inference.problem.Problem`,
so every method (MAP, NUTS, Laplace, profiles) applies, and
:func:`immunetwin.io.petab.write_petab` exports it for pyPESTO, COPASI or Data2Dynamics users.

Values at or below an observable's limit of detection, and rows flagged ``censored``, enter the
likelihood as left-censored at the limit (the CDF, not the density; Beal 2001, J Pharmacokinet
Pharmacodyn 28:481, method M3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import sympy as sp

from immunetwin.errors import InputError, ProblemError, UnknownIdError
from immunetwin.inference.problem import Condition, Measurements, Observable, Parameter, Prior, Problem
from immunetwin.templates import Template
from immunetwin.templates.library import petab_prior
from immunetwin.templates.metadata import parse_expression

__all__ = ["patient_problem"]

_COLUMNS = ("observable", "time", "value")


def _parameters(template: Template, estimate: Sequence[str] | None) -> tuple[Parameter, ...]:
    meta = template.metadata
    names = [p for p in meta.parameters if p in template.structure.parameters]
    chosen = set(estimate) if estimate is not None else {p for p in names if meta.parameters[p].estimate}
    unknown = sorted(chosen - set(names))
    if unknown:
        raise UnknownIdError(f"parameter of template '{template.name}'", unknown[0], tuple(names))
    out = []
    for pid in names:
        info = meta.parameters[pid]
        est = pid in chosen
        lo, hi = info.range
        log = est and info.value > 0 and lo > 0
        prior = None
        if est:
            kind, params = petab_prior(info.prior)
            a, b = (float(x) for x in params.split(";"))
            prior = Prior(kind, (a, b))
        out.append(
            Parameter(pid, "log10" if log else "lin", float(lo), float(hi), float(info.value), est, prior)
        )
    return tuple(out)


def _observables(template: Template, used: set[str]) -> tuple[Observable, ...]:
    meta = template.metadata
    out = []
    for key in sorted(used):
        info = meta.observables[key]
        oid = f"obs_{key}" if key in template.structure.ids else key
        out.append(
            Observable(oid, parse_expression(info.formula), sp.Float(info.noise.sigma), "lin", info.noise.model, key)
        )  # fmt: skip
    return tuple(out)


def patient_problem(
    template: Template,
    data: pd.DataFrame,
    *,
    estimate: Sequence[str] | None = None,
    name: str = "patient",
) -> Problem:
    """The calibration problem of one patient.

    Args:
        template: the template the twin is built from.
        data: one row per measurement with columns ``observable`` (a template observable name),
            ``time`` (model time, days since the model's start), ``value`` (on the observable's scale,
            e.g. log10 copies/mL) and optionally ``censored`` (bool: the true value is below
            ``value``). Values at or below the observable's limit of detection are censored there.
        estimate: ids to personalise (default: the template's ``estimate: true`` parameters).
        name: problem name.

    Raises:
        ProblemError: a missing column, an unknown observable, a NaN or infinite value or time, a
            negative time (the message names the row).
    """
    for col in _COLUMNS:
        if col not in data.columns:
            raise ProblemError(
                f"missing column '{col}' (columns: {', '.join(map(str, data.columns))})",
                file=name,
                column=col,
            )
    if len(data) == 0:
        raise ProblemError("no measurements", file=name)
    meta = template.metadata
    obs = data["observable"].astype(str).to_numpy()
    censored = (
        data["censored"].to_numpy(dtype=bool).copy()
        if "censored" in data.columns
        else np.zeros(len(data), bool)
    )
    values = np.empty(len(data))
    times = np.empty(len(data))
    for i, (o, t, v) in enumerate(zip(obs, data["time"], data["value"], strict=True)):
        if o not in meta.observables:
            raise ProblemError(
                f"unknown observable '{o}' (known: {', '.join(meta.observables)})",
                file=name,
                row=i + 1,
                column="observable",
            )
        try:
            t, v = float(t), float(v)
        except (TypeError, ValueError):
            raise ProblemError(f"time {t!r} / value {v!r} is not a number", file=name, row=i + 1) from None
        if not math.isfinite(t) or t < 0:
            raise ProblemError(f"time {t} must be a finite number >= 0", file=name, row=i + 1, column="time")
        if not math.isfinite(v):
            raise ProblemError(f"value {v} is not a finite number", file=name, row=i + 1, column="value")
        lod = meta.observables[o].lloq
        if lod is not None and v <= lod:
            censored[i], v = True, float(lod)
        times[i], values[i] = t, v
    observables = _observables(template, set(obs))
    oid = {o.name: o.id for o in observables}
    n = len(data)
    try:
        measurements = Measurements(
            observable=np.array([oid[o] for o in obs]),
            condition=np.full(n, "default"),
            preequilibration=np.full(n, ""),
            time=times,
            value=values,
            observable_parameters=((),) * n,
            noise_parameters=((),) * n,
            censoring=np.where(censored, "left", ""),
            source_rows=np.arange(n) + 1,
        )
        return Problem(
            model=template.model,
            parameters=_parameters(template, estimate),
            observables=observables,
            conditions=(Condition("default"),),
            measurements=measurements,
            name=name,
        )
    except InputError as err:
        raise ProblemError(str(err), file=name) from None
