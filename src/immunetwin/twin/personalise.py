"""``personalise``: a first twin from a template and one patient's measurements.

Two methods give the twin's first particles (``TwinSettings.personalisation``); both end with
equally weighted particles of the same posterior, and their numbers are kept in the belief's
diagnostics.

:class:`~immunetwin.twin.Tempering` (default): an SMC sampler from the prior to the posterior by
adaptive likelihood tempering (:mod:`immunetwin.twin.tempering`). It compiles nothing per data set.
Measured on 1,000 particles of ``viral_immune`` (V0, beta, p, a_T, kappa_E) personalised on the first
6 swabs of Ke et al. 2022's ke01, on the shared 2-core machine: tempering took 6 s once the solver
was compiled (10 s in a fresh process with the compilation cache filled, 47 s with it empty; load
average about 3); the second method took 323 s (load average about 7.7), 250 s of them in
``fit_map``, whose forward-sensitivity objective is compiled anew for every data set. Both gave the
same posterior within Monte Carlo error (means of the log10 parameters within 0.03).

:class:`~immunetwin.twin.LaplaceImportance`:

1. **MAP**: multi-start L-BFGS-B on the log posterior (:func:`immunetwin.inference.fit_map`).
2. **Laplace proposal**: :math:`q = t_\\nu(\\hat\\theta, \\Sigma)`, a Student-t (default
   :math:`\\nu = 5`, heavier tails than the Gaussian) at the MAP with
   :math:`\\Sigma = (-\\nabla^2 \\log p(\\hat\\theta \\mid y))^{-1}` (Tierney & Kadane 1986, JASA 81:82).
   The Hessian is taken by central differences of the forward-sensitivity gradient that the MAP fit
   has already compiled (:math:`2d` gradient calls; ``immunetwin.inference.laplace`` would compile a
   second-order program and a pointwise-likelihood program on top of it). Directions the data and
   prior do not determine (a non-positive curvature) get a standard deviation of half the widest
   bound width.
3. **Importance sampling**: :math:`N` draws, weights :math:`\\pi(\\theta)/q(\\theta)` with the exact
   log posterior of each draw from one batched simulation, Pareto-smoothed (PSIS, Vehtari et al. 2024,
   JMLR 25:72); :math:`\\hat k` and the ESS are recorded.
4. **Resample-move**: systematic resampling to :math:`N` equally weighted particles, then a few
   random-walk Metropolis sweeps (:func:`immunetwin.twin.smc.rejuvenate`) that remove the duplicates
   and correct what the proposal got wrong.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import multivariate_t

import immunetwin
from immunetwin.errors import InputError, TemplateError, UnknownIdError
from immunetwin.inference.fit import fit_map
from immunetwin.inference.likelihood import Objective, compile_objective
from immunetwin.inference.patient import patient_problem
from immunetwin.inference.problem import Problem
from immunetwin.templates import Template, list_templates, load_template
from immunetwin.twin.belief import Belief
from immunetwin.twin.observations import Observations, read_observations
from immunetwin.twin.smc import Evaluated, Target, importance_weights, resample_move
from immunetwin.twin.tempering import tempered_particles
from immunetwin.twin.twin import LaplaceImportance, Step, Tempering, Twin, TwinSettings, template_hash

__all__ = ["personalise"]


def resolve_template(template: Template | str) -> Template:
    """A template object, or the shipped template of that name."""
    if isinstance(template, Template):
        return template
    try:
        return load_template(str(template))
    except TemplateError:
        raise UnknownIdError("template", str(template), list_templates()) from None


def problem_of(
    template: Template, obs: Observations, estimate: Sequence[str] | None, patient: str
) -> Problem:
    """The calibration problem of these observations (parameters, scales, bounds, priors)."""
    return patient_problem(template, obs.to_frame(), estimate=estimate, name=patient)


def laplace_covariance(objective: Objective, theta: np.ndarray) -> tuple[np.ndarray, int]:
    """Inverse negative Hessian of the log posterior at ``theta`` by central differences of its
    gradient; returns it and the number of directions that had to be regularised."""
    lo, hi = objective.problem.lower, objective.problem.upper
    grad = objective.jitted("value_and_grad")
    d = len(theta)
    hess = np.zeros((d, d))
    with jax.enable_x64(True):
        for j in range(d):
            step = 1e-4 * max(1.0, abs(theta[j]))
            up, down = min(theta[j] + step, hi[j]), max(theta[j] - step, lo[j])
            e_up, e_down = theta.copy(), theta.copy()
            e_up[j], e_down[j] = up, down
            g_up = np.asarray(grad(jnp.asarray(e_up))[1])
            g_down = np.asarray(grad(jnp.asarray(e_down))[1])
            hess[:, j] = (g_up - g_down) / (up - down)
    precision = -0.5 * (hess + hess.T)
    precision = np.where(np.isfinite(precision), precision, 0.0)
    vals, vecs = np.linalg.eigh(precision)
    floor = 4.0 / float(np.max(hi - lo)) ** 2  # the precision of a sd of half the widest bound width
    fixed = int(np.sum(vals < floor))
    vals = np.maximum(vals, floor)
    return (vecs / vals) @ vecs.T, fixed


def _proposal(
    key: Any, mean: np.ndarray, cov: np.ndarray, df: float, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` draws of the Student-t proposal and their log densities."""
    k_z, k_g = jax.random.split(key)
    d = len(mean)
    with jax.enable_x64(True):
        z = np.asarray(jax.random.normal(k_z, (n, d), dtype=jnp.float64))
        g = np.asarray(jax.random.gamma(k_g, df / 2.0, (n,), dtype=jnp.float64)) / (df / 2.0)
    vals, vecs = np.linalg.eigh(cov)
    theta = mean + (z / np.sqrt(g)[:, None]) @ (vecs * np.sqrt(vals)).T
    log_q = multivariate_t(loc=mean, shape=cov, df=df, allow_singular=True).logpdf(theta)
    return theta, np.atleast_1d(log_q)


def posterior_particles(
    template: Template,
    obs: Observations,
    problem: Problem,
    *,
    key: Any,
    draws: int,
    reference_time: float,
    settings: TwinSettings,
) -> Belief:
    """Equally weighted particles of the posterior by the settings' method (module docstring)."""
    if problem.free_ids == ():
        raise InputError(f"template '{template.name}': no parameter to personalise (estimate is empty)")
    target = Target(template, problem, obs, reference_time, settings.controls)
    method = settings.personalisation
    if isinstance(method, Tempering):
        particles, diagnostics = tempered_particles(
            key,
            target,
            draws,
            ess_fraction=method.ess_fraction,
            moves=settings.moves,
            max_stages=method.max_stages,
        )
        return belief_of(problem, template, particles, "tempering", diagnostics)
    return _laplace_importance(target, method, key=key, draws=draws, moves=settings.moves)


def _laplace_importance(
    target: Target, method: LaplaceImportance, *, key: Any, draws: int, moves: int
) -> Belief:
    """Steps 1-4 of the module docstring (LaplaceImportance)."""
    k_map, k_q, k_res, k_move = jax.random.split(key, 4)
    objective = compile_objective(target.problem)
    fit = fit_map(objective, key=k_map, starts=method.starts)
    cov, regularised = laplace_covariance(objective, np.asarray(fit.theta, float))
    theta, log_q = _proposal(k_q, np.asarray(fit.theta, float), cov, method.proposal_df, draws)
    drawn = target.evaluate(theta)
    log_w, pareto_k = importance_weights(drawn.log_target(), log_q)
    w = np.exp(log_w)
    ess_is = float(1.0 / np.sum(w**2))
    moved, acceptance = resample_move(k_res, k_move, target, drawn, w, draws, moves)
    diagnostics = {
        "map_log_posterior": float(fit.objective), "map_starts_at_best": int(fit.at_best),
        "map_starts": len(fit.starts), "laplace_regularised_directions": regularised,
        "pareto_k": pareto_k, "ess_importance": ess_is, "acceptance": acceptance, "moves": moves,
        "unique_particles": len(np.unique(moved.theta, axis=0)),
        "failed_solves": int(np.sum(~np.isfinite(drawn.log_likelihood))),
    }  # fmt: skip
    return belief_of(target.problem, target.template, moved, "laplace-is+mh", diagnostics)


def belief_of(problem: Problem, template: Template, p: Evaluated, method: str, diagnostics: dict) -> Belief:
    n = len(p.theta)
    return Belief(
        parameter_ids=problem.free_ids,
        scales=tuple(par.scale for par in problem.free),
        theta=p.theta,
        log_weights=np.full(n, -np.log(n)),
        log_likelihood=p.log_likelihood,
        log_prior=p.log_prior,
        state_ids=template.model.state_ids,
        states=p.states,
        method=method,
        diagnostics=diagnostics,
    )


def personalise(
    template: Template | str,
    measurements: Any,
    *,
    patient: str,
    key: Any,
    estimate: Sequence[str] | None = None,
    draws: int = 1000,
    reference_time: float | None = None,
    settings: TwinSettings | None = None,
) -> Twin:
    """A first twin (version 1) of ``patient`` from a template and that patient's measurements.

    Args:
        template: a :class:`~immunetwin.templates.Template` or the name of a shipped one.
        measurements: a table with columns ``observable``, ``time`` (days since the twin's origin, e.g.
            infection), ``value`` and optionally ``censored`` and ``unit``
            (:func:`~immunetwin.twin.observations.read_observations` says what is refused).
        patient: patient id.
        key: ``jax.random.PRNGKey`` for every random choice (MAP starts, proposal, resampling, moves).
        estimate: parameters to personalise (default: the template's ``estimate: true`` ones).
        draws: number of particles N.
        reference_time: the day up to which the twin has seen data (default: the last measurement).
        settings: method settings (default :class:`~immunetwin.twin.TwinSettings` ``()``).

    Returns:
        The twin; its ``belief.method`` is ``"tempering"`` or ``"laplace-is+mh"`` and
        ``belief.diagnostics`` holds that method's numbers (stages and log evidence; MAP, Pareto k and
        importance ESS; acceptance rates).

    Raises:
        UnknownIdError: unknown template, observable or parameter.
        InputError: an impossible measurement (names the row), ``draws < 2``, or a reference time
            before the last measurement.
    """
    t_start = time.perf_counter()
    settings = settings if settings is not None else TwinSettings()
    tpl = resolve_template(template)
    if draws < 2:
        raise InputError(f"draws must be at least 2, got {draws}")
    obs = read_observations(tpl, measurements)
    last = float(obs.time.max())
    t_ref = last if reference_time is None else float(reference_time)
    if not t_ref >= last:
        raise InputError(f"reference_time {t_ref:g} is before the last measurement (day {last:g})")
    problem = problem_of(tpl, obs, estimate, patient)
    belief = posterior_particles(
        tpl, obs, problem, key=key, draws=draws, reference_time=t_ref, settings=settings
    )
    return Twin.create(
        template=tpl, template_name=tpl.name, template_version=tpl.metadata.version,
        template_hash=template_hash(tpl), patient=str(patient), version=1, reference_time=t_ref,
        observations=obs, belief=belief, alerts=(), scores=(), settings=settings,
        step=Step.now("personalise", key, len(obs), time.perf_counter() - t_start),
        immunetwin_version=immunetwin.__version__, previous=None,
    )  # fmt: skip
