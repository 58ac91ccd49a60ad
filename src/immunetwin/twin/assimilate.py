"""``assimilate``: absorb new measurements into a twin (a sequential Monte Carlo update).

For new rows :math:`y_{new}` (none earlier than the twin's reference time :math:`t_r`):

1. **Predict and score.** Every particle is simulated from its state at :math:`t_r` (kept in the
   belief) to the new times, in one batched solve. Each row is scored against the twin's predictive
   distribution before the update (:mod:`immunetwin.twin.scores`); rows outside the central band
   raise alerts.
2. **Reweight.** :math:`\\log w_i \\leftarrow \\log w_i + \\log p(y_{new} \\mid \\theta_i)`, the exact
   sequential importance update of the posterior (Chopin & Papaspiliopoulos 2020, *An Introduction to
   Sequential Monte Carlo*, chapter 17). The log mean of the increments,
   :math:`\\log \\sum_i w_i p(y_{new} \\mid \\theta_i)`, is the log predictive likelihood of the new
   rows (kept as ``log_evidence_increment``; Gneiting & Raftery 2007, JASA 102:359, the logarithmic
   score).
3. **Resample-move** when :math:`\\mathrm{ESS} < ` ``resample_below`` :math:`\\times N`: systematic
   resampling and Metropolis sweeps whose target is the posterior given *all* data
   (Gilks & Berzuini 2001, JRSS B 63:127; Del Moral, Doucet & Jasra 2006, JRSS B 68:411).
4. **Fall back** to a full re-personalisation on all data
   (:func:`~immunetwin.twin.personalise`'s method) when the ESS collapses
   (:math:`< ` ``collapse_below`` :math:`\\times N`) or the moves accept fewer than
   ``min_acceptance`` of their proposals; the belief's ``method`` says ``"repersonalised"`` and its
   diagnostics say why.

Only the first step costs a solve in the common case (no resampling), and the compiled solver is
reused across updates (output times are padded to fixed lengths), so an update costs one batched
simulation over the new time span.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
from scipy.special import logsumexp

import immunetwin
from immunetwin.errors import InputError
from immunetwin.twin.belief import Belief, normalise
from immunetwin.twin.observations import Observations, read_observations
from immunetwin.twin.particles import natural, observed, row_log_densities, simulate_particles
from immunetwin.twin.personalise import posterior_particles, problem_of
from immunetwin.twin.scores import score_rows
from immunetwin.twin.smc import Evaluated, Target, resample_move
from immunetwin.twin.twin import Step, Twin

__all__ = ["assimilate"]


def _predict(twin: Twin, obs: Observations, t_ref: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each particle's model values for the new rows (N, R; NaN where a solve failed), whether its
    solve succeeded, and its state at the new reference time."""
    b = twin.belief
    times = np.unique(np.concatenate([obs.time, [t_ref]]))
    out = simulate_particles(
        twin.template, natural(b.theta, b.parameter_ids, b.scales), times,
        start=twin.reference_time, states=b.states, controls=twin.settings.controls,
    )  # fmt: skip
    h = np.where(out.ok[:, None], observed(twin.template, out, obs), np.nan)
    return h, out.ok, out.states_at(t_ref)


def _update(twin: Twin, obs: Observations, t_ref: float, key: Any) -> tuple[Belief, tuple, tuple]:
    """Scores, alerts and the updated belief (steps 1-4 of the module docstring)."""
    b, s = twin.belief, twin.settings
    h, ok, states = _predict(twin, obs, t_ref)
    scores, alerts = score_rows(twin.template, obs, h, b.weights, band=s.band, version=twin.version)
    increment = row_log_densities(twin.template, h, obs, ok).sum(axis=1)
    raw = b.log_weights + increment
    evidence = float(logsumexp(raw)) if np.any(np.isfinite(raw)) else -np.inf
    ess = float(np.exp(-logsumexp(2 * (raw - evidence)))) if np.isfinite(evidence) else 0.0
    info: dict[str, Any] = {"ess_after_reweighting": ess, "log_evidence_increment": evidence,
                            "failed_solves": int(np.sum(~ok))}  # fmt: skip
    particles = Evaluated(np.array(b.theta), np.array(b.log_prior), b.log_likelihood + increment, states)
    all_obs = twin.observations + obs
    k_res, k_move, k_full = jax.random.split(key, 3)
    if ess >= s.resample_below * b.size:
        return _from(twin, particles, normalise(raw), "reweighted", info), scores, alerts
    problem = problem_of(twin.template, all_obs, b.parameter_ids, twin.patient)
    if ess >= s.collapse_below * b.size:
        target = Target(twin.template, problem, all_obs, t_ref, s.controls)
        w = np.exp(normalise(raw))
        moved, acceptance = resample_move(k_res, k_move, target, particles, w, b.size, s.moves)
        info |= {"acceptance": acceptance, "moves": s.moves, "unique_particles": len(np.unique(moved.theta, axis=0))}  # fmt: skip
        if not acceptance < s.min_acceptance:
            return _from(twin, moved, np.full(b.size, -np.log(b.size)), "resample-move", info), scores, alerts
        info["reason"] = f"rejuvenation accepted {acceptance:.3g} < min_acceptance {s.min_acceptance:g}"
    else:
        info["reason"] = f"ESS collapsed to {ess:.1f} of {b.size} particles (< {s.collapse_below:g} N)"
    full = posterior_particles(
        twin.template, all_obs, problem, key=k_full, draws=b.size, reference_time=t_ref, settings=s
    )
    diagnostics = {**full.diagnostics, **{f"update_{k}": v for k, v in info.items()}}
    return dataclasses.replace(full, method="repersonalised", diagnostics=diagnostics), scores, alerts


def _from(twin: Twin, p: Evaluated, log_weights: np.ndarray, method: str, info: dict) -> Belief:
    b = twin.belief
    return Belief(
        b.parameter_ids, b.scales, p.theta, normalise(log_weights), p.log_likelihood, p.log_prior,
        b.state_ids, p.states, method, info,
    )  # fmt: skip


def assimilate(twin: Twin, new_measurements: Any, *, key: Any) -> Twin:
    """The next version of ``twin`` after it has seen ``new_measurements`` (see the module docstring).

    Args:
        twin: the current version (left unchanged).
        new_measurements: a table like :func:`~immunetwin.twin.personalise`'s; no row may be earlier
            than ``twin.reference_time``.
        key: ``jax.random.PRNGKey`` for resampling, moves and a fallback re-personalisation.

    Returns:
        A new twin: ``version + 1``, reference time the later of the old one and the newest row, the
        new rows added to its observations, the updated belief (``method`` ``"reweighted"``,
        ``"resample-move"`` or ``"repersonalised"``), the new rows' scores, and alerts for rows
        outside the central predictive band.

    Raises:
        UnknownIdError, InputError: an impossible row (named), including one before the reference
            time; ``twin`` and its history are untouched.
    """
    t_start = time.perf_counter()
    if not isinstance(twin, Twin):
        raise InputError(f"assimilate needs a Twin, got {type(twin).__name__}")
    obs = read_observations(twin.template, new_measurements, not_before=twin.reference_time)
    t_ref = max(twin.reference_time, float(obs.time.max()))
    belief, scores, alerts = _update(twin, obs, t_ref, key)
    note = "; ".join(f"alert: {a.message}" for a in alerts)
    return Twin.create(
        template=twin.template, template_name=twin.template_name, template_version=twin.template_version,
        template_hash=twin.template_hash, patient=twin.patient, version=twin.version + 1,
        reference_time=t_ref, observations=twin.observations + obs, belief=belief,
        alerts=twin.alerts + alerts, scores=twin.scores + scores, settings=twin.settings,
        step=Step.now("assimilate", key, len(obs), time.perf_counter() - t_start, note),
        immunetwin_version=immunetwin.__version__, previous=twin,
    )  # fmt: skip
