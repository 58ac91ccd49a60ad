"""Weighted summaries of particles: normalised weights, effective sample size, means, quantiles, errors.

A twin's belief is a set of particles $\\theta_i$ with (log) importance weights; every summary here is a
self-normalised importance-sampling estimate (Owen 2013, *Monte Carlo theory, methods and examples*,
ch. 9):

$$ \\bar w_i = \\frac{e^{\\ell_i}}{\\sum_j e^{\\ell_j}}, \\qquad
   \\hat\\mu = \\sum_i \\bar w_i\\, x_i, \\qquad
   \\hat\\sigma^2 = \\sum_i \\bar w_i\\, (x_i - \\hat\\mu)^2 . $$

Its Monte Carlo standard error uses Kish's effective sample size (Kish 1965, *Survey Sampling*,
Wiley), $\\mathrm{ESS} = 1 / \\sum_i \\bar w_i^2$, as
$\\mathrm{MCSE}(\\hat\\mu) = \\hat\\sigma/\\sqrt{\\mathrm{ESS}}$.
For equal weights this is the usual $s/\\sqrt{n}$ (with the $1/n$ variance). Kish's ESS assumes the
particles are independent draws; for autocorrelated MCMC draws it is optimistic.

Weighted quantiles interpolate the weighted empirical CDF at the mid-points of each particle's weight,
$p_i = \\sum_{j \\le i} \\bar w_{(j)} - \\bar w_{(i)}/2$ over the sorted values; with equal weights this is
definition 5 of Hyndman & Fan (1996, *Am Stat* 50:361-365), numpy's ``method="hazen"``.
"""

from __future__ import annotations

import math

import numpy as np

from immunetwin.errors import InputError

__all__ = [
    "kish_ess",
    "normalise_log_weights",
    "weighted_mcse",
    "weighted_mean",
    "weighted_quantile",
    "weighted_variance",
]


def normalise_log_weights(log_weights: object, size: int, *, where: str = "log_weights") -> np.ndarray:
    """Normalised weights $\\bar w_i$ from log weights (``None``: equal weights ``1/size``).

    Raises:
        InputError: wrong shape, a NaN or ``+inf``, or every weight zero (all ``-inf``).
    """
    if size < 1:
        raise InputError(f"{where}: there are no particles to weight")
    if log_weights is None:
        return np.full(size, 1.0 / size)
    lw = np.asarray(log_weights, dtype=float)
    if lw.shape != (size,):
        raise InputError(f"{where}: shape {lw.shape}, but there are {size} particles (need ({size},))")
    if np.isnan(lw).any() or np.isposinf(lw).any():
        raise InputError(f"{where}: contains NaN or +inf (particle {int(np.flatnonzero(~(lw < np.inf))[0])})")
    top = lw.max()
    if not math.isfinite(top):
        raise InputError(f"{where}: every weight is zero (all log weights are -inf)")
    w = np.exp(lw - top)
    return w / w.sum()


def kish_ess(weights: np.ndarray) -> float:
    """Kish's effective sample size $(\\sum w_i)^2 / \\sum w_i^2$ (Kish 1965)."""
    w = np.asarray(weights, dtype=float)
    return float(w.sum() ** 2 / np.sum(w**2))


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """$\\sum_i \\bar w_i x_i$ with the weights normalised to sum to one."""
    w = np.asarray(weights, dtype=float)
    return float(np.dot(w, values) / w.sum())


def weighted_variance(values: np.ndarray, weights: np.ndarray) -> float:
    """$\\sum_i \\bar w_i (x_i - \\hat\\mu)^2$ (the plug-in variance; $1/n$ for equal weights)."""
    mu = weighted_mean(values, weights)
    return weighted_mean((np.asarray(values, dtype=float) - mu) ** 2, weights)


def weighted_mcse(values: np.ndarray, weights: np.ndarray) -> float:
    """Monte Carlo standard error of the weighted mean, $\\hat\\sigma / \\sqrt{\\mathrm{ESS}}$."""
    return math.sqrt(weighted_variance(values, weights) / kish_ess(weights))


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float | np.ndarray) -> np.ndarray:
    """Quantiles of the weighted sample (mid-point rule; Hazen / Hyndman & Fan def. 5 for equal weights).

    Particles of zero weight are ignored. ``q`` in [0, 1]; below the first mid-point the smallest value
    is returned, above the last the largest.
    """
    x = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    keep = w > 0
    x, w = x[keep], w[keep] / w[keep].sum()
    order = np.argsort(x, kind="stable")
    x, w = x[order], w[order]
    mid = np.cumsum(w) - w / 2
    return np.interp(np.asarray(q, dtype=float), mid, x)
