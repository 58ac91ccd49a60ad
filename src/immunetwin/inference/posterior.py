"""Bayesian posteriors of a calibration problem: NUTS draws (NumPyro), random-walk Metropolis draws
and a Laplace approximation.

``sample_posterior`` draws from ``p(theta | y) ∝ p(y | theta) p(theta)`` with the No-U-Turn sampler
(Hoffman & Gelman 2014, JMLR 15:1593; NumPyro's implementation, Phan et al. 2019, arXiv:1912.11554).
The bounded ``theta`` (on the parameter scales) is sampled through an unconstrained ``u``:

.. math::

    \\theta = l + (h - l)\\,\\sigma(u), \\qquad
    \\log p(u \\mid y) = \\log p(\\theta(u) \\mid y) + \\sum_i \\big[\\log(h_i - l_i)
        + \\log \\sigma(u_i) + \\log \\sigma(-u_i)\\big],

with ``l, h`` the problem's bounds and ``σ`` the logistic function. Gradients are the objective's
forward sensitivities (:meth:`~immunetwin.inference.likelihood.Objective.differentiable`: ``jax.jacfwd``
through the XLA engine, or the native backend's sensitivity equations).

``sample_posterior(sampler="metropolis")`` draws from the same posterior, on ``theta`` itself (the
bounds rejected), with adaptive random-walk Metropolis: many chains in lockstep, one batched solve per
iteration, the proposal learnt across chains in warm-up and then fixed
(:mod:`immunetwin.inference.metropolis`).

Convergence is judged as Vehtari et al. (2021, Bayesian Analysis 16:667, Section 4) recommend: the
rank-normalised split R-hat of every parameter at most 1.01, bulk and tail effective sample sizes of
at least 400, and no divergent transitions after warm-up. A run that misses any of these is returned
(with ``converged=False`` and plain-language ``warnings``) and a :class:`ConvergenceWarning` is emitted.

``laplace`` approximates the posterior by a Gaussian at the MAP on the parameter scales,
``N(theta_map, (-∇²log p(theta_map | y))^{-1})`` (Tierney & Kadane 1986, JASA 81:82), with the
Hessian by forward-over-forward differentiation (on the native backend: central differences of the
sensitivity gradients). Both return an ArviZ ``InferenceData`` of the same
layout: ``posterior`` (``theta`` on the parameter scales and ``value`` linear, dims ``chain, draw,
parameter``), ``log_likelihood`` (``y``: the log density of each measurement row, so ``az.loo``
works) and ``observed_data``; NUTS adds ``sample_stats`` (``diverging``, ``lp``, ``energy``, ...),
Metropolis ``lp`` (the log posterior of ``theta``) and ``acceptance_rate``.
"""

from __future__ import annotations

import math
import warnings as _warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr
from numpyro.infer import NUTS

from immunetwin.engines.xla import jit
from immunetwin.errors import InputError
from immunetwin.inference.chains import ChainMethod, CompiledInitNUTS, check_chain_method, run_chains
from immunetwin.inference.likelihood import (
    Objective,
    forward_value_and_grad,
    row_log_density,
)
from immunetwin.inference.metropolis import metropolis
from immunetwin.inference.problem import Problem, from_scale
from immunetwin.runtime import available_cores

__all__ = ["ConvergenceWarning", "LaplaceFit", "PosteriorFit", "laplace", "sample_posterior"]

Sampler = Literal["nuts", "metropolis"]
SAMPLERS: tuple[str, ...] = ("nuts", "metropolis")

#: Per sampler: default chains, draws per chain, target acceptance.
_DEFAULTS: dict[str, tuple[int, int, float]] = {"nuts": (4, 1000, 0.8), "metropolis": (16, 4000, 0.234)}

#: Vehtari et al. (2021), Section 4: largest acceptable R-hat and smallest bulk/tail ESS.
RHAT_MAX = 1.01
ESS_MIN = 400.0

#: Smallest eigenvalue of the negative Hessian, relative to the largest, still taken as positive.
_SINGULAR = 1e-12

_EXTRA_FIELDS = (
    "diverging",
    "potential_energy",
    "energy",
    "num_steps",
    "accept_prob",
    "adapt_state.step_size",
)


class ConvergenceWarning(UserWarning):
    """Posterior draws (or a Laplace approximation) that should not be trusted as they are."""


@dataclass(frozen=True, eq=False)
class _Draws:
    idata: az.InferenceData

    @property
    def theta_draws(self) -> np.ndarray:
        """All draws of ``theta`` on the parameter scales, chains concatenated: ``(n, dim)``."""
        th = self.idata.posterior["theta"].values
        return th.reshape(-1, th.shape[-1])

    def to_netcdf(self, path: str | Path) -> Path:
        """Write the ``InferenceData`` (every group) to a NetCDF-4 file; read with ``az.from_netcdf``."""
        self.idata.to_netcdf(str(path))
        return Path(path)


@dataclass(frozen=True, eq=False)
class PosteriorFit(_Draws):
    """Posterior draws (NUTS or Metropolis) and their diagnostics.

    Attributes:
        idata: the draws (see the module docstring for the groups).
        rhat, ess_bulk, ess_tail: rank-normalised split R-hat and bulk/tail ESS of ``theta`` by id.
        divergences: divergent transitions after warm-up (NUTS; always 0 for Metropolis).
        converged: every R-hat <= 1.01, every bulk and tail ESS >= 400, no divergences.
        warnings: plain-language reasons why the run is not converged (empty when it is).
    """

    rhat: Mapping[str, float]
    ess_bulk: Mapping[str, float]
    ess_tail: Mapping[str, float]
    divergences: int
    converged: bool
    warnings: tuple[str, ...]

    def summary(self) -> pd.DataFrame:
        """ArviZ summary (mean, sd, HDI, MCSE, ESS, R-hat) of ``theta`` and ``value``."""
        return az.summary(self.idata, var_names=["theta", "value"])


@dataclass(frozen=True, eq=False)
class LaplaceFit(_Draws):
    """A Gaussian approximation at the MAP, ``N(mean, covariance)`` on the parameter scales.

    Attributes:
        idata: ``draws`` independent draws as one chain (same layout as :class:`PosteriorFit`).
        mean: ``theta_map``; ``covariance`` the inverse negative Hessian of the log posterior there.
        sd: posterior sd of ``theta`` by id.
        log_posterior: the log posterior at ``mean``.
        warnings: plain-language caveats (``mean`` not at a stationary point, draws out of bounds).
    """

    mean: np.ndarray
    covariance: np.ndarray
    sd: Mapping[str, float]
    log_posterior: float
    warnings: tuple[str, ...]

    def summary(self) -> pd.DataFrame:
        """ArviZ summary statistics (mean, sd, HDI) of ``theta`` and ``value``."""
        return az.summary(self.idata, var_names=["theta", "value"], kind="stats")


# -- the sampling space -----------------------------------------------------------------------------


def _theta_of(u: Any, lo: np.ndarray, width: np.ndarray) -> Any:
    return lo + width * jax.nn.sigmoid(u)


def _potential(objective: Objective) -> Any:
    """``u -> -log p(u | y)`` (NumPyro's potential energy), differentiable by forward sensitivities."""
    lo, width = objective.problem.lower, objective.problem.upper - objective.problem.lower
    log_post = objective.differentiable(prior=True)
    log_width = np.log(width)

    def potential(u: Any) -> Any:
        log_jac = jnp.sum(log_width + jax.nn.log_sigmoid(u) + jax.nn.log_sigmoid(-u))
        value = -(log_post(_theta_of(u, lo, width)) + log_jac)
        return jnp.where(jnp.isnan(value), jnp.inf, value)

    return potential


def _start(problem: Problem, init: Any) -> np.ndarray:
    """Starting ``theta`` (dim,) or (chains, dim): ``init`` (array on the scales, or linear values
    by id), else the nominal point with the midpoint of the bounds where it is not finite."""
    lo, hi = problem.lower, problem.upper
    if init is None:
        nominal = problem.nominal
        return np.where(np.isfinite(nominal), nominal, 0.5 * (lo + hi))
    theta = problem.theta(init) if isinstance(init, Mapping) else np.asarray(init, dtype=float)
    if theta.shape[-1:] != (len(lo),) or theta.ndim > 2:
        raise InputError(f"init must have shape ({len(lo)},) or (chains, {len(lo)}), got {theta.shape}")
    outside = ~np.all((theta >= lo) & (theta <= hi) & np.isfinite(theta), axis=tuple(range(theta.ndim - 1)))
    if outside.any():
        pid = problem.free_ids[int(np.flatnonzero(outside)[0])]
        raise InputError(f"init of parameter '{pid}' lies outside its bounds (or is not finite)")
    return theta


def _initial_u(problem: Problem, init: Any, key: Any, chains: int, jitter: float) -> np.ndarray:
    """(chains, dim) starting points in ``u``: ``init`` mapped to ``u`` plus ``U(-jitter, jitter)``
    (per-chain inits of shape (chains, dim) are used as they are)."""
    theta = _start(problem, init)
    lo, width = problem.lower, problem.upper - problem.lower
    frac = np.clip((theta - lo) / width, 1e-6, 1 - 1e-6)
    u = np.log(frac) - np.log1p(-frac)
    if theta.ndim == 2:
        if theta.shape[0] != chains:
            raise InputError(f"init has {theta.shape[0]} rows for {chains} chains")
        return u
    noise = np.asarray(jax.random.uniform(key, (chains, len(lo)), minval=-jitter, maxval=jitter))
    return u[None, :] + noise


def _laplace_metric(
    objective: Objective, init: Any, key: Any, chains: int, metric: str = "laplace"
) -> tuple[np.ndarray, np.ndarray]:
    r"""(chains, dim) starts drawn from the Laplace Gaussian in ``u`` at ``init`` and its covariance.

    With ``theta = l + w σ(u)``, ``J = w σ(1-σ)`` and ``K = w σ(1-σ)(1-2σ)`` (element-wise), the
    Hessian of the potential ``U(u) = -log p(theta(u) | y) - Σ[log w + log σ(u) + log σ(-u)]`` is

    .. math::

        \nabla^2_u U = -\big(J H J + \mathrm{diag}(g \odot K)\big) + 2\,\mathrm{diag}(σ(1-σ)),

    with ``g, H`` the gradient and Hessian of the log posterior in ``theta`` (forward-over-forward).
    """
    problem = objective.problem
    theta = _start(problem, init)
    if theta.ndim != 1:
        raise InputError(f"metric='{metric}' needs init to be one point (the MAP), not one start per chain")
    lo, width = problem.lower, problem.upper - problem.lower
    frac = np.clip((theta - lo) / width, 1e-6, 1 - 1e-6)
    u = np.log(frac) - np.log1p(-frac)
    value, g, h = _value_grad_hessian(objective, theta)
    sig = frac * (1.0 - frac)
    jac, curv = width * sig, width * sig * (1.0 - 2.0 * frac)
    hess_u = -(jac[:, None] * h * jac[None, :] + np.diag(g * curv)) + np.diag(2.0 * sig)
    what = f"the Hessian of the potential at init (metric='{metric}')"
    why = "init is not the MAP (metric='adapt' needs none)"
    cov, root = _gaussian(problem, value, 0.5 * (hess_u + hess_u.T), what, why)
    with jax.enable_x64(True):
        z = np.asarray(jax.random.normal(key, (chains, len(u)), dtype=jnp.float64))
    return u[None, :] + z @ root.T, cov


def _gaussian(
    problem: Problem, value: float, precision: np.ndarray, what: str, why: str
) -> tuple[np.ndarray, np.ndarray]:
    """Covariance ``precision^{-1}`` and a square root ``R`` of it (``R R^T``), refusing a precision
    that is not finite or not positive definite with the parameter along its weakest direction."""
    if not (math.isfinite(value) and np.all(np.isfinite(precision))):
        raise InputError(f"the log posterior ({value}) or {what} is not finite")
    eigval, eigvec = np.linalg.eigh(precision)
    if eigval[0] <= _SINGULAR * max(abs(eigval[-1]), 1.0):
        pid = problem.free_ids[int(np.argmax(np.abs(eigvec[:, 0])))]
        raise InputError(
            f"{what} is not positive definite (smallest eigenvalue {eigval[0]:.3g}, mostly along"
            f" '{pid}'): {why}, or data and prior do not determine that direction"
        )
    return (eigvec / eigval) @ eigvec.T, eigvec * np.sqrt(1.0 / eigval)


# -- the InferenceData ------------------------------------------------------------------------------


def _row_log_likelihood(objective: Objective) -> tuple[Any, np.ndarray]:
    """``theta -> (log-likelihood, log density of each present measurement row)`` (the total as the
    objective computes it: ``-inf`` where any experiment fails) and the indices of those rows in the
    measurement table."""
    problem = objective.problem
    m = problem.measurements
    obs = {o.id: o for o in problem.observables}
    row_obs = [obs[str(o)] for o in m.observable]
    tcode = np.array([("lin", "log", "log10").index(o.transformation) for o in row_obs])
    lap = np.array([o.distribution == "laplace" for o in row_obs])
    cens = np.array([("", "left", "right").index(str(c)) for c in m.censoring], dtype=np.int32)
    exp_index = {e: i for i, e in enumerate(objective.experiments)}
    row_exp = np.array(
        [exp_index[(str(a), str(b))] for a, b in zip(m.preequilibration, m.condition, strict=True)]
    )
    present = np.flatnonzero(np.isfinite(m.value))
    y = np.asarray(m.value)[present]

    def rows(theta: Any) -> tuple[Any, Any]:
        h, sigma, ok = objective.observables(theta)
        ll = row_log_density(y, h[present], sigma[present], tcode[present], lap[present], cens[present])
        return jnp.where(jnp.all(ok), jnp.sum(ll), -jnp.inf), jnp.where(ok[row_exp[present]], ll, -jnp.inf)

    return rows, present


def _pointwise(objective: Objective, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row log-likelihoods at draws ``theta`` (..., dim) -> (..., rows), and the row indices."""
    rows, present = _row_log_likelihood(objective)
    flat = theta.reshape(-1, theta.shape[-1])
    with jax.enable_x64(True):
        fn = jit(lambda th: jax.lax.map(lambda t: rows(t)[1], th, batch_size=min(len(flat), 64)))
        out = np.asarray(fn(jnp.asarray(flat)))
    return out.reshape(*theta.shape[:-1], len(present)), present


def _inference_data(
    objective: Objective,
    theta: np.ndarray,
    stats: Mapping[str, np.ndarray] | None,
    loglik: np.ndarray | None = None,
) -> az.InferenceData:
    """InferenceData from ``theta`` draws (chains, draws, dim), optional sample stats and the row
    log-likelihoods at the draws (chains, draws, rows), computed here when not given."""
    problem = objective.problem
    m = problem.measurements
    scales = [p.scale for p in problem.free]
    value = np.stack([from_scale(theta[..., i], s) for i, s in enumerate(scales)], axis=-1)
    draw_coords = {"chain": np.arange(theta.shape[0]), "draw": np.arange(theta.shape[1])}
    par = {"parameter": list(problem.free_ids), "scale": ("parameter", scales)}
    dims = ("chain", "draw", "parameter")
    posterior = xr.Dataset({"theta": (dims, theta), "value": (dims, value)}, coords=draw_coords | par)
    if loglik is None:
        loglik, present = _pointwise(objective, theta)
    else:
        present = _row_log_likelihood(objective)[1]
    row = {
        "row": present,
        "observable": ("row", m.observable[present].astype(str)),
        "condition": ("row", m.condition[present].astype(str)),
        "time": ("row", m.time[present]),
        "source_row": ("row", m.source_rows[present]),
    }
    groups: dict[str, xr.Dataset] = {
        "posterior": posterior,
        "log_likelihood": xr.Dataset({"y": (("chain", "draw", "row"), loglik)}, coords=draw_coords | row),
        "observed_data": xr.Dataset({"y": ("row", m.value[present])}, coords=row),
    }
    if stats is not None:
        groups["sample_stats"] = xr.Dataset(
            {k: (("chain", "draw"), v) for k, v in stats.items()}, coords=draw_coords
        )
    attrs = {"problem": problem.name, "created_by": "immunetwin.inference.posterior"}
    for ds in groups.values():
        ds.attrs.update(attrs)
    return az.InferenceData(**groups)


# -- diagnostics ------------------------------------------------------------------------------------


def _by_id(ids: Sequence[str], ds: xr.Dataset) -> dict[str, float]:
    return {pid: float(v) for pid, v in zip(ids, ds["theta"].values, strict=True)}


def _convergence_messages(
    rhat: Mapping[str, float], bulk: Mapping[str, float], tail: Mapping[str, float], divergences: int
) -> list[str]:
    out = []
    for pid, r in rhat.items():
        if math.isnan(r):
            out.append(f"R-hat of '{pid}' could not be computed: it needs at least 2 chains of 4 draws")
        elif not r <= RHAT_MAX:
            out.append(
                f"R-hat of '{pid}' is {r:.3g} (> {RHAT_MAX}): the chains disagree about it; run more"
                " warm-up and draws, or look for several modes"
            )
    for kind, ess in (("bulk", bulk), ("tail", tail)):
        for pid, e in ess.items():
            if math.isnan(e):
                out.append(f"{kind} effective sample size of '{pid}' could not be computed (too few draws)")
            elif not e >= ESS_MIN:
                out.append(
                    f"{kind} effective sample size of '{pid}' is {e:.0f} (< {ESS_MIN:.0f}): too few"
                    " independent draws for reliable estimates; run more draws"
                )
    if divergences:
        out.append(
            f"{divergences} divergent transitions after warm-up: the sampler could not follow the"
            " posterior's curvature and may be biased; raise target_accept or reparameterise"
        )
    return out


def _warn(messages: Sequence[str], what: str) -> None:
    if messages:
        _warnings.warn(f"{what}: " + "; ".join(messages), ConvergenceWarning, stacklevel=3)


# -- NUTS -------------------------------------------------------------------------------------------


def sample_posterior(
    objective: Objective,
    *,
    key: Any,
    sampler: Sampler = "nuts",
    chains: int | None = None,
    draws: int | None = None,
    warmup: int = 1000,
    init: Any = None,
    target_accept: float | None = None,
    progress: bool = False,
    chain_method: ChainMethod = "vectorized",
    init_jitter: float = 0.5,
    dense_mass: bool = False,
    metric: Literal["adapt", "laplace", "laplace_adapt"] = "adapt",
) -> PosteriorFit:
    """Draw from the posterior of ``objective`` with NUTS or random-walk Metropolis (see the module
    docstring).

    Args:
        objective: a compiled problem (:func:`~immunetwin.inference.compile_objective`).
        key: ``jax.random.PRNGKey`` for the initial jitter and the sampler.
        sampler: ``"nuts"`` (gradients; the default) or ``"metropolis"``: adaptive random-walk
            Metropolis on ``theta``, many chains in lockstep whose solves go out as one batched call
            (:mod:`immunetwin.inference.metropolis`). No gradients, one solve per chain and iteration:
            for posteriors of a few parameters it converges sooner (``viral_tiv`` and
            ``viral_immune`` on one patient, native backend, 16 x 4,000 draws: 2.9 and 4.8 s on two
            cores, against 23.0 and 37.9 s for NUTS; BENCHMARKS.md); for many correlated
            parameters use NUTS (``Boehm_JProteomeRes2014``, 9 parameters, did not converge with it).
        chains, draws, warmup: number of chains, kept draws per chain and warm-up iterations
            (adaptation) per chain. ``chains`` and ``draws`` default to 4 and 1,000 for NUTS, 16 and
            4,000 for Metropolis: its draws are more autocorrelated, and R-hat <= 1.01 needs each
            chain long enough (an ESS of a few hundred per chain), however many chains there are
            (Margossian et al., "Nested R-hat", arXiv:2110.13017); ``32 x 2,000`` reached R-hat
            1.008-1.010 on the posteriors above, ``16 x 4,000`` 1.006-1.007. Memory grows with
            ``chains x draws`` (the pointwise log-likelihood of every draw is kept).
        init: starting ``theta`` on the parameter scales (e.g. ``MapFit.theta``) or linear values by
            id, jittered per chain by ``U(-init_jitter, init_jitter)`` in the unconstrained ``u``; an
            array ``(chains, dim)`` gives each chain's start as it is. ``None``: the nominal point.
        target_accept: the acceptance probability warm-up adapts to: default 0.8 for NUTS, 0.234
            for Metropolis (Roberts, Gelman & Gilks 1997).
        progress: show NumPyro's progress bar.
        chain_method: ``"vectorized"`` (chains batched with ``jax.vmap``; right on one CPU device),
            ``"sequential"`` or ``"parallel"`` (each chain one program, compiled once and run by one
            thread per core: :mod:`immunetwin.inference.chains`; the fastest on a multi-core CPU).
            Metropolis: ``"vectorized"`` runs all chains as one batch, ``"parallel"`` one batch per
            core, each in its own thread, ``"sequential"`` one chain after another.
        dense_mass: a dense mass matrix (helps strongly correlated parameters: on ``viral_immune``
            and one patient 7 leapfrog steps per iteration instead of 26, on ``viral_tiv`` a smaller
            tail ESS than the diagonal's; ``benchmarks/README.md``); with a Laplace metric, the
            whole Laplace covariance instead of its diagonal. The solver tolerances are the
            objective's: NUTS needs the density to a fraction of a unit, and rtol 1e-6 took a
            third of the steps of 1e-8 there (check with
            :func:`~immunetwin.analysis.tolerance_check`).
        metric: ``"adapt"``: NUTS learns the mass matrix in warm-up windows (Stan's scheme).
            ``"laplace"``: ``init`` must be one point, the MAP; the inverse mass matrix is the
            covariance of the Laplace approximation in ``u`` there, ``(∇²_u U(u_map))^{-1}`` with
            ``U`` the potential, held fixed while warm-up adapts the step size only, and each chain
            starts from a draw of that Gaussian. A good metric from the first iteration, where Stan's
            windows need hundreds of warm-up draws to estimate one (the same choice as
            :func:`~immunetwin.inference.fit_population`; on the Euclidean metric as the inverse
            posterior covariance, Betancourt 2017, arXiv:1701.02434). ``"laplace_adapt"``: as
            ``"laplace"`` (``init`` the MAP, starts drawn from the Gaussian), but warm-up adapts the
            mass matrix too, starting from the Laplace covariance instead of the identity: Stan's
            windows then begin with short trees (``viral_immune``, one patient, dense: 8.1 leapfrog
            steps per warm-up iteration instead of 12.9, and 7.5 instead of 50.6 in the first 100;
            ``benchmarks/README.md``), and a posterior that is not Gaussian still gets its metric
            learnt. Not always better: on ``Boehm_JProteomeRes2014`` the calibration benchmark's
            posterior took twice as long with it.
            Metropolis learns its proposal's covariance in the same windows and takes only
            ``"adapt"``; ``dense_mass`` does not apply to it (its proposal is always dense).

    Returns:
        A :class:`PosteriorFit`; when it is not converged a :class:`ConvergenceWarning` is emitted too.

    Raises:
        InputError: no estimated parameters, counts below 1, ``init`` outside the bounds, or (for
            a Laplace metric) ``init`` not one point or not a maximum of the posterior in ``u``.
    """
    problem = objective.problem
    if objective.dim == 0:
        raise InputError(f"problem '{problem.name}' estimates no parameters")
    if sampler not in SAMPLERS:
        raise InputError(f"sampler must be one of {', '.join(map(repr, SAMPLERS))}, got '{sampler}'")
    chains = chains if chains is not None else _DEFAULTS[sampler][0]
    draws = draws if draws is not None else _DEFAULTS[sampler][1]
    target_accept = target_accept if target_accept is not None else _DEFAULTS[sampler][2]
    if min(chains, draws) < 1 or warmup < 0:
        raise InputError(f"chains and draws must be >= 1 and warmup >= 0, got {chains}, {draws}, {warmup}")
    check_chain_method(chain_method)
    if metric not in ("adapt", "laplace", "laplace_adapt"):
        raise InputError(f"metric must be 'adapt', 'laplace' or 'laplace_adapt', got '{metric}'")
    key_init, key_run = jax.random.split(key)
    if sampler == "metropolis":
        if metric != "adapt":
            raise InputError(f"metric '{metric}' is for NUTS; Metropolis learns its proposal in warm-up")
        return _sample_metropolis(
            objective, key_init=key_init, key_run=key_run, chains=chains, draws=draws, warmup=warmup,
            init=init, target_accept=target_accept, chain_method=chain_method, init_jitter=init_jitter,
        )  # fmt: skip
    with jax.enable_x64(True):
        potential = _potential(objective)
        if metric in ("laplace", "laplace_adapt"):
            u0, cov = _laplace_metric(objective, init, key_init, chains, metric)
            fixed = {
                "inverse_mass_matrix": cov if dense_mass else np.diagonal(cov).copy(),
                "adapt_mass_matrix": metric == "laplace_adapt",
            }
        else:
            u0, fixed = _initial_u(problem, init, key_init, chains, init_jitter), {}

        def kernel() -> NUTS:
            return CompiledInitNUTS(
                potential_fn=potential, target_accept_prob=target_accept, dense_mass=dense_mass, **fixed
            )

        samples, extra = run_chains(
            kernel, key=key_run, init=np.asarray(u0), chains=chains, warmup=warmup, draws=draws,
            chain_method=chain_method, progress=progress, extra_fields=_EXTRA_FIELDS,
        )  # fmt: skip
        u = np.asarray(samples)
        extra = {k: np.asarray(v) for k, v in extra.items()}
    lo, width = problem.lower, problem.upper - problem.lower
    theta = lo + width / (1.0 + np.exp(-u))
    stats = {
        "diverging": extra["diverging"].astype(bool),
        "lp": -extra["potential_energy"],
        "energy": extra["energy"],
        "n_steps": extra["num_steps"],
        "tree_depth": np.ceil(np.log2(extra["num_steps"] + 1.0)).astype(int),
        "acceptance_rate": extra["accept_prob"],
        "step_size": extra["adapt_state.step_size"],
    }
    return _posterior_fit(objective, theta, stats, int(stats["diverging"].sum()))


def _posterior_fit(
    objective: Objective,
    theta: np.ndarray,
    stats: Mapping[str, np.ndarray],
    divergences: int,
    loglik: np.ndarray | None = None,
    stuck: Sequence[int] = (),
) -> PosteriorFit:
    """Draws ``theta`` (chains, draws, dim) with their diagnostics; warns when not converged.
    ``stuck``: chains that never reached a point where the posterior is finite."""
    idata = _inference_data(objective, theta, stats, loglik)
    ids = objective.problem.free_ids
    with _warnings.catch_warnings():  # ArviZ warns on short chains; our own messages say more
        _warnings.simplefilter("ignore")
        rhat = _by_id(ids, az.rhat(idata, var_names=["theta"]))
        bulk = _by_id(ids, az.ess(idata, var_names=["theta"], method="bulk"))
        tail = _by_id(ids, az.ess(idata, var_names=["theta"], method="tail"))
    messages = _convergence_messages(rhat, bulk, tail, divergences)
    if len(stuck):
        messages.append(
            f"chains {', '.join(map(str, stuck))} never reached a point where the model solves and the"
            " posterior is finite: start them elsewhere (init)"
        )
    _warn(messages, "posterior sampling did not converge")
    return PosteriorFit(
        idata=idata,
        rhat=rhat,
        ess_bulk=bulk,
        ess_tail=tail,
        divergences=divergences,
        converged=not messages,
        warnings=tuple(messages),
    )


def _bounded_log_posterior(objective: Objective) -> Any:
    """``theta -> (log p(theta | y), row log-likelihoods)``: the log posterior inside the bounds,
    ``-inf`` outside them or where a solve fails, and the pointwise log-likelihood from the same solve
    (so the draws' ``log_likelihood`` group costs no second solve)."""
    lo, hi = objective.problem.lower, objective.problem.upper
    rows = _row_log_likelihood(objective)[0]

    def log_density(theta: Any) -> tuple[Any, Any]:
        inside = jnp.all((theta >= lo) & (theta <= hi))
        theta = jnp.clip(theta, lo, hi)
        total, pointwise = rows(theta)
        value = total + objective.log_prior(theta)
        return jnp.where(inside & ~jnp.isnan(value), value, -jnp.inf), pointwise

    return log_density


def _sample_metropolis(
    objective: Objective, *, key_init: Any, key_run: Any, chains: int, draws: int, warmup: int, init: Any,
    target_accept: float, chain_method: str, init_jitter: float,
) -> PosteriorFit:  # fmt: skip
    """:func:`sample_posterior` with ``sampler="metropolis"``: the walk is on ``theta`` itself, where
    a posterior piled against a bound (``V0`` of ``viral_tiv`` on one patient) is a plain truncated
    density; in the logit ``u`` NUTS samples, that is a long exponential tail a random walk crosses
    slowly (32 chains x 2,000 draws after 2,000 warm-up: R-hat 1.19 and bulk ESS 116 there, against
    1.01 and 4,051 on ``theta``)."""
    problem = objective.problem
    lo, width = problem.lower, problem.upper - problem.lower
    u0 = _initial_u(problem, init, key_init, chains, init_jitter)
    theta0 = lo + width / (1.0 + np.exp(-u0))
    cores = available_cores()
    groups, workers = {"vectorized": (1, 1), "sequential": (chains, 1), "parallel": (cores, cores)}[
        chain_method
    ]
    with jax.enable_x64(True):
        out = metropolis(
            _bounded_log_posterior(objective), key=key_run, init=theta0, warmup=warmup, draws=draws,
            initial_sd=width / 20.0, target_accept=target_accept, groups=groups, workers=workers,
        )  # fmt: skip
    stats = {"lp": out.log_density, "acceptance_rate": out.accept_prob}
    stuck = np.flatnonzero(~np.all(np.isfinite(out.log_density), axis=1))
    return _posterior_fit(objective, out.x, stats, 0, out.aux, stuck=stuck.tolist())


# -- Laplace ----------------------------------------------------------------------------------------


#: Relative step of the Hessian by central differences of sensitivity gradients (native backend).
GRADIENT_HESSIAN_STEP = 1e-5


def _value_grad_hessian(objective: Objective, theta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Log posterior, gradient (forward sensitivities) and symmetrised Hessian: ``jacfwd`` of the
    gradient on the XLA backend; on the native backend (whose solves JAX cannot differentiate)
    central differences of the sensitivity gradient, ``H e_j = (g(x + h_j e_j) - g(x - h_j e_j)) /
    2 h_j`` with ``h_j = GRADIENT_HESSIAN_STEP * max(1, |x_j|)``, the ``2 d + 1`` points in one batch."""
    if objective.sensitivities is not None:
        x = np.asarray(theta, dtype=float)
        step = GRADIENT_HESSIAN_STEP * np.maximum(1.0, np.abs(x))
        eye = np.diag(step)
        points = np.vstack([x, x + eye, x - eye])
        with jax.enable_x64(True):
            values, grads = (
                np.asarray(a) for a in objective.jitted("batch_value_and_grad")(jnp.asarray(points))
            )
        d = len(x)
        hess = (grads[1 : d + 1] - grads[d + 1 :]).T / (2.0 * step[None, :])
        return float(values[0]), grads[0], 0.5 * (hess + hess.T)
    vg = forward_value_and_grad(objective.log_posterior)

    def grad_with_aux(x: Any) -> tuple[Any, Any]:
        value, grad = vg(x)
        return grad, (value, grad)

    def grad_and_hessian(th: Any) -> tuple[Any, Any, Any]:
        hess, (value, grad) = jax.jacfwd(grad_with_aux, has_aux=True)(th)
        return value, grad, hess

    with jax.enable_x64(True):
        value, grad, hess = jit(grad_and_hessian)(jnp.asarray(theta, dtype=jnp.float64))
    hess = np.asarray(hess)
    return float(value), np.asarray(grad), 0.5 * (hess + hess.T)


def laplace(objective: Objective, theta_map: Any, *, key: Any, draws: int = 1000) -> LaplaceFit:
    """Gaussian (Laplace) approximation of the posterior at ``theta_map`` on the parameter scales.

    .. math::

        p(\\theta \\mid y) \\approx \\mathcal N\\big(\\hat\\theta,\\ \\Sigma\\big), \\qquad
        \\Sigma = \\big(-\\nabla^2 \\log p(\\hat\\theta \\mid y)\\big)^{-1}

    (Tierney & Kadane 1986, JASA 81:82). Exact for a posterior that is Gaussian on the parameter
    scales (a model linear in ``theta`` on the observation scale, normal priors, bounds far away).

    Args:
        objective: a compiled problem.
        theta_map: the MAP on the parameter scales (e.g. ``fit_map(...).theta``).
        key: ``jax.random.PRNGKey`` for the draws.
        draws: number of independent draws stored in ``idata`` (as one chain).

    Returns:
        A :class:`LaplaceFit`. Its ``warnings`` (also emitted as :class:`ConvergenceWarning`) say when
        ``theta_map`` is not a stationary point (a Newton step would move a parameter by more than
        0.1 sd) or when draws fall outside the bounds (which are kept: the Gaussian ignores bounds).

    Raises:
        InputError: ``theta_map`` has the wrong shape, the log posterior is not finite there, or the
            negative Hessian is not positive definite (``theta_map`` is not a maximum, or the data
            and prior do not determine some direction); the message names the parameter that
            dominates the offending direction.
    """
    problem = objective.problem
    theta_map = np.asarray(theta_map, dtype=float)
    if theta_map.shape != (objective.dim,):
        raise InputError(f"theta_map must have shape ({objective.dim},), got {theta_map.shape}")
    if draws < 1:
        raise InputError(f"draws must be >= 1, got {draws}")
    value, grad, hess = _value_grad_hessian(objective, theta_map)
    what = "the negative Hessian of the log posterior at theta_map"
    cov, root = _gaussian(problem, value, -hess, what, "theta_map is not a maximum")
    sd = np.sqrt(np.diag(cov))
    with jax.enable_x64(True):
        z = np.asarray(jax.random.normal(key, (draws, objective.dim), dtype=jnp.float64))
    theta = theta_map + z @ root.T
    messages = _laplace_messages(problem, grad, cov, sd, theta)
    _warn(messages, "Laplace approximation")
    return LaplaceFit(
        idata=_inference_data(objective, theta[None], None),
        mean=theta_map,
        covariance=cov,
        sd=dict(zip(problem.free_ids, sd.tolist(), strict=True)),
        log_posterior=value,
        warnings=tuple(messages),
    )


def _laplace_messages(
    problem: Problem, grad: np.ndarray, cov: np.ndarray, sd: np.ndarray, theta: np.ndarray
) -> list[str]:
    out = []
    step = np.abs(cov @ grad) / sd
    if step.max() > 0.1:
        pid = problem.free_ids[int(np.argmax(step))]
        out.append(
            f"theta_map is not at the mode: a Newton step moves '{pid}' by {step.max():.2g} posterior sd;"
            " optimise further before trusting this approximation"
        )
    outside = np.mean(np.any((theta < problem.lower) | (theta > problem.upper), axis=1))
    if outside > 0:
        out.append(
            f"{100 * outside:.1f}% of the draws fall outside the parameter bounds: the posterior is"
            " cut by a bound and not Gaussian; use sample_posterior"
        )
    return out
