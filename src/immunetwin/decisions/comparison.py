"""The comparison of treatment scenarios over a twin's weighted particles (common random numbers).

Every particle (a parameter draw $\\theta_i$ with weight $\\bar w_i$) is simulated under every scenario
$s$, so the outcomes $y_{s,i} = g(\\theta_i, s)$ of two scenarios differ only by the treatment, and the
paired differences $d_{s,i} = y_{s,i} - y_{\\mathrm{ref},i}$ are free of the between-particle spread
both scenarios share (common random numbers; Law & Kelton, *Simulation Modeling and Analysis*,
McGraw-Hill, chapter on variance-reduction techniques). For each
scenario and outcome metric the comparison reports the weighted mean with its Monte Carlo error,
weighted quantiles (a central credible interval), $P(y = 1)$ for 0/1 outcomes, and against the
reference scenario the mean paired difference, its interval and

$$ P(\\text{better}) = \\sum_i \\bar w_i\\, \\mathbb 1[d_{s,i} < 0] $$

for metrics where lower is better ($d_{s,i} > 0$ where higher is better); ties count as not better.
Weights, ESS and errors are those of :mod:`immunetwin.decisions.stats`.

Time-to-event metrics (kind ``time_below``) are $+\\infty$ when the event does not happen within the
simulation; means, quantiles and utilities use them censored at the horizon (the restricted mean, Royston
& Parmar 2013, *BMC Med Res Methodol* 13:152), and each summary reports the censored fraction. Events
(:mod:`immunetwin.decisions.rules`) read the uncensored values.

A particle whose solve fails (or whose metrics are NaN) under any scenario is excluded from every
scenario, so the pairing is kept; the failures are counted per scenario and the excluded weight is
reported, never dropped silently.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import pandas as pd

from immunetwin.decisions.scenarios import NO_TREATMENT, Scenario
from immunetwin.decisions.stats import (
    kish_ess,
    normalise_log_weights,
    weighted_mcse,
    weighted_mean,
    weighted_quantile,
)
from immunetwin.errors import InputError, SolverError, UnknownIdError

__all__ = ["MetricSummary", "ScenarioComparison"]

Values = Mapping[str, Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class MetricSummary:
    """One metric under one scenario (NaN differences for the reference scenario itself)."""

    scenario: str
    metric: str
    unit: str
    binary: bool
    mean: float
    mcse: float
    median: float
    lower: float
    upper: float
    censored: float
    diff_mean: float
    diff_mcse: float
    diff_lower: float
    diff_upper: float
    p_better: float
    p_worse: float


@dataclass(frozen=True, eq=False)
class ScenarioComparison:
    """Outcome metrics of the same weighted particles under several scenarios.

    Build it with :func:`compare_scenarios` (simulation) or :meth:`from_values` (given arrays).

    Attributes:
        scenarios: the scenarios, in the order given.
        reference: name of the scenario the paired differences are taken against.
        metrics: metric names; ``units``, ``binary`` (0/1 outcomes), ``timed`` (time-to-event,
            censored at ``horizon``) and ``lower_is_better`` describe them.
        values: ``values[scenario][metric]``: shape ``(S,)``, uncensored, NaN for failed particles.
        weights: normalised weights of the ``S`` particles (before excluding failures).
        used: ``(S,)`` mask of the particles that succeeded under every scenario.
        failed: per scenario, how many particles failed (solver status or NaN metric).
        horizon: last simulated day; time-to-event metrics are censored here.
        level: probability mass of the central credible intervals.
        interventions: the intervention names costs may refer to.
        summaries: one :class:`MetricSummary` per scenario and metric.
    """

    scenarios: tuple[Scenario, ...]
    reference: str
    metrics: tuple[str, ...]
    units: Mapping[str, str]
    binary: frozenset[str]
    timed: frozenset[str]
    lower_is_better: Mapping[str, bool]
    values: Values = field(repr=False)
    weights: np.ndarray = field(repr=False)
    used: np.ndarray = field(repr=False)
    failed: Mapping[str, int]
    horizon: float
    level: float
    interventions: tuple[str, ...]
    summaries: tuple[MetricSummary, ...] = field(repr=False)

    @property
    def names(self) -> tuple[str, ...]:
        """Scenario names, in order."""
        return tuple(s.name for s in self.scenarios)

    @property
    def used_weights(self) -> np.ndarray:
        """Normalised weights of the particles used (failures excluded), shape ``(n_used,)``."""
        w = self.weights[self.used]
        return w / w.sum()

    @property
    def ess(self) -> float:
        """Kish effective sample size of the particles used."""
        return kish_ess(self.used_weights)

    @property
    def excluded_weight(self) -> float:
        """Total (normalised) weight of the particles excluded because a solve failed."""
        return float(self.weights[~self.used].sum())

    def scenario(self, name: str) -> Scenario:
        """The scenario called ``name``."""
        for s in self.scenarios:
            if s.name == name:
                return s
        raise UnknownIdError("scenario", name, self.names)

    def metric(self, scenario: str, metric: str, *, censor: bool = True) -> np.ndarray:
        """Values of the used particles; time-to-event metrics censored at the horizon unless asked."""
        if metric not in self.metrics:
            raise UnknownIdError("outcome metric", metric, self.metrics)
        x = np.asarray(self.values[self.scenario(scenario).name][metric], dtype=float)[self.used]
        return np.minimum(x, self.horizon) if censor and metric in self.timed else x

    def summary(self, scenario: str, metric: str) -> MetricSummary:
        """The summary of ``metric`` under ``scenario``."""
        self.metric(scenario, metric)  # validates both names
        return next(m for m in self.summaries if m.scenario == scenario and m.metric == metric)

    def to_frame(self) -> pd.DataFrame:
        """One row per scenario and metric: the fields of :class:`MetricSummary`."""
        return pd.DataFrame([vars(m) for m in self.summaries])

    @classmethod
    def from_values(
        cls,
        scenarios: Sequence[Scenario],
        values: Values,
        *,
        log_weights: object = None,
        reference: str = NO_TREATMENT,
        units: Mapping[str, str] | None = None,
        binary: Collection[str] = (),
        timed: Collection[str] = (),
        higher_is_better: Collection[str] = (),
        horizon: float = math.inf,
        level: float = 0.9,
        interventions: Sequence[str] | None = None,
    ) -> ScenarioComparison:
        """A comparison from per-particle metric values ``values[scenario][metric]`` (each ``(S,)``).

        NaN marks a failed particle, and so does an infinite value, except ``+inf`` of a time-to-event
        (``timed``) metric, which means the event did not happen before ``horizon``. ``interventions``
        defaults to those the scenarios use.

        Raises:
            InputError: no scenarios, duplicate names, ragged or empty arrays, bad weights or level, or
                time-to-event metrics without a finite horizon.
            UnknownIdError: ``reference`` or a listed metric is not known.
            SolverError: every particle failed under some scenario.
        """
        scen = _check_scenarios(scenarios, reference)
        metrics, size = _check_values(scen, values)
        for group, label in ((binary, "binary"), (timed, "timed"), (higher_is_better, "higher_is_better")):
            for m in group:
                if m not in metrics:
                    raise UnknownIdError(f"outcome metric (in {label})", m, metrics)
        if not 0.0 < level < 1.0:
            raise InputError(f"level must be in (0, 1), got {level}")
        if timed and not (math.isfinite(horizon) and horizon > 0):
            raise InputError(f"time-to-event metrics {sorted(timed)} need a finite horizon, got {horizon}")
        weights = normalise_log_weights(log_weights, size)
        arrays = {s.name: {m: _frozen(values[s.name][m]) for m in metrics} for s in scen}
        bad = {s: np.any([_unusable(a, m in timed) for m, a in arrays[s].items()], axis=0) for s in arrays}
        used = ~np.any(list(bad.values()), axis=0)
        if not used.any():
            raise SolverError(f"every particle failed under at least one scenario ({size} particles)")
        comparison = cls(
            scenarios=scen,
            reference=reference,
            metrics=metrics,
            units=MappingProxyType({m: (units or {}).get(m, "") for m in metrics}),
            binary=frozenset(binary),
            timed=frozenset(timed),
            lower_is_better=MappingProxyType({m: m not in higher_is_better for m in metrics}),
            values=MappingProxyType({s: MappingProxyType(a) for s, a in arrays.items()}),
            weights=_frozen(weights),
            used=_frozen(used, bool),
            failed=MappingProxyType({s: int(b.sum()) for s, b in bad.items()}),
            horizon=float(horizon),
            level=float(level),
            interventions=tuple(interventions or dict.fromkeys(i for s in scen for i in s.interventions)),
            summaries=(),
        )
        summaries = tuple(_summary(comparison, s.name, m) for s in scen for m in metrics)
        object.__setattr__(comparison, "summaries", summaries)
        return comparison


def _unusable(x: np.ndarray, timed: bool) -> np.ndarray:
    """NaN, or infinite where that is not "the event never happened" (``+inf`` of a timed metric)."""
    return np.isnan(x) | (np.isneginf(x) if timed else np.isinf(x))


def _frozen(values: object, dtype: type = float) -> np.ndarray:
    """A read-only copy, so a comparison cannot be changed through its arrays."""
    out = np.array(values, dtype=dtype)
    out.flags.writeable = False
    return out


def _check_scenarios(scenarios: Sequence[Scenario], reference: str) -> tuple[Scenario, ...]:
    scen = tuple(scenarios)
    if not scen:
        raise InputError("no scenarios to compare")
    names = [s.name for s in scen]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"scenario name '{twice[0]}' is used twice; scenario names must be unique")
    if reference not in names:
        raise UnknownIdError("reference scenario", reference, tuple(names))
    return scen


def _check_values(scen: tuple[Scenario, ...], values: Values) -> tuple[tuple[str, ...], int]:
    first = values.get(scen[0].name)
    if first is None or not first:
        raise InputError(f"no metric values for scenario '{scen[0].name}'")
    metrics = tuple(first)
    sizes = set()
    for s in scen:
        row = values.get(s.name)
        if row is None or set(row) != set(metrics):
            raise InputError(f"scenario '{s.name}' must have values for exactly the metrics {metrics}")
        for m in metrics:
            arr = np.asarray(row[m], dtype=float)
            if arr.ndim != 1:
                raise InputError(f"values of '{m}' under '{s.name}' must be 1-D, got shape {arr.shape}")
            sizes.add(arr.shape[0])
    if len(sizes) != 1:
        raise InputError(f"metric arrays disagree on the number of particles: {sorted(sizes)}")
    size = sizes.pop()
    if size == 0:
        raise InputError("there are no particles (empty draws)")
    return metrics, size


def _summary(c: ScenarioComparison, name: str, metric: str) -> MetricSummary:
    w = c.used_weights
    x = c.metric(name, metric)
    lo, hi = (1 - c.level) / 2, (1 + c.level) / 2
    q = weighted_quantile(x, w, [0.5, lo, hi])
    censored = weighted_mean(np.isposinf(c.metric(name, metric, censor=False)), w)
    diff = [math.nan] * 6
    if name != c.reference:
        d = x - c.metric(c.reference, metric)
        sign = 1.0 if c.lower_is_better[metric] else -1.0
        dq = weighted_quantile(d, w, [lo, hi])
        diff = [weighted_mean(d, w), weighted_mcse(d, w), float(dq[0]), float(dq[1]),
                weighted_mean(sign * d < 0, w), weighted_mean(sign * d > 0, w)]  # fmt: skip
    return MetricSummary(
        name, metric, c.units[metric], metric in c.binary, weighted_mean(x, w), weighted_mcse(x, w),
        float(q[0]), float(q[1]), float(q[2]), censored, *diff,
    )  # fmt: skip
