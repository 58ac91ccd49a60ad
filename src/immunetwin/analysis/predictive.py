"""Posterior predictive checks and model comparison.

- :func:`posterior_predictive`: predictive intervals, coverage and a posterior predictive p-value
  (Gelman, Meng & Stern 1996, Stat Sinica 6:733).
- :func:`compare_models`: PSIS-LOO model comparison (Vehtari, Gelman & Gabry 2017, Stat Comput
  27:1413) through ``arviz.compare``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from immunetwin.engines.ode import CohortTrajectory
from immunetwin.engines.xla import jit
from immunetwin.errors import InputError, SolverError
from immunetwin.inference.likelihood import (
    Objective,
    row_log_density,
    to_observation_scale,
)
from immunetwin.inference.problem import Problem

__all__ = [
    "Comparison",
    "PredictiveCheck",
    "compare_models",
    "posterior_predictive",
]


_FAILED = 1e30  # objective value where a solve fails (keeps L-BFGS-B's line search finite)
Classification = Literal["identifiable", "practically non-identifiable", "flat"]
Side = Literal["closed", "bound", "points", "failed"]
#: What a sensitivity analysis measures: a template outcome or observable id, or a function of the
#: cohort trajectory returning one value per patient ``(B,)`` or one per time ``(B, T)``.
Output = str | Callable[[CohortTrajectory], Any]


# -- profile likelihood -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictiveCheck:
    """Posterior predictive check of a problem's data.

    Attributes:
        levels: central interval levels; ``lower``/``upper``: ``(levels, rows)`` interval bounds on
            the data scale; ``median``: ``(rows,)``.
        pit: randomised probability integral transform of each row (NaN where the value is missing).
        coverage: fraction of rows whose PIT lies in the central interval of each level.
        p_value: ``P(D(y_rep, θ) >= D(y, θ))``; ``discrepancy``/``replicated``: ``D`` per draw.
        draws_failed: draws whose solve failed (left out).
    """

    rows: pd.DataFrame
    levels: tuple[float, ...]
    median: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    pit: np.ndarray
    coverage: Mapping[float, float]
    p_value: float
    discrepancy: np.ndarray
    replicated: np.ndarray
    draws_used: int
    draws_failed: int

    def to_frame(self) -> pd.DataFrame:
        """The measurement rows with median, interval bounds per level and PIT."""
        out = self.rows.copy()
        out["median"] = self.median
        for k, lev in enumerate(self.levels):
            out[f"lower_{lev:g}"], out[f"upper_{lev:g}"] = self.lower[k], self.upper[k]
        out["pit"] = self.pit
        return out


def _inverse(x: Any, tcode: Any) -> Any:
    return jnp.where(tcode == 0, x, jnp.where(tcode == 1, jnp.exp(x), 10.0**x))


def _row_codes(problem: Problem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = problem.measurements
    ids = [o.id for o in problem.observables]
    row = np.array([ids.index(str(o)) for o in m.observable], dtype=int)
    tcode = np.array([("lin", "log", "log10").index(o.transformation) for o in problem.observables])[row]
    laplace = np.array([o.distribution == "laplace" for o in problem.observables])[row]
    cens = np.array([("", "left", "right").index(str(c)) for c in m.censoring], dtype=np.int32)
    return tcode, laplace, cens


def _draw_matrix(draws: Any) -> np.ndarray:
    """``(S, dim)`` from an array or from an InferenceData's posterior ``theta`` (chain, draw, parameter)."""
    if not isinstance(draws, az.InferenceData):
        return np.asarray(draws, dtype=float)
    if "posterior" not in draws.groups() or "theta" not in draws.posterior:
        raise InputError(
            "draws: the InferenceData needs a posterior variable 'theta' (chain, draw, parameter)"
        )
    theta = np.asarray(draws.posterior["theta"], dtype=float)
    return theta.reshape(-1, theta.shape[-1]) if theta.ndim == 3 else theta


def posterior_predictive(
    objective: Objective, draws: Any, *, key: Any, levels: Sequence[float] = (0.5, 0.9)
) -> PredictiveCheck:
    """Posterior predictive check (Gelman, Meng & Stern 1996, Stat Sinica 6:733).

    For each draw ``θ_s`` (rows of ``draws``, shape ``(S, dim)``, or the posterior ``theta`` of an
    ``InferenceData`` from :mod:`~immunetwin.inference.posterior`) the observables are simulated and
    one replicate per row drawn from the noise model on the transformed scale,
    ``g(y_rep) = g(h(θ_s)) + σ(θ_s) ε`` with ``ε`` standard normal or Laplace. Per row this gives a
    predictive distribution, its median and central intervals. Calibration is measured by the
    randomised PIT (Czado, Gneiting & Held 2009, Biometrics 65:1254): ``u = F(y)`` for an observed
    value, ``u ~ U(0, F(L))`` for a value left-censored at ``L`` (``U(F(L), 1)`` right-censored), so
    ``u`` is uniform under the true model when rows are censored exactly when their values lie beyond
    their limits; ``coverage[level]`` is the fraction of rows with ``|u - 1/2| <= level/2``. The
    intervals are those of the uncensored predictive distribution. The discrepancy is the deviance
    ``D(y, θ) = -2 Σ_i log p(y_i | θ)`` (the χ² statistic plus a constant for normal noise; censored
    rows enter through the CDF, and replicates are censored at the same limits), and the p-value
    ``P(D(y_rep, θ) >= D(y, θ))`` over the draws.
    """
    theta = _draw_matrix(draws)
    if theta.ndim != 2 or theta.shape[1] != objective.dim or theta.shape[0] < 2:
        raise InputError(f"draws must have shape (S >= 2, {objective.dim}), got {theta.shape}")
    if not all(0.0 < lev < 1.0 for lev in levels):
        raise InputError(f"interval levels must lie in (0, 1), got {tuple(levels)}")
    problem = objective.problem
    m = problem.measurements
    tcode, laplace, cens = _row_codes(problem)
    y = np.asarray(m.value, dtype=float)
    present = np.isfinite(y)
    k_noise, k_pit = jax.random.split(key)
    with jax.enable_x64(True):
        h, sigma, ok = jit(jax.vmap(objective.observables))(jnp.asarray(theta))
        good = np.asarray(jnp.all(ok, axis=1))
        if not good.any():
            raise SolverError(f"every draw fails to solve problem '{problem.name}'")
        h, sigma = h[good], sigma[good]
        z = jnp.where(laplace, jax.random.laplace(k_noise, h.shape), jax.random.normal(k_noise, h.shape))
        g_rep = to_observation_scale(h, tcode) + sigma * z
        y_safe = jnp.where(present, y, 1.0)
        g_obs = to_observation_scale(y_safe, tcode)
        p_below = jnp.mean(g_rep <= g_obs, axis=0)
        u = jax.random.uniform(k_pit, y.shape)
        pit = jnp.where(cens == 1, u * p_below, jnp.where(cens == 2, p_below + u * (1.0 - p_below), p_below))
        y_rep = _inverse(g_rep, tcode)
        cens_rep = jnp.where(
            (cens == 1) & (g_rep <= g_obs), 1, jnp.where((cens == 2) & (g_rep >= g_obs), 2, 0)
        )
        y_rep_c = jnp.where(cens_rep > 0, y_safe, y_rep)
        dev = _deviance(y_safe, h, sigma, tcode, laplace, cens, present)
        dev_rep = _deviance(y_rep_c, h, sigma, tcode, laplace, cens_rep, present)
        qs = [0.5] + [q for lev in levels for q in (0.5 - lev / 2, 0.5 + lev / 2)]
        quant = np.asarray(_inverse(jnp.quantile(g_rep, jnp.asarray(qs), axis=0), tcode))
    pit = np.where(present, np.asarray(pit), np.nan)
    coverage = {float(lev): float(np.mean(np.abs(pit[present] - 0.5) <= lev / 2)) for lev in levels}
    rows = pd.DataFrame({"observable": m.observable, "condition": m.condition, "time": m.time, "value": y,
                         "censoring": m.censoring})  # fmt: skip
    dev, dev_rep = np.asarray(dev), np.asarray(dev_rep)
    return PredictiveCheck(rows, tuple(float(v) for v in levels), quant[0], quant[1::2], quant[2::2], pit, coverage,
                           float(np.mean(dev_rep >= dev)), dev, dev_rep, int(good.sum()), int((~good).sum()))  # fmt: skip


def _deviance(y: Any, h: Any, sigma: Any, tcode: Any, laplace: Any, cens: Any, present: np.ndarray) -> Any:
    ll = row_log_density(y, h, sigma, tcode, laplace, cens)
    return -2.0 * jnp.sum(jnp.where(present, ll, 0.0), axis=-1)


# -- model comparison -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """PSIS-LOO comparison of models.

    Attributes:
        table: ``arviz.compare``'s table (index: model; ``rank``, ``elpd_loo``, ``p_loo``,
            ``elpd_diff``, ``weight`` (stacking), ``se``, ``dse``, ``warning``), best first.
        pareto_k: per model, the Pareto shape ``k`` of each observation.
        k_threshold: ``k`` above which an observation's LOO estimate is unreliable.
        warnings: one line per model with observations above ``k_threshold``.
    """

    table: pd.DataFrame
    pareto_k: Mapping[str, np.ndarray]
    k_threshold: float
    warnings: tuple[str, ...]

    @property
    def best(self) -> str:
        return str(self.table.index[0])

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()


def compare_models(fits: Mapping[str, az.InferenceData], *, var_name: str | None = None) -> Comparison:
    """Compare models by their expected log pointwise predictive density, estimated by PSIS-LOO
    (Vehtari, Gelman & Gabry 2017, Stat Comput 27:1413):

    .. math:: \\widehat{\\text{elpd}}_{\\text{loo}} = \\sum_i \\log
              \\frac{\\sum_s w_i^s\\, p(y_i \\mid \\theta^s)}{\\sum_s w_i^s},

    with Pareto-smoothed importance weights ``w``. Each model needs an ``InferenceData`` with
    ``posterior`` and ``log_likelihood`` groups over the same observations; weights are stacking
    weights (Yao et al. 2018, Bayesian Anal 13:917). An observation whose Pareto ``k`` exceeds
    ``min(1 - 1/log10(S), 0.7)`` (``S`` draws) makes that model's estimate unreliable: the result
    lists them in ``warnings``.
    """
    if len(fits) < 2:
        raise InputError(f"compare_models needs at least two models, got {len(fits)}")
    for name, idata in fits.items():
        for group in ("posterior", "log_likelihood"):
            if group not in idata.groups():
                raise InputError(f"model '{name}': InferenceData has no '{group}' group")
    pareto, notes = {}, []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="arviz")  # its Pareto-k warnings are reported as ours
        for name, idata in fits.items():
            loo = az.loo(idata, pointwise=True, var_name=var_name)
            pareto[name] = np.asarray(loo.pareto_k).reshape(-1)
            draws = idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]
            k_max = min(1.0 - 1.0 / math.log10(draws), 0.7)
            bad = int(np.sum(pareto[name] > k_max))
            if bad:
                notes.append(f"model '{name}': {bad} of {pareto[name].size} observations have Pareto k > "
                             f"{k_max:.2f}; its LOO estimate is unreliable (refit without them or use K-fold)")  # fmt: skip
        table = az.compare(dict(fits), ic="loo", var_name=var_name)
    return Comparison(table, pareto, k_max, tuple(notes))


# -- algorithmic uncertainty ------------------------------------------------------------------------
