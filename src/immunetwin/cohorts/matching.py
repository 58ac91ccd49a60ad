"""Matching a virtual population to an observed distribution: prevalence selection (Allen et al. 2016).

Allen, Rieger & Musante 2016, *Efficient generation and selection of virtual populations in
quantitative systems pharmacology models*, CPT Pharmacometrics Syst Pharmacol 5:140-146. Plausible
patients (parameters in range, outputs within physiological bounds) are generated first; each is then
*selected* into the virtual population with probability

.. math::  p_i = \\min\\{1,\\ \\beta\\,\\rho_{\\mathrm{target}}(x_i) / \\rho_{\\mathrm{plausible}}(x_i)\\}

where :math:`x_i` are the patient's observables, :math:`\\rho_{\\mathrm{target}}` the density of the
observed (target) distribution and :math:`\\rho_{\\mathrm{plausible}}` the density of the plausible
population, estimated by a Gaussian kernel density (section "Selection of virtual populations" of the
paper). :math:`\\beta` trades size for fit: as it grows more patients are selected but more
probabilities are capped at 1, distorting the distribution. As in the paper, :math:`\\beta` is chosen to
maximise the goodness of fit - here the mean Kolmogorov-Smirnov p-value of the marginals against the
target - among the values that select at least the requested number of patients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from immunetwin.errors import InputError

__all__ = ["MatchResult", "NormalTarget", "SampleTarget", "prevalence_select"]

#: Most plausible patients the kernel density is fitted to (a deterministic subsample beyond that).
KDE_POINTS = 5000
#: Smallest KS p-value of a selection called adequate (:attr:`MatchResult.adequate`).
ADEQUATE_P = 0.05


@dataclass(frozen=True)
class NormalTarget:
    """A (multivariate) normal target: ``names`` of the quantities, their ``mean`` and ``sd``, and an
    optional correlation matrix ``corr`` (identity by default)."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    sd: tuple[float, ...]
    corr: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        for name in ("names", "mean", "sd"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        k = len(self.names)
        if k == 0 or len(self.mean) != k or len(self.sd) != k:
            raise InputError("a normal target needs one mean and one sd per quantity")
        if not all(np.isfinite(self.mean)) or not all(s > 0 and np.isfinite(s) for s in self.sd):
            raise InputError(f"target means must be finite and sds positive, got {self.mean}, {self.sd}")
        corr = np.eye(k) if self.corr is None else np.asarray(self.corr, float)
        if corr.shape != (k, k) or not np.allclose(corr, corr.T) or np.any(np.linalg.eigvalsh(corr) <= 0):
            raise InputError("target correlation must be a symmetric positive-definite k x k matrix")

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        corr = np.eye(len(self.names)) if self.corr is None else np.asarray(self.corr, float)
        cov = corr * np.outer(self.sd, self.sd)
        return np.atleast_1d(stats.multivariate_normal(np.asarray(self.mean), cov).logpdf(x))

    def ks_pvalue(self, j: int, x: np.ndarray) -> float:
        return float(stats.kstest(x, stats.norm(self.mean[j], self.sd[j]).cdf).pvalue)


@dataclass(frozen=True)
class SampleTarget:
    """A target given by observed values, ``samples`` (m, k), one column per name (kernel density)."""

    names: tuple[str, ...]
    samples: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        s = np.asarray(self.samples, float).reshape(len(np.asarray(self.samples)), -1)
        if s.shape[1] != len(self.names) or s.shape[0] < 5:
            raise InputError(f"target samples must be (m >= 5, {len(self.names)}), got {s.shape}")
        if not np.isfinite(s).all():
            raise InputError("target samples contain NaN or infinite values")
        object.__setattr__(self, "samples", s)

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        return stats.gaussian_kde(self.samples.T).logpdf(x.T)

    def ks_pvalue(self, j: int, x: np.ndarray) -> float:
        return float(stats.ks_2samp(x, self.samples[:, j]).pvalue)


Target = NormalTarget | SampleTarget


@dataclass(frozen=True)
class MatchResult:
    """The selection: indices into the plausible pool, ``beta``, acceptance rate and fit."""

    selected: np.ndarray = field(repr=False)
    beta: float
    pool: int
    acceptance_rate: float
    ks_pvalues: Mapping[str, float]

    @property
    def adequate(self) -> bool:
        """Whether no matched quantity's KS test rejects the target at the 5 % level."""
        return min(self.ks_pvalues.values()) >= ADEQUATE_P


def _plausible_logpdf(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    fit = values if len(values) <= KDE_POINTS else values[rng.choice(len(values), KDE_POINTS, replace=False)]
    try:
        return stats.gaussian_kde(fit.T).logpdf(values.T)
    except np.linalg.LinAlgError:
        raise InputError(
            "the plausible population has no spread in a matched quantity (singular density)"
        ) from None


def prevalence_select(
    values: np.ndarray,
    target: Target,
    rng: np.random.Generator,
    *,
    minimum: int,
    grid: int = 60,
) -> MatchResult:
    """Select from plausible patients ``values`` (N, k) so their distribution matches ``target``.

    Args:
        values: the matched quantities of each plausible patient, columns in ``target.names`` order.
        target: the observed distribution.
        rng: random numbers for the subsample of the density fit and the acceptance draws.
        minimum: the fewest patients to select; the largest-fit ``beta`` meeting it wins.
        grid: number of ``beta`` values tried (log-spaced).

    Raises:
        InputError: non-finite values, or no ``beta`` selects ``minimum`` patients (a larger plausible
            pool is needed; the message gives the most that could be selected).
    """
    x = np.asarray(values, float).reshape(len(values), -1)
    if x.shape[1] != len(target.names):
        raise InputError(f"matching needs {len(target.names)} quantities per patient, got {x.shape[1]}")
    if not np.isfinite(x).all():
        raise InputError(
            "matched quantities contain NaN or infinite values (failed or implausible patients?)"
        )
    log_ratio = target.logpdf(x) - _plausible_logpdf(x, rng)
    u = rng.random(len(x))
    top = float(np.max(log_ratio))
    best: tuple[float, float, np.ndarray] | None = None
    most = 0
    # beta from "no probability capped" (beta = 1 / max ratio) up to capping the upper 90 % of ratios
    low, high = -top, -float(np.quantile(log_ratio, 0.1))
    for log_beta in np.linspace(low, max(high, low), grid):
        p = np.exp(np.minimum(log_beta + log_ratio, 0.0))
        chosen = np.flatnonzero(u < p)
        most = max(most, len(chosen))
        if len(chosen) < max(minimum, 5):
            continue
        fit = float(np.mean([target.ks_pvalue(j, x[chosen, j]) for j in range(x.shape[1])]))
        if best is None or fit >= best[1]:
            best = (float(np.exp(log_beta)), fit, chosen)
    if best is None:
        raise InputError(f"prevalence selection found at most {most} of the {minimum} patients needed in a "
                         f"plausible pool of {len(x)}: enlarge the pool")  # fmt: skip
    beta, _, chosen = best
    pvals = {n: target.ks_pvalue(j, x[chosen, j]) for j, n in enumerate(target.names)}
    return MatchResult(chosen, beta, len(x), len(chosen) / len(x), pvals)
