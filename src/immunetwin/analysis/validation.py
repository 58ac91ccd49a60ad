"""Scores of probabilistic forecasts against later observations, and two naive baselines.

Every score takes *predictive samples* of the observations, ``(S,)`` for one observation or
``(S, N)`` for ``N`` observations (optionally with particle ``weights`` ``(S,)``), and the observed
values on the scale they are forecast (e.g. log10 copies/mL):

- :func:`interval_coverage`: does the central ``level`` interval of each predictive cover the value?
- :func:`crps`: the continuous ranked probability score (Gneiting & Raftery 2007, JASA 102:359),
  lower is better, in the units of the observations.
- :func:`rmse`: root mean squared error of the predictive median on quantified values.
- :func:`pit`: the randomised probability integral transform (Czado, Gneiting & Held 2009,
  Biometrics 65:1254), uniform on (0, 1) for a calibrated forecast.
- :func:`score_forecast`: all of them at once, as a frozen :class:`ForecastScores`;
  :func:`pool_scores` joins several (people, datasets) into one.

**Censoring.** A value below a limit of detection or quantification ``lod`` is only known to be at
most ``lod``. Rows flagged ``censored`` and rows whose value is at or below ``lod`` (the convention of
:func:`~immunetwin.inference.patient_problem`) are scored as censored: an interval *covers* such a row
when its lower end is at or below ``lod``; the PIT is drawn uniformly on ``(0, F(lod))``; the CRPS is
the *threshold-weighted* CRPS with weight ``w(z) = 1{z > lod}`` (Gneiting & Ranjan 2011, J Bus Econ
Stat 29:411), applied to *every* row so that censored and quantified rows are on one scale:

.. math::

    \\mathrm{twCRPS}(F, y) = \\int_{\\mathrm{lod}}^{\\infty} (F(z) - \\mathbb 1\\{y \\le z\\})^2\\,dz
    = \\mathbb E|v(X) - v(y)| - \\tfrac12\\,\\mathbb E|v(X) - v(X')|, \\qquad v(z) = \\max(z, \\mathrm{lod}),

the same for every ``y <= lod``, so a censored row needs no imputed value. The ensemble form on the
right (Allen, Ginsbourger & Ziegel 2023, SIAM/ASA J Uncertain Quantif 11:906) is the ordinary CRPS
of the samples and observations mapped through ``v``, computed by ``scoringrules``. With no ``lod``
(``-inf``) it is the ordinary CRPS.

**Baselines** (:class:`NormalForecast`): :func:`population_mean_forecast`, the mean trajectory of the
*other* people by time with their between-person spread, and :func:`last_value_forecast`, the
person's last value before the cut-off carried forward with the spread of the same forecast's errors
in the other people. :func:`split_at_cutoff` defines the cut-off for both and for the twin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import pandas as pd
from scipy.stats import norm

from immunetwin.errors import InputError

__all__ = [
    "Coverage",
    "ForecastScores",
    "NormalForecast",
    "crps",
    "interval_coverage",
    "last_value_forecast",
    "pit",
    "pool_scores",
    "population_mean_forecast",
    "rmse",
    "score_forecast",
    "split_at_cutoff",
]

# -- inputs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Inputs:
    samples: np.ndarray  # (S, N)
    observed: np.ndarray  # (N,)
    below: np.ndarray  # (N,) censored or at/below lod
    lod: np.ndarray  # (N,)
    weights: np.ndarray  # (S,), sums to 1
    scalar: bool


def _inputs(samples: Any, observed: Any, censored: Any, lod: Any, weights: Any) -> _Inputs:
    x = np.asarray(samples, dtype=float)
    y = np.asarray(observed, dtype=float)
    scalar = x.ndim == 1
    if x.ndim not in (1, 2) or (scalar and y.ndim != 0) or (not scalar and y.shape != x.shape[1:]):
        raise InputError(
            f"samples must be (S,) with a scalar observation or (S, N) with N observations; got samples"
            f" {x.shape} and observed {y.shape}"
        )
    x, y = x.reshape(len(x), -1), y.reshape(-1)
    if x.shape[0] < 2:
        raise InputError(f"need at least 2 predictive samples, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        col = int(np.flatnonzero(~np.all(np.isfinite(x), axis=0))[0])
        raise InputError(f"predictive samples of observation {col} contain NaN or inf")
    cens = np.zeros(y.shape, bool) if censored is None else np.asarray(censored, dtype=bool).reshape(-1)
    if cens.shape != y.shape:
        raise InputError(f"censored must have one flag per observation ({y.size}), got {cens.size}")
    if lod is None and cens.any():
        raise InputError("censored observations need the limit 'lod' they are censored at")
    limit = np.broadcast_to(np.asarray(-np.inf if lod is None else lod, dtype=float), y.shape).copy()
    if np.any(np.isnan(limit)) or np.any(limit == np.inf):
        raise InputError("lod must be a number or -inf, not NaN or +inf")
    bad = ~cens & ~np.isfinite(y)
    if bad.any():
        raise InputError(f"observed value {int(np.flatnonzero(bad)[0])} is NaN or inf and not censored")
    below = cens | (np.isfinite(y) & (y <= limit))
    return _Inputs(x, y, below, limit, _weights(weights, x.shape[0]), scalar)


def _weights(weights: Any, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=float)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise InputError(f"weights must be {n} finite non-negative numbers with a positive sum")
    return w / w.sum()


def _levels(levels: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(v) for v in levels)
    if not out or not all(0.0 < v < 1.0 for v in out):
        raise InputError(f"interval levels must lie strictly between 0 and 1, got {tuple(levels)}")
    return out


def _quantiles(x: np.ndarray, w: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """Weighted inverse empirical CDF: the smallest sample with ``F >= q``, per column -> (Q, N)."""
    order = np.argsort(x, axis=0)
    xs = np.take_along_axis(x, order, axis=0)
    cdf = np.cumsum(w[order], axis=0)
    idx = np.array([np.argmax(cdf >= min(p, cdf[-1, 0]) - 1e-12, axis=0) for p in q])
    return np.take_along_axis(xs, idx, axis=0)


# -- scores -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Coverage:
    """Central predictive intervals and whether they cover the observations.

    Attributes:
        levels: interval levels; ``lower``/``upper``: ``(levels, N)`` bounds, the weighted
            ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of the samples.
        covered: ``(levels, N)``; a censored row is covered when ``lower <= lod``.
        below: ``(N,)`` rows scored as censored.
    """

    levels: tuple[float, ...]
    lower: np.ndarray
    upper: np.ndarray
    covered: np.ndarray
    below: np.ndarray

    @property
    def rate(self) -> dict[float, float]:
        """Fraction of rows covered, by level (the empirical coverage; nominal is the level)."""
        return {lev: float(np.mean(self.covered[k])) for k, lev in enumerate(self.levels)}

    def to_frame(self) -> pd.DataFrame:
        """One row per observation: bounds and coverage per level, and the censoring flag."""
        out = {"below_limit": self.below}
        for k, lev in enumerate(self.levels):
            out |= {
                f"lower_{lev:g}": self.lower[k],
                f"upper_{lev:g}": self.upper[k],
                f"covered_{lev:g}": self.covered[k],
            }
        return pd.DataFrame(out)


def _coverage(a: _Inputs, levels: tuple[float, ...]) -> Coverage:
    q = [p for lev in levels for p in ((1 - lev) / 2, (1 + lev) / 2)]
    bounds = _quantiles(a.samples, a.weights, q)
    lower, upper = bounds[0::2], bounds[1::2]
    inside = (lower <= a.observed) & (a.observed <= upper)
    covered = np.where(a.below, lower <= a.lod, inside)
    return Coverage(levels, lower, upper, covered, a.below)


def interval_coverage(
    samples: Any,
    observed: Any,
    levels: Sequence[float] = (0.5, 0.9),
    *,
    censored: Any = None,
    lod: Any = None,
    weights: Any = None,
) -> Coverage:
    """Central-interval coverage: ``1{q_{(1-α)/2} <= y <= q_{(1+α)/2}}`` for each level ``α``.

    Args:
        samples: predictive samples ``(S,)`` or ``(S, N)``.
        observed: the observation (scalar) or observations ``(N,)``; ignored where censored.
        levels: interval levels in (0, 1).
        censored: ``(N,)`` flags of left-censored rows (true value ``<= lod``).
        lod: the limit (scalar or ``(N,)``); required when any row is censored. Values at or below
            it are censored too.
        weights: ``(S,)`` non-negative weights of the samples (e.g. particle weights).

    Raises:
        InputError: shapes that do not match, NaN or inf samples, a NaN observation that is not
            censored, censored rows without ``lod``, levels outside (0, 1), fewer than 2 samples.
    """
    return _coverage(_inputs(samples, observed, censored, lod, weights), _levels(levels))


def _crps(a: _Inputs) -> np.ndarray:
    import scoringrules as sr  # here, so the rest of immunetwin.analysis imports without it

    v_obs = np.where(a.below, a.lod, np.maximum(a.observed, a.lod))
    v_fct = np.maximum(a.samples, a.lod).T
    w = np.broadcast_to(a.weights, v_fct.shape)
    return np.asarray(sr.crps_ensemble(v_obs, v_fct, ens_w=w, backend="numpy"), dtype=float)


def crps(samples: Any, observed: Any, *, censored: Any = None, lod: Any = None, weights: Any = None) -> Any:
    """CRPS of the predictive samples (threshold-weighted above ``lod``; see the module docstring).

    .. math:: \\mathrm{CRPS}(F, y) = \\mathbb E|X - y| - \\tfrac12\\,\\mathbb E|X - X'|

    Arguments as in :func:`interval_coverage`. Returns a float for ``(S,)`` samples, else ``(N,)``.
    """
    a = _inputs(samples, observed, censored, lod, weights)
    out = _crps(a)
    return float(out[0]) if a.scalar else out


def _pit(a: _Inputs, key: Any) -> np.ndarray:
    u = np.asarray(jax.random.uniform(key, a.observed.shape), dtype=float)
    w = a.weights[:, None]
    y = np.where(a.below, a.lod, a.observed)
    at_or_below = np.sum(w * (a.samples <= y), axis=0)
    strictly = np.sum(w * (a.samples < y), axis=0)
    return np.where(a.below, u * at_or_below, strictly + u * (at_or_below - strictly))


def pit(
    samples: Any, observed: Any, *, key: Any, censored: Any = None, lod: Any = None, weights: Any = None
) -> Any:
    """Randomised PIT: ``F(y-) + u (F(y) - F(y-))``, or ``u F(lod)`` for a censored row, ``u ~ U(0,1)``.

    ``key`` is a ``jax.random.PRNGKey`` for ``u``; other arguments as in :func:`interval_coverage`.
    """
    a = _inputs(samples, observed, censored, lod, weights)
    out = _pit(a, key)
    return float(out[0]) if a.scalar else out


def _median(a: _Inputs) -> np.ndarray:
    return _quantiles(a.samples, a.weights, [0.5])[0]


def rmse(samples: Any, observed: Any, *, censored: Any = None, lod: Any = None, weights: Any = None) -> float:
    """Root mean squared error of the predictive median on the quantified (not censored) rows.

    .. math:: \\mathrm{RMSE} = \\sqrt{\\tfrac1n \\textstyle\\sum_{i:\\, y_i > \\mathrm{lod}} (\\tilde x_i - y_i)^2}

    NaN when no row is quantified. Arguments as in :func:`interval_coverage`.
    """
    a = _inputs(samples, observed, censored, lod, weights)
    return _rmse(_median(a), a.observed, a.below)


def _rmse(median: np.ndarray, observed: np.ndarray, below: np.ndarray) -> float:
    err = (median - observed)[~below]
    return float(np.sqrt(np.mean(err**2))) if err.size else float("nan")


@dataclass(frozen=True, eq=False)
class ForecastScores:
    """Scores of ``N`` forecast observations (see the module docstring for the definitions).

    Attributes:
        rows: labels of the observations (e.g. person, time, method), ``N`` rows (may have no columns).
        observed, median: ``(N,)``; ``crps``, ``pit``: ``(N,)``.
        coverage: the central intervals and whether they cover each row.
    """

    rows: pd.DataFrame
    observed: np.ndarray
    median: np.ndarray
    crps: np.ndarray
    pit: np.ndarray
    coverage: Coverage

    @property
    def rmse(self) -> float:
        """RMSE of the median on the quantified rows (NaN when there are none)."""
        return _rmse(self.median, self.observed, self.coverage.below)

    def summary(self) -> dict[str, float]:
        """Counts ``n`` and ``n_censored``, ``coverage_<level>``, ``rmse`` and the mean ``crps``."""
        out = {"n": float(self.observed.size), "n_censored": float(self.coverage.below.sum())}
        out |= {f"coverage_{lev:g}": r for lev, r in self.coverage.rate.items()}
        mean_crps = float(np.mean(self.crps)) if self.crps.size else float("nan")
        return out | {"rmse": self.rmse, "crps": mean_crps}

    def to_frame(self) -> pd.DataFrame:
        """One row per observation: the labels, observed value, median, CRPS, PIT and intervals."""
        scores = pd.DataFrame(
            {"observed": self.observed, "median": self.median, "crps": self.crps, "pit": self.pit}
        )
        return pd.concat([self.rows.reset_index(drop=True), scores, self.coverage.to_frame()], axis=1)


def score_forecast(
    samples: Any,
    observed: Any,
    *,
    key: Any,
    censored: Any = None,
    lod: Any = None,
    levels: Sequence[float] = (0.5, 0.9),
    weights: Any = None,
    rows: pd.DataFrame | None = None,
) -> ForecastScores:
    """Coverage, CRPS, PIT and median of every observation (arguments as in :func:`interval_coverage`
    and :func:`pit`); ``rows`` labels the observations in :meth:`ForecastScores.to_frame`."""
    a = _inputs(samples, observed, censored, lod, weights)
    labels = pd.DataFrame(index=range(a.observed.size)) if rows is None else rows.reset_index(drop=True)
    if len(labels) != a.observed.size:
        raise InputError(f"rows has {len(labels)} labels for {a.observed.size} observations")
    return ForecastScores(
        labels, a.observed, _median(a), _crps(a), _pit(a, key), _coverage(a, _levels(levels))
    )


def pool_scores(scores: Sequence[ForecastScores]) -> ForecastScores:
    """The observations of several :class:`ForecastScores` (same levels) as one."""
    if not scores:
        raise InputError("pool_scores needs at least one ForecastScores")
    levels = scores[0].coverage.levels
    if any(s.coverage.levels != levels for s in scores):
        raise InputError("pool_scores: every ForecastScores must have the same interval levels")

    def cat(get: Any, axis: int = 0) -> np.ndarray:
        return np.concatenate([get(s) for s in scores], axis=axis)

    cov = Coverage(levels, cat(lambda s: s.coverage.lower, 1), cat(lambda s: s.coverage.upper, 1),
                   cat(lambda s: s.coverage.covered, 1), cat(lambda s: s.coverage.below))  # fmt: skip
    rows = pd.concat([s.rows for s in scores], ignore_index=True)
    return ForecastScores(rows, cat(lambda s: s.observed), cat(lambda s: s.median), cat(lambda s: s.crps),
                          cat(lambda s: s.pit), cov)  # fmt: skip


# -- baselines --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NormalForecast:
    """A normal predictive distribution ``N(mean_i, sd_i^2)`` at each forecast ``time_i``."""

    time: np.ndarray
    mean: np.ndarray
    sd: np.ndarray

    def sample(self, key: Any, draws: int) -> np.ndarray:
        """``(draws, N)`` samples, with a ``jax.random.PRNGKey``."""
        z = np.asarray(jax.random.normal(key, (draws, self.time.size)), dtype=float)
        return self.mean + self.sd * z

    def quantiles(self, levels: Sequence[float]) -> np.ndarray:
        """``(L, N)`` quantiles ``mean + sd * Φ^{-1}(level)``."""
        return self.mean + self.sd * norm.ppf(np.asarray(levels, dtype=float))[:, None]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"time": self.time, "mean": self.mean, "sd": self.sd})


_TABLE = ("participant", "time", "value")


def _check_table(table: pd.DataFrame, what: str) -> None:
    missing = [c for c in _TABLE if c not in table.columns]
    if missing:
        raise InputError(f"{what} needs columns {', '.join(_TABLE)}; missing {', '.join(missing)}")


def split_at_cutoff(table: pd.DataFrame, cutoff: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split each person's rows into the first ``cutoff`` days of sampling and the rest.

    A row is *seen* (first table) when ``time < t_first + cutoff``, with ``t_first`` that person's
    first sampling time; the others are to be forecast. ``table`` has columns ``participant``,
    ``time``, ``value`` (and usually ``censored``).
    """
    _check_table(table, "split_at_cutoff")
    if not cutoff > 0:
        raise InputError(f"cutoff must be a positive number of days, got {cutoff}")
    first = table.groupby("participant")["time"].transform("min")
    seen = table["time"] < first + cutoff
    return table[seen].copy(), table[~seen].copy()


def _window(times: np.ndarray, who: np.ndarray, target: float, min_people: int) -> np.ndarray:
    """Rows within ``k`` days of ``target``, ``k = 0, 1, 2, ...`` until ``min_people`` people are in it."""
    if np.unique(who).size < min_people:
        raise InputError(f"a baseline needs at least {min_people} other people, got {np.unique(who).size}")
    k = 0.0
    while True:
        near = np.abs(times - target) <= k
        if np.unique(who[near]).size >= min_people:
            return near
        k += 1.0


def population_mean_forecast(
    others: pd.DataFrame, times: Any, *, min_people: int = 3, ddof: int = 1
) -> NormalForecast:
    """The population-mean curve: at each time, the mean and between-person sd of the other people's
    values (censored values at their limit), ``N(\\bar y_t, s_t^2)``.

    Rows within ``k`` days of the time are pooled, with the smallest ``k >= 0`` that brings in at
    least ``min_people`` people (so late days, where few people were sampled, borrow neighbours).
    ``others`` is a table of the other people (leave-one-out), columns ``participant``, ``time``,
    ``value``.
    """
    _check_table(others, "population_mean_forecast")
    who, t, y = (
        others["participant"].to_numpy(),
        others["time"].to_numpy(float),
        others["value"].to_numpy(float),
    )
    times = np.asarray(times, dtype=float).reshape(-1)
    near = [_window(t, who, s, min_people) for s in times]
    mean = np.array([y[m].mean() for m in near])
    sd = np.array([y[m].std(ddof=ddof) for m in near])
    return NormalForecast(times, mean, sd)


def last_value_forecast(
    seen: pd.DataFrame, times: Any, others: pd.DataFrame, *, cutoff: float, min_people: int = 3
) -> NormalForecast:
    """Last value carried forward: ``N(y_last, σ_h^2)`` at horizon ``h = t - t_last``.

    ``σ_h`` is the root mean squared error of the same forecast in the other people, each split at
    the same ``cutoff`` (:func:`split_at_cutoff`): their later values minus their last seen value, at
    horizons within ``k`` days of ``h`` (smallest ``k`` with ``min_people`` people). The centre is the
    last value itself; the spread includes the others' systematic decline, so the intervals are
    honest about it without moving the point forecast.
    """
    _check_table(seen, "last_value_forecast")
    _check_table(others, "last_value_forecast")
    if seen.empty:
        raise InputError("last_value_forecast needs at least one seen value")
    last = seen.sort_values("time").iloc[-1]
    o_seen, o_later = split_at_cutoff(others, cutoff)
    o_last = o_seen.sort_values("time").groupby("participant").last()
    o_later = o_later[o_later["participant"].isin(o_last.index)]
    ref = o_last.loc[o_later["participant"]]
    horizon = o_later["time"].to_numpy(float) - ref["time"].to_numpy(float)
    resid = o_later["value"].to_numpy(float) - ref["value"].to_numpy(float)
    who = o_later["participant"].to_numpy()
    times = np.asarray(times, dtype=float).reshape(-1)
    near = [_window(horizon, who, s - float(last["time"]), min_people) for s in times]
    sd = np.array([np.sqrt(np.mean(resid[m] ** 2)) for m in near])
    return NormalForecast(times, np.full(times.size, float(last["value"])), sd)
