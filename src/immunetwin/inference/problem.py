"""A calibration problem: model, parameters to estimate, observables, conditions and data.

This is the immutable value every personalisation method works on. Its vocabulary is PEtab v1's
(Schmiester et al. 2021, PLoS Comput Biol 17:e1008646), so a problem read from PEtab files
(:func:`immunetwin.io.petab.read_petab`) and one built from a template and a patient's data are the
same thing, and either can be written back as PEtab (:func:`immunetwin.io.petab.write_petab`).

Scales. Each parameter has a value ``x`` (linear) and an estimation scale ``s`` in ``lin``, ``log``
or ``log10``; optimisers and samplers work on ``theta = s(x)``. Bounds are given on the linear value.

Noise model of one measurement ``y`` with simulated observable ``h`` and noise parameter ``sigma``,
after the observable transformation ``g`` (identity, ``ln`` or ``log10``):

.. math::

    \\log p(y) = \\log f\\big(g(y) - g(h);\\ \\sigma\\big) + \\log |g'(y)|,

with ``f`` the normal (``-\\tfrac12\\log 2\\pi\\sigma^2 - r^2/2\\sigma^2``) or Laplace
(``-\\log 2\\sigma - |r|/\\sigma``) density, as in the PEtab specification. A measurement censored at a
limit of detection ``L`` (``censoring = "left"``: the true value is below ``L``, the measurement column
holds ``L``) contributes ``\\log F(g(L) - g(h); \\sigma)`` with ``F`` the CDF (``"right"``: ``1 - F``).
The censoring column is an immunetwin extension of the PEtab v1 measurement table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import sympy as sp

from immunetwin.engines.ode import Model
from immunetwin.errors import InputError, UnknownIdError

__all__ = [
    "PRIOR_TYPES",
    "Condition",
    "Measurements",
    "Observable",
    "Parameter",
    "Prior",
    "Problem",
    "from_scale",
    "to_scale",
]

Scale = Literal["lin", "log", "log10"]
Distribution = Literal["normal", "laplace"]
Censoring = Literal["", "left", "right"]

#: PEtab v1 prior types and the number of prior parameters each takes.
PRIOR_TYPES: Mapping[str, int] = {
    "uniform": 2,
    "normal": 2,
    "laplace": 2,
    "logNormal": 2,
    "logLaplace": 2,
    "parameterScaleUniform": 2,
    "parameterScaleNormal": 2,
    "parameterScaleLaplace": 2,
}


def to_scale(x: float | np.ndarray, scale: Scale) -> float | np.ndarray:
    """Linear value -> value on ``scale``."""
    if scale == "lin":
        return x
    if scale == "log":
        return np.log(x)
    return np.log10(x)


def from_scale(theta: float | np.ndarray, scale: Scale) -> float | np.ndarray:
    """Value on ``scale`` -> linear value."""
    if scale == "lin":
        return theta
    if scale == "log":
        return np.exp(theta)
    return 10.0**theta


@dataclass(frozen=True)
class Prior:
    """A PEtab prior: ``kind`` is one of :data:`PRIOR_TYPES`, ``params`` its two parameters.

    ``uniform(a, b)``, ``normal(mu, sd)``, ``laplace(mu, b)`` are densities of the linear value;
    ``logNormal(mu, sd)`` and ``logLaplace(mu, b)`` of its natural log; ``parameterScale*`` of the
    value on the parameter's scale.
    """

    kind: str
    params: tuple[float, float]

    def __post_init__(self) -> None:
        if self.kind not in PRIOR_TYPES:
            raise InputError(f"unknown prior type '{self.kind}' (known: {', '.join(PRIOR_TYPES)})")
        a, b = self.params
        if not (math.isfinite(a) and math.isfinite(b)):
            raise InputError(f"prior {self.kind} parameters must be finite, got {self.params}")
        if self.kind.endswith("niform") and not a < b:
            raise InputError(f"prior {self.kind} needs lower < upper, got {self.params}")
        if not self.kind.endswith("niform") and not b > 0:
            raise InputError(f"prior {self.kind} needs a positive scale, got {self.params}")


@dataclass(frozen=True)
class Parameter:
    """One row of the parameter table.

    Attributes:
        id: the parameter id (a model quantity, or a parameter used only by observables, noise
            formulas or condition overrides).
        scale: estimation scale.
        lower, upper: bounds of the linear value.
        nominal: linear value used when not estimated (and as the reference point).
        estimate: whether it is estimated.
        prior: its prior (None: uniform on the parameter scale within the bounds).
    """

    id: str
    scale: Scale = "lin"
    lower: float = -math.inf
    upper: float = math.inf
    nominal: float = math.nan
    estimate: bool = False
    prior: Prior | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.scale not in ("lin", "log", "log10"):
            raise InputError(f"parameter '{self.id}': unknown scale '{self.scale}' (lin, log, log10)")
        if self.estimate:
            if not (math.isfinite(self.lower) and math.isfinite(self.upper) and self.lower < self.upper):
                raise InputError(
                    f"parameter '{self.id}': estimated parameters need finite bounds lower < upper,"
                    f" got [{self.lower}, {self.upper}]"
                )
            if self.scale != "lin" and self.lower <= 0:
                raise InputError(
                    f"parameter '{self.id}': lower bound {self.lower} must be > 0 on {self.scale} scale"
                )
        if not self.estimate and not math.isfinite(self.nominal):
            raise InputError(f"parameter '{self.id}': a fixed parameter needs a finite nominal value")
        if self.scale != "lin" and math.isfinite(self.nominal) and self.nominal <= 0:
            raise InputError(
                f"parameter '{self.id}': nominal value {self.nominal} must be > 0 on {self.scale} scale"
            )


@dataclass(frozen=True)
class Observable:
    """What is measured: ``formula`` (sympy over model ids, parameter ids and
    ``observableParameter<k>_<id>``), its noise ``noise`` (over ``noiseParameter<k>_<id>``),
    transformation and noise distribution. ``unit`` and ``loinc`` are descriptive."""

    id: str
    formula: sp.Expr
    noise: sp.Expr
    transformation: Scale = "lin"
    distribution: Distribution = "normal"
    name: str = ""

    def __post_init__(self) -> None:
        if self.transformation not in ("lin", "log", "log10"):
            raise InputError(f"observable '{self.id}': unknown transformation '{self.transformation}'")
        if self.distribution not in ("normal", "laplace"):
            raise InputError(f"observable '{self.id}': unknown noise distribution '{self.distribution}'")


@dataclass(frozen=True)
class Condition:
    """An experimental condition: model ids set to a number or to a parameter-table id.

    A species set to NaN keeps the value it has (its model initial value, or the pre-equilibrated
    state).
    """

    id: str
    overrides: tuple[tuple[str, float | str], ...] = ()

    def as_dict(self) -> dict[str, float | str]:
        return dict(self.overrides)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Measurements:
    """The measurement table, column-wise (read-only arrays, one entry per row).

    ``observable_parameters`` / ``noise_parameters`` hold, per row, the values that replace the
    placeholders ``observableParameter<k>_<obs>`` / ``noiseParameter<k>_<obs>`` (numbers or
    parameter-table ids). ``censoring`` is ``""``, ``"left"`` (below the limit in ``value``) or
    ``"right"``. ``source_rows`` are the row numbers in the file the table came from (for messages).
    """

    observable: np.ndarray
    condition: np.ndarray
    preequilibration: np.ndarray
    time: np.ndarray
    value: np.ndarray
    observable_parameters: tuple[tuple[float | str, ...], ...]
    noise_parameters: tuple[tuple[float | str, ...], ...]
    censoring: np.ndarray
    source_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    def __post_init__(self) -> None:
        n = len(self.value)
        for name in ("observable", "condition", "preequilibration", "time", "censoring"):
            if len(getattr(self, name)) != n:
                raise InputError(f"measurement column '{name}' has {len(getattr(self, name))} rows, not {n}")
        if len(self.observable_parameters) != n or len(self.noise_parameters) != n:
            raise InputError("observable/noise parameter overrides need one entry per measurement")
        rows = self.source_rows if len(self.source_rows) == n else np.arange(n)
        for name in ("observable", "condition", "preequilibration", "censoring"):
            object.__setattr__(self, name, _frozen(np.asarray(getattr(self, name), dtype=str)))
        for name in ("time", "value"):
            object.__setattr__(self, name, _frozen(np.asarray(getattr(self, name), dtype=float)))
        object.__setattr__(self, "source_rows", _frozen(np.asarray(rows, dtype=int)))
        bad = [k for k, c in enumerate(self.censoring) if c not in ("", "left", "right")]
        if bad:
            raise InputError(
                f"measurement row {int(self.source_rows[bad[0]])}: censoring must be '', 'left' or 'right',"
                f" got '{self.censoring[bad[0]]}'"
            )

    def __len__(self) -> int:
        return len(self.value)


@dataclass(frozen=True, eq=False)
class Problem:
    """A complete calibration problem. Build with :func:`immunetwin.io.petab.read_petab` or directly.

    The constructor checks that every id it refers to exists.
    """

    model: Model
    parameters: tuple[Parameter, ...]
    observables: tuple[Observable, ...]
    conditions: tuple[Condition, ...]
    measurements: Measurements
    name: str = "problem"

    def __post_init__(self) -> None:
        ids = [p.id for p in self.parameters]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise InputError(f"parameter ids appear more than once: {', '.join(dupes)}")
        obs = {o.id for o in self.observables}
        cond = {c.id for c in self.conditions}
        m = self.measurements
        for k, (o, c, pre) in enumerate(zip(m.observable, m.condition, m.preequilibration, strict=True)):
            row = int(m.source_rows[k])
            if o not in obs:
                raise UnknownIdError(f"observable in measurement row {row}", str(o), tuple(sorted(obs)))
            if c not in cond:
                raise UnknownIdError(f"condition in measurement row {row}", str(c), tuple(sorted(cond)))
            if pre and pre not in cond:
                raise UnknownIdError(
                    f"pre-equilibration condition in row {row}", str(pre), tuple(sorted(cond))
                )
        known = set(ids)
        for k, (ops, nps) in enumerate(zip(m.observable_parameters, m.noise_parameters, strict=True)):
            for v in (*ops, *nps):
                if isinstance(v, str) and v not in known:
                    raise UnknownIdError(
                        f"parameter in measurement row {int(m.source_rows[k])} overrides", v, tuple(ids)
                    )
        model_ids = set(self.model.ids)
        for c in self.conditions:
            for target, v in c.overrides:
                if target not in model_ids:
                    raise UnknownIdError(f"model id in condition '{c.id}'", target, self.model.parameter_ids)
                if isinstance(v, str) and v not in known:
                    raise UnknownIdError(f"parameter in condition '{c.id}'", v, tuple(ids))

    # -- views ----------------------------------------------------------------------------------

    @property
    def parameter_ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.parameters)

    @property
    def free(self) -> tuple[Parameter, ...]:
        """The estimated parameters, in the order of the vector ``theta``."""
        return tuple(p for p in self.parameters if p.estimate)

    @property
    def free_ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.free)

    @property
    def lower(self) -> np.ndarray:
        """Lower bounds of ``theta`` (on the parameter scales)."""
        return np.array([to_scale(p.lower, p.scale) for p in self.free], dtype=float)

    @property
    def upper(self) -> np.ndarray:
        """Upper bounds of ``theta`` (on the parameter scales)."""
        return np.array([to_scale(p.upper, p.scale) for p in self.free], dtype=float)

    @property
    def nominal(self) -> np.ndarray:
        """Nominal ``theta`` (on the parameter scales)."""
        return np.array([to_scale(p.nominal, p.scale) for p in self.free], dtype=float)

    def theta(self, values: Mapping[str, float]) -> np.ndarray:
        """``theta`` from linear values by id (missing ids take their nominal value)."""
        unknown = sorted(set(values) - set(self.free_ids))
        if unknown:
            raise UnknownIdError("estimated parameter", unknown[0], self.free_ids)
        return np.array(
            [to_scale(float(values.get(p.id, p.nominal)), p.scale) for p in self.free], dtype=float
        )

    def values(self, theta: np.ndarray) -> dict[str, float]:
        """Linear values by id from ``theta``."""
        theta = np.asarray(theta, dtype=float)
        if theta.shape != (len(self.free),):
            raise InputError(f"theta must have shape ({len(self.free)},), got {theta.shape}")
        return {p.id: float(from_scale(t, p.scale)) for p, t in zip(self.free, theta, strict=True)}
