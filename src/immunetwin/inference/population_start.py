"""Where NUTS starts a population fit, and with which metric: a Laplace approximation at the mode.

NUTS adapts its step size and mass matrix during warm-up, but it starts with the identity metric.
The posterior of a population model has scales that differ by orders of magnitude (a well-sampled
patient's ``z_ik`` is known to a few hundredths of the sd of a poorly sampled one's, and ``mu`` is
coupled to every ``z_i``), so with the identity NUTS needs a step size set by the narrowest direction
and hits its tree-depth limit on every early warm-up iteration: on a 30-patient ``viral_immune``
cohort, 63 leapfrog steps (each a cohort solve with sensitivities) for the first 60+ iterations.

This module finds the posterior mode in NumPyro's unconstrained coordinates
:math:`u = (\\mu, \\log\\omega, [\\log\\sigma], z)` by Levenberg-Marquardt (Marquardt 1963, J Soc Ind
Appl Math 11:431) with the Gauss-Newton (Fisher) curvature

.. math::

    H(u) = G^\\top W G + H_\\text{prior},\\qquad G_{jl} = \\partial h_j / \\partial u_l,

where :math:`h_j` are the simulated observations (their sensitivities come from the same forward
solve the gradient uses), :math:`W` the Fisher weight of each observation (:math:`1/\\sigma^2`;
for one censored below the limit :math:`L`, :math:`\\lambda(\\lambda + c)/\\sigma^2` with
:math:`c = (L - h)/\\sigma` and :math:`\\lambda = \\varphi(c)/\\Phi(c)`, the curvature of
:math:`-\\log\\Phi(c)`), and :math:`H_\\text{prior}` the exact Hessian of the negative log prior
with its log-Jacobians (computed by JAX: the priors are cheap). :math:`H^{-1}` at the mode is the Laplace approximation of the posterior covariance; NUTS
starts from it as its inverse mass matrix (the Fisher metric of Girolami & Calderhead 2011, J R Stat
Soc B 73:123, held fixed) and the chains start from draws of that approximation, as Stan's Pathfinder
initialises chains from draws of an approximate posterior (Zhang et al. 2022, JMLR 23:1). Warm-up then
refines both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

__all__ = ["LaplaceStart", "Layout", "data_curvature", "empirical_bayes_start", "laplace_start"]


@dataclass(frozen=True)
class Layout:
    """Positions of the sites in the vector ``u`` (NumPyro's unconstrained values).

    ``u = [mu (K), log omega (K), log sigma (0 or 1), patients (P*K, patient-major)]``, where the
    per-patient site is ``z`` (non-centred form) or ``log_theta`` (centred form).
    """

    n_patients: int
    n_random: int
    sigma: bool
    patient_site: str = "z"

    @property
    def size(self) -> int:
        return 2 * self.n_random + int(self.sigma) + self.n_patients * self.n_random

    @property
    def z0(self) -> int:
        return 2 * self.n_random + int(self.sigma)

    def split(self, u: Any) -> dict[str, Any]:
        """``u`` as NumPyro's unconstrained sites (``omega`` and ``sigma`` as logs)."""
        k = self.n_random
        out = {"mu": u[:k], "omega": u[k : 2 * k],
               self.patient_site: u[self.z0 :].reshape(self.n_patients, k)}  # fmt: skip
        if self.sigma:
            out["sigma"] = u[2 * k]
        return out

    def join(self, sites: dict[str, np.ndarray]) -> np.ndarray:
        parts = [np.ravel(sites["mu"]), np.ravel(sites["omega"])]
        if self.sigma:
            parts.append(np.ravel(sites["sigma"]))
        return np.concatenate([*parts, np.ravel(sites[self.patient_site])])

    def sites(self) -> tuple[str, ...]:
        """Site names in the order of ``u`` (the block key of NumPyro's structured mass matrix)."""
        middle = ("sigma",) if self.sigma else ()
        return ("mu", "omega", *middle, self.patient_site)

    def log_theta(self, u: np.ndarray) -> np.ndarray:
        """The patients' log parameter values (P, K) at ``u``."""
        s = self.split(u)
        if self.patient_site == "log_theta":
            return np.asarray(s["log_theta"])
        return np.asarray(s["mu"] + np.exp(s["omega"]) * s["z"])


def _censored_weight(c: np.ndarray) -> np.ndarray:
    """:math:`\\lambda(\\lambda + c)` with :math:`\\lambda = \\varphi(c)/\\Phi(c)`: minus the second
    derivative of :math:`\\log\\Phi(c)` in :math:`c`, in (0, 1)."""
    lam = np.exp(-0.5 * c**2 - 0.5 * math.log(2 * math.pi) - special.log_ndtr(c))
    return np.clip(lam * (lam + c), 0.0, 1.0)


def data_curvature(
    layout: Layout,
    u: np.ndarray,
    h: np.ndarray,
    jac: np.ndarray,
    observed: np.ndarray,
    censored: np.ndarray,
    limit: np.ndarray,
    sigma: float,
) -> np.ndarray:
    """Gauss-Newton curvature :math:`G^\\top W G` of the negative log likelihood (module docstring);
    the priors' curvature is added by the caller.

    Args:
        layout: where each site sits in ``u``.
        u: the point (unconstrained).
        h, jac: simulated observations (P, T) at ``u`` and their sensitivities (P, T, K) to
            :math:`\\log\\theta_i`.
        observed, censored: which entries of (P, T) are measurements and which of those are censored.
        limit: the censoring limit per entry (P, T) (ignored where not censored).
        sigma: the noise sd at ``u``; when it is estimated, its Fisher information (2 per uncensored
            value, in :math:`\\log\\sigma`) is included.
    """
    p, k = layout.n_patients, layout.n_random
    s = layout.split(u)
    weight = np.where(censored, _censored_weight((limit - h) / sigma), 1.0) / sigma**2
    weight = np.where(observed, weight, 0.0)
    hess = np.zeros((layout.size, layout.size))
    for i in range(p):
        rows = jac[i][observed[i]]  # (n_i, K): d h / d log theta_i
        if rows.size == 0:
            continue
        g = np.zeros((rows.shape[0], layout.size))
        patient = slice(layout.z0 + i * k, layout.z0 + (i + 1) * k)
        if layout.patient_site == "z":  # log theta_i = mu + omega * z_i
            omega = np.exp(s["omega"])
            g[:, :k] = rows
            g[:, k : 2 * k] = rows * omega * s["z"][i]
            g[:, patient] = rows * omega
        else:
            g[:, patient] = rows
        hess += g.T @ (weight[i][observed[i]][:, None] * g)
    if layout.sigma:
        hess[2 * k, 2 * k] += 2.0 * float(np.sum(observed & ~censored))
    return hess


@dataclass(frozen=True)
class LaplaceStart:
    """The mode ``u`` (unconstrained, :class:`Layout` order), the Laplace covariance there, the
    Levenberg-Marquardt iterations taken and whether the relative decrease fell below the tolerance."""

    mode: np.ndarray
    covariance: np.ndarray
    iterations: int
    converged: bool


def laplace_start(
    potential: Callable[[np.ndarray], tuple[float, np.ndarray]],
    curvature: Callable[[np.ndarray], np.ndarray],
    u0: np.ndarray,
    *,
    max_iter: int = 40,
    tol: float = 1e-6,
) -> LaplaceStart:
    """Levenberg-Marquardt to the mode of ``potential`` (negative log density, with gradient), then
    the inverse of ``curvature`` there.

    A step that fails to lower the potential (or meets a failed solve: ``inf`` / NaN) is refused and
    the damping raised tenfold; an accepted one lowers it threefold. Converged when the predicted
    decrease ``-g.d / 2`` of a step is below ``tol`` times ``1 + |potential|`` (the step is taken if it
    does not raise the potential); stops otherwise after ``max_iter`` iterations, or when the damping
    exceeds 1e8 (no descent found).
    """
    u = np.asarray(u0, float)
    f, g = potential(u)
    if not np.isfinite(f):
        raise ValueError("the potential is not finite at the starting point")
    damping, converged, iterations = 1e-3, False, 0
    hess = curvature(u)
    while iterations < max_iter:
        iterations += 1
        scale = np.diagonal(hess)
        step = np.linalg.solve(hess + damping * np.diag(scale), -g)
        small = -g @ step / 2 < tol * (1 + abs(f))
        f_new, g_new = potential(u + step)
        if np.isfinite(f_new) and f_new <= f:
            u, f, g = u + step, f_new, g_new
            hess = curvature(u)
            if small:
                converged = True
                break
            damping = max(damping / 3, 1e-9)
        elif small:
            converged = True
            break
        else:
            damping *= 10
            if damping > 1e8:
                break
    hess = 0.5 * (hess + hess.T)
    return LaplaceStart(u, np.linalg.inv(hess), iterations, converged)


def empirical_bayes_start(
    potential: Callable[[np.ndarray], tuple[float, np.ndarray]],
    curvature: Callable[[np.ndarray], np.ndarray],
    layout: Layout,
    u0: np.ndarray,
    *,
    rounds: int = 3,
    omega_floor: float = 0.05,
) -> LaplaceStart:
    """A start for the centred form, whose joint mode is degenerate (:math:`\\omega \\to 0`, every
    :math:`\\log\\theta_i = \\mu`: the neck of the funnel, where the density grows without bound).

    Alternates, ``rounds`` times, the patients' modes given the population (Levenberg-Marquardt over
    the ``log_theta`` block with ``mu``, ``omega`` and ``sigma`` held) with the population's moment
    estimates from those modes (``mu`` their mean, ``omega`` their sd, at least ``omega_floor``): the
    empirical-Bayes iteration of the two-stage approach to mixed-effects models (Steimer et al. 1984,
    Drug Metab Rev 15:265). The covariance is the inverse of the full curvature there (the block
    diagonal of the patients' blocks and the priors' diagonal if that is not positive definite).
    """
    if layout.patient_site != "log_theta":
        raise ValueError("empirical_bayes_start is for the centred form (patient site 'log_theta')")
    k, block = layout.n_random, slice(layout.z0, layout.size)
    u = np.asarray(u0, float).copy()
    iterations, converged = 0, True
    for _ in range(rounds):
        fixed = u.copy()

        def sub_potential(x: np.ndarray, fixed: np.ndarray = fixed) -> tuple[float, np.ndarray]:
            full = fixed.copy()
            full[block] = x
            f, g = potential(full)
            return f, g[block]

        def sub_curvature(x: np.ndarray, fixed: np.ndarray = fixed) -> np.ndarray:
            full = fixed.copy()
            full[block] = x
            return curvature(full)[block, block]

        inner = laplace_start(sub_potential, sub_curvature, u[block])
        iterations += inner.iterations
        converged = inner.converged
        u[block] = inner.mode
        log_theta = inner.mode.reshape(layout.n_patients, k)
        u[:k] = log_theta.mean(axis=0)
        u[k : 2 * k] = np.log(np.maximum(log_theta.std(axis=0), omega_floor))
    hess = curvature(u)
    hess = 0.5 * (hess + hess.T)
    try:
        np.linalg.cholesky(hess)
    except np.linalg.LinAlgError:
        diag = np.diag(np.diagonal(hess))
        diag[block, block] = hess[block, block]
        hess = diag
    return LaplaceStart(u, np.linalg.inv(hess), iterations, converged)
