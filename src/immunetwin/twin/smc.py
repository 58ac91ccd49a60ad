"""Sequential Monte Carlo steps shared by the lifecycle verbs: target, importance weights, resampling,
Metropolis-Hastings rejuvenation.

The target is the posterior given every measurement a twin has seen,
:math:`\\pi(\\theta) \\propto p(\\theta) \\prod_k p(y_k \\mid \\theta)`, evaluated for all particles at
once from the twin's origin (:class:`Target`). The steps are those of a resample-move particle filter
(Gilks & Berzuini 2001, JRSS B 63:127; Chopin 2002, Biometrika 89:539; Del Moral, Doucet & Jasra
2006, JRSS B 68:411; Chopin & Papaspiliopoulos 2020, *An Introduction to Sequential Monte Carlo*,
chapters 9 and 17):

* **importance weights** :math:`\\log w_i = \\log \\pi(\\theta_i) - \\log q(\\theta_i)`, Pareto-smoothed
  (PSIS; Vehtari, Simpson, Gelman, Yao & Gabry 2024, JMLR 25:72, via ``arviz.psislw``), whose shape
  estimate :math:`\\hat k` says whether the estimate can be trusted (:math:`\\hat k < 0.7`);
* **systematic resampling**: :math:`N` points :math:`(u + i)/N`, :math:`u \\sim U(0, 1)`, through the
  inverse weight CDF (Chopin & Papaspiliopoulos 2020, section 9.6);
* **rejuvenation**: random-walk Metropolis moves of every particle at once,
  :math:`\\theta' = \\theta + L z`, :math:`L L^\\top = \\tfrac{2.38^2}{d}\\,\\hat\\Sigma` with
  :math:`\\hat\\Sigma` the particles' covariance (Roberts, Gelman & Gilks 1997, Ann Appl Probab 7:110),
  accepted with probability :math:`\\min(1, \\pi(\\theta')/\\pi(\\theta))`; they leave :math:`\\pi`
  invariant and restore the diversity that resampling removes.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np

from immunetwin.engines.integrate import Controls
from immunetwin.engines.xla import jit
from immunetwin.inference.likelihood import compile_objective
from immunetwin.inference.problem import Problem
from immunetwin.templates import Template
from immunetwin.twin.observations import Observations
from immunetwin.twin.particles import natural, observed, row_log_densities, simulate_particles

__all__ = ["Evaluated", "Target", "importance_weights", "rejuvenate", "resample_move", "systematic_resample"]


@dataclass(frozen=True, eq=False)
class Evaluated:
    """Particles with their log prior, log likelihood and state at the reference time."""

    theta: np.ndarray
    log_prior: np.ndarray
    log_likelihood: np.ndarray
    states: np.ndarray

    def take(self, index: np.ndarray) -> Evaluated:
        return Evaluated(
            self.theta[index], self.log_prior[index], self.log_likelihood[index], self.states[index]
        )

    def log_target(self, temperature: float = 1.0) -> np.ndarray:
        """``log p(theta) + temperature * log p(y | theta)`` (``-inf`` where either is)."""
        ll = np.where(np.isfinite(self.log_likelihood), self.log_likelihood, -np.inf)
        return self.log_prior + (temperature * ll if temperature > 0 else 0.0)


@dataclass(frozen=True, eq=False)
class Target:
    """The posterior of ``problem``'s parameters given ``observations`` (every particle at once).

    Attributes:
        template: the model and its observables.
        problem: scales, bounds and priors of the personalised parameters
            (:func:`immunetwin.inference.patient_problem`).
        observations: every measurement seen.
        reference_time: where each particle's state is kept.
        controls: solver tolerances.
    """

    template: Template
    problem: Problem
    observations: Observations
    reference_time: float
    controls: Controls

    @functools.cached_property
    def _prior(self) -> Any:
        return jit(jax.vmap(compile_objective(self.problem).log_prior))

    def log_prior(self, theta: np.ndarray) -> np.ndarray:
        """Log prior density of each particle (``-inf`` outside the bounds), (N,)."""
        with jax.enable_x64(True):
            out = np.asarray(self._prior(jnp.asarray(theta, dtype=jnp.float64)), dtype=float)
        return np.where(np.isnan(out), -np.inf, out)

    def evaluate(self, theta: np.ndarray) -> Evaluated:
        """Simulate every particle from the origin over all measurements (see the module docstring)."""
        ids, scales = self.problem.free_ids, tuple(p.scale for p in self.problem.free)
        obs = self.observations
        times = np.unique(np.concatenate([obs.time, [self.reference_time]]))
        out = simulate_particles(
            self.template, natural(theta, ids, scales), times, start=0.0, states=None, controls=self.controls
        )
        h = observed(self.template, out, obs)
        log_lik = row_log_densities(self.template, h, obs, out.ok).sum(axis=1)
        return Evaluated(
            np.asarray(theta, float), self.log_prior(theta), log_lik, out.states_at(self.reference_time)
        )


def importance_weights(log_target: np.ndarray, log_proposal: np.ndarray) -> tuple[np.ndarray, float]:
    """PSIS-smoothed normalised log weights and the Pareto shape estimate ``k``.

    Draws with a zero target density keep weight zero and are left out of the smoothing.
    """
    raw = np.asarray(log_target, float) - np.asarray(log_proposal, float)
    finite = np.isfinite(raw)
    out = np.full(raw.shape, -np.inf)
    if finite.sum() < 2:
        out[finite] = 0.0
        return out, float("inf")
    with warnings.catch_warnings():  # ArviZ warns on large k; the twin reports k itself
        warnings.simplefilter("ignore")
        smoothed, k = az.psislw(raw[finite])
    out[finite] = np.asarray(smoothed, dtype=float)
    return out, float(np.asarray(k))


def systematic_resample(key: Any, weights: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` particles drawn by systematic resampling from normalised ``weights``."""
    with jax.enable_x64(True):
        u = float(jax.random.uniform(key, dtype=jnp.float64))
    cdf = np.cumsum(np.asarray(weights, dtype=float))
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, (u + np.arange(n)) / n), len(cdf) - 1)


def _proposal_factor(cov: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Cholesky factor of ``2.38^2/d * cov``, regularised so that no direction is degenerate."""
    d = len(cov)
    floor = (1e-6 * (upper - lower)) ** 2
    cov = 0.5 * (cov + cov.T) + np.diag(floor)
    vals, vecs = np.linalg.eigh(cov)
    vals = np.maximum(vals, floor.min())
    return vecs * np.sqrt(vals * 2.38**2 / d)


def rejuvenate(
    key: Any, target: Target, particles: Evaluated, cov: np.ndarray, moves: int, temperature: float = 1.0
) -> tuple[Evaluated, float]:
    """``moves`` random-walk Metropolis sweeps over every particle (see the module docstring), leaving
    the tempered posterior ``p(theta) p(y | theta)^temperature`` invariant.

    Returns:
        The moved particles and the acceptance rate over all proposals.
    """
    factor = _proposal_factor(cov, target.problem.lower, target.problem.upper)
    n, d = particles.theta.shape
    current, accepted = particles, 0
    for step in range(moves):
        k_step, k_u = jax.random.split(jax.random.fold_in(key, step))
        with jax.enable_x64(True):
            z = np.asarray(jax.random.normal(k_step, (n, d), dtype=jnp.float64))
            log_u = np.log(np.asarray(jax.random.uniform(k_u, (n,), dtype=jnp.float64)))
        proposal = current.theta + z @ factor.T
        inside = np.isfinite(target.log_prior(proposal))
        candidate = target.evaluate(np.where(inside[:, None], proposal, current.theta))
        log_ratio = np.where(
            inside, candidate.log_target(temperature) - current.log_target(temperature), -np.inf
        )
        accept = log_u < np.nan_to_num(log_ratio, nan=-np.inf)
        accepted += int(accept.sum())
        current = Evaluated(
            np.where(accept[:, None], candidate.theta, current.theta),
            np.where(accept, candidate.log_prior, current.log_prior),
            np.where(accept, candidate.log_likelihood, current.log_likelihood),
            np.where(accept[:, None], candidate.states, current.states),
        )
    return current, accepted / max(1, n * moves)


def resample_move(
    k_res: Any,
    k_move: Any,
    target: Target,
    particles: Evaluated,
    w: np.ndarray,
    n: int,
    moves: int,
    temperature: float = 1.0,
) -> tuple[Evaluated, float]:
    """Systematic resampling to ``n`` particles and ``moves`` Metropolis sweeps (random-walk scale
    from the weighted particles' covariance)."""
    centred = particles.theta - w @ particles.theta
    cov = (centred * w[:, None]).T @ centred
    resampled = particles.take(systematic_resample(k_res, w, n))
    if moves == 0:
        return resampled, float("nan")
    return rejuvenate(k_move, target, resampled, cov, moves, temperature)
