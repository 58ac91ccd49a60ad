"""Personalisation by adaptive likelihood tempering: an SMC sampler from the prior to the posterior.

The particles start as :math:`N` draws from the prior (truncated to the parameter bounds) and move
through the tempered posteriors

.. math::

    \\pi_\\phi(\\theta) \\propto p(\\theta)\\, p(y \\mid \\theta)^{\\phi}, \\qquad
    0 = \\phi_0 < \\phi_1 < \\dots < \\phi_T = 1

(Neal 2001, Stat Comput 11:125; Del Moral, Doucet & Jasra 2006, JRSS B 68:411). Each step chooses
:math:`\\phi_{t+1}` by bisection so that the effective sample size of the incremental weights
:math:`w_i \\propto p(y \\mid \\theta_i)^{\\phi_{t+1} - \\phi_t}` is ``ess_fraction`` :math:`\\times N`
(Jasra, Stephens, Doucet & Tsagaris 2011, Scand J Stat 38:1; Chopin & Papaspiliopoulos 2020,
*An Introduction to Sequential Monte Carlo*, section 17.2.3), then resamples and moves every particle
with random-walk Metropolis sweeps that leave :math:`\\pi_{\\phi_{t+1}}` invariant
(:func:`immunetwin.twin.smc.rejuvenate`). The product of the mean incremental weights estimates the
marginal likelihood :math:`p(y)` (kept as ``log_evidence``).

Unlike a gradient-based MAP, nothing is compiled per data set: every step is one batched simulation
of all particles with the engine's compiled solver.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats
from scipy.special import logsumexp

from immunetwin.errors import InputError
from immunetwin.inference.problem import Parameter, Problem, from_scale, to_scale
from immunetwin.twin.smc import Evaluated, Target, resample_move

__all__ = ["next_temperature", "sample_prior", "tempered_particles"]


def _prior_variable(p: Parameter, lo_theta: float, hi_theta: float) -> tuple[Any, float, float, str]:
    """The prior as a scipy distribution of a variable ``y`` (``theta``, ``x`` or ``ln x``), the
    bounds of ``y`` and which variable it is."""
    kind, (a, b) = (p.prior.kind, p.prior.params) if p.prior is not None else ("parameterScaleUniform", (lo_theta, hi_theta))  # fmt: skip
    family = {"uniform": "uniform", "normal": "normal", "laplace": "laplace", "logNormal": "normal", "logLaplace": "laplace"}  # fmt: skip
    if kind.startswith("parameterScale"):
        var, name = "theta", kind[len("parameterScale") :].lower()
        lo, hi = lo_theta, hi_theta
    else:
        var = "lnx" if kind.startswith("log") else "x"
        name = family[kind]
        lo, hi = p.lower, p.upper
        if var == "lnx":
            lo, hi = math.log(lo) if lo > 0 else -math.inf, math.log(hi)
    dist = (
        stats.uniform(a, b - a)
        if name == "uniform"
        else (stats.norm(a, b) if name == "normal" else stats.laplace(a, b))
    )
    return dist, lo, hi, var


def sample_prior(problem: Problem, key: Any, n: int) -> np.ndarray:
    """``n`` draws (n, d) of the prior of ``problem``'s free parameters, on their scales, truncated to
    the bounds (inverse-CDF sampling from uniform draws of ``key``)."""
    with jax.enable_x64(True):
        u = np.asarray(jax.random.uniform(key, (n, len(problem.free)), dtype=jnp.float64))
    out = np.empty_like(u)
    for j, p in enumerate(problem.free):
        dist, lo, hi, var = _prior_variable(p, problem.lower[j], problem.upper[j])
        c_lo, c_hi = dist.cdf(lo), dist.cdf(hi)
        y = dist.ppf(c_lo + u[:, j] * (c_hi - c_lo))
        x = y if var == "x" else (np.exp(y) if var == "lnx" else from_scale(y, p.scale))
        out[:, j] = np.clip(to_scale(x, p.scale), problem.lower[j], problem.upper[j])
    return out


def next_temperature(log_likelihood: np.ndarray, phi: float, ess_fraction: float) -> float:
    """The largest ``phi' <= 1`` whose incremental weights keep an ESS of ``ess_fraction * N``."""
    ll = np.where(np.isfinite(log_likelihood), log_likelihood, -np.inf)

    def ess(delta: float) -> float:
        lw = delta * ll
        lw = np.where(np.isnan(lw), -np.inf, lw)
        return float(np.exp(2 * logsumexp(lw) - logsumexp(2 * lw)))

    goal = ess_fraction * np.sum(np.isfinite(ll))
    if ess(1.0 - phi) >= goal:
        return 1.0
    lo, hi = 0.0, 1.0 - phi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ess(mid) >= goal else (lo, mid)
    return phi + max(lo, 1e-12)


def tempered_particles(
    key: Any, target: Target, n: int, *, ess_fraction: float, moves: int, max_stages: int
) -> tuple[Evaluated, dict[str, Any]]:
    """Equally weighted particles of the posterior and the run's diagnostics (module docstring)."""
    k_prior, k_run = jax.random.split(key)
    current = target.evaluate(sample_prior(target.problem, k_prior, n))
    failed_at_prior = int(np.sum(~np.isfinite(current.log_likelihood)))
    if failed_at_prior == n:
        raise InputError(
            f"every one of {n} prior draws has zero likelihood (failed solves, or data far from the model)"
        )
    phi, stage, log_evidence, acceptance, min_ess = 0.0, 0, 0.0, [], float(n)
    while phi < 1.0:
        if stage == max_stages:
            raise InputError(
                f"tempering reached only phi = {phi:.3g} in {max_stages} stages; raise max_stages"
            )
        new_phi = next_temperature(current.log_likelihood, phi, ess_fraction)
        ll = np.where(np.isfinite(current.log_likelihood), current.log_likelihood, -np.inf)
        lw = (new_phi - phi) * ll
        log_mean = float(logsumexp(lw) - math.log(n))
        log_evidence += log_mean
        w = np.exp(lw - logsumexp(lw))
        min_ess = min(min_ess, float(1.0 / np.sum(w**2)))
        k_res, k_move = jax.random.split(jax.random.fold_in(k_run, stage))
        current, acc = resample_move(k_res, k_move, target, current, w, n, moves, new_phi)
        acceptance.append(acc)
        phi, stage = new_phi, stage + 1
    diagnostics = {
        "stages": stage, "acceptance": float(np.mean(acceptance)), "final_acceptance": float(acceptance[-1]),
        "min_stage_ess": min_ess, "log_evidence": log_evidence, "moves": moves,
        "failed_solves_at_prior": failed_at_prior, "unique_particles": len(np.unique(current.theta, axis=0)),
    }  # fmt: skip
    return current, diagnostics
