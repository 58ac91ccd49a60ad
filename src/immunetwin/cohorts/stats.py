"""Interval estimates for trial endpoints (frequentist, over the virtual patients).

* a mean: Student-t interval;
* a proportion: Wilson score interval (Wilson 1927, JASA 22:209; Newcombe 1998, Stat Med 17:857,
  method 3);
* a difference of two independent means: Welch's t interval (Welch 1947, Biometrika 34:28);
* a difference of two independent proportions: Newcombe's hybrid score interval (Newcombe 1998,
  Stat Med 17:873, method 10), built from the two Wilson intervals;
* a paired difference (the same virtual patients in both arms): the t interval of the per-patient
  differences (for a binary endpoint this is the Wald interval of paired proportions, adequate for the
  hundreds of patients of a virtual trial).

The intervals describe Monte Carlo (sampling) uncertainty over the virtual population, not parameter
uncertainty of the template.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["Interval", "diff_means", "diff_paired", "diff_proportions", "mean_interval", "wilson"]


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided ``level`` interval and the patients behind it."""

    estimate: float
    lower: float
    upper: float
    n: int

    def contains(self, value: float) -> bool:
        return self.lower <= value <= self.upper


def _nan(n: int) -> Interval:
    return Interval(math.nan, math.nan, math.nan, n)


def mean_interval(x: np.ndarray, level: float) -> Interval:
    x = np.asarray(x, float)
    n = len(x)
    if n == 0:
        return _nan(0)
    m = float(np.mean(x))
    if n < 2:
        return Interval(m, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * np.std(x, ddof=1) / math.sqrt(n))
    return Interval(m, m - half, m + half, n)


def wilson(k: int, n: int, level: float) -> Interval:
    if n == 0:
        return _nan(0)
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


def diff_means(x: np.ndarray, y: np.ndarray, level: float) -> Interval:
    """``mean(x) - mean(y)`` with Welch's interval."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    nx, ny = len(x), len(y)
    if nx < 2 or ny < 2:
        return _nan(nx + ny)
    vx, vy = np.var(x, ddof=1) / nx, np.var(y, ddof=1) / ny
    d = float(np.mean(x) - np.mean(y))
    se = math.sqrt(vx + vy)
    if se == 0:
        return Interval(d, d, d, nx + ny)
    df = (vx + vy) ** 2 / (vx**2 / (nx - 1) + vy**2 / (ny - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df) * se)
    return Interval(d, d - half, d + half, nx + ny)


def diff_proportions(x: np.ndarray, y: np.ndarray, level: float) -> Interval:
    """``p_x - p_y`` of 0/1 arrays with Newcombe's hybrid score interval (method 10)."""
    nx, ny = len(x), len(y)
    if nx == 0 or ny == 0:
        return _nan(nx + ny)
    a, b = wilson(int(np.sum(x)), nx, level), wilson(int(np.sum(y)), ny, level)
    d = a.estimate - b.estimate
    lower = d - math.sqrt((a.estimate - a.lower) ** 2 + (b.upper - b.estimate) ** 2)
    upper = d + math.sqrt((a.upper - a.estimate) ** 2 + (b.estimate - b.lower) ** 2)
    return Interval(d, lower, upper, nx + ny)


def diff_paired(x: np.ndarray, y: np.ndarray, level: float) -> Interval:
    """Mean of ``x - y`` over the same patients, t interval of the differences."""
    d = np.asarray(x, float) - np.asarray(y, float)
    out = mean_interval(d, level)
    if len(d) >= 2 and np.std(d) == 0:
        return Interval(out.estimate, out.estimate, out.estimate, out.n)
    return out
