"""Analysis of a calibrated model: identifiability, sensitivity, predictive checks, model comparison.

Five verbs, each returning a frozen result with ``to_frame()``:

- :func:`profile`: profile likelihoods and likelihood-based confidence intervals (Raue et al. 2009,
  Bioinformatics 25:1923). For parameter ``i`` the profile is
  ``PL(θ_i) = max_{θ_j, j≠i} log p(y | θ)``; the confidence interval at level ``1 - α`` is
  ``{θ_i : PL(θ_hat) - PL(θ_i) < Δ}``, ``Δ = χ²_{1,1-α} / 2`` (1.92 at 95 %, pointwise).
- :func:`sensitivity`: global sensitivity of a template outcome or observable over the template's
  parameter ranges with SALib (Herman & Usher 2017, JOSS 2:97): Sobol indices (Saltelli et al. 2010,
  Comput Phys Commun 181:259) or Morris elementary effects (Campolongo et al. 2007, Environ Model
  Softw 22:1509).
- :func:`posterior_predictive`: predictive intervals, coverage and a posterior predictive p-value
  (Gelman, Meng & Stern 1996, Stat Sinica 6:733).
- :func:`compare_models`: PSIS-LOO model comparison (Vehtari, Gelman & Gabry 2017, Stat Comput
  27:1413) through ``arviz.compare``.
- :func:`tolerance_check`: the log-likelihood under successively tighter ODE tolerances, a measure
  of the algorithmic (numerical) uncertainty of every number above.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from SALib.analyze import morris as morris_analysis
from SALib.analyze import sobol as sobol_analysis
from SALib.sample import morris as morris_sampling
from SALib.sample import sobol as sobol_sampling
from scipy.optimize import minimize
from scipy.stats import chi2

from immunetwin.calibrate.likelihood import (
    Objective,
    _row_log_density,
    _transform,
    compile_objective,
)
from immunetwin.calibrate.problem import Problem, from_scale
from immunetwin.engines.integrate import Controls
from immunetwin.engines.ode import CohortTrajectory, simulate_cohort
from immunetwin.engines.solvers import AbstractMethod
from immunetwin.errors import InputError, SolverError, UnknownIdError
from immunetwin.spec.schedule import Schedule
from immunetwin.templates import Template

__all__ = [
    "Comparison",
    "PredictiveCheck",
    "Profile",
    "Profiles",
    "Sensitivity",
    "ToleranceCheck",
    "compare_models",
    "posterior_predictive",
    "profile",
    "sensitivity",
    "tolerance_check",
]

_FAILED = 1e30  # objective value where a solve fails (keeps L-BFGS-B's line search finite)
Classification = Literal["identifiable", "practically non-identifiable", "flat"]
Side = Literal["closed", "bound", "points", "failed"]
#: What a sensitivity analysis measures: a template outcome or observable id, or a function of the
#: cohort trajectory returning one value per patient ``(B,)`` or one per time ``(B, T)``.
Output = str | Callable[[CohortTrajectory], Any]


# -- profile likelihood -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """The profile of one parameter.

    Attributes:
        parameter, scale: the parameter and its estimation scale.
        theta: grid of the profiled parameter (ascending, on its scale), the optimum included.
        value: maximised objective at each grid point; ``others``: the optimising ``theta`` (full).
        lower, upper: confidence bounds on the scale (``-inf`` / ``inf`` where the side is open).
        sides: how each walk ended: ``closed`` (crossed the threshold), ``bound``, ``points`` (ran
            out of points) or ``failed`` (a solve failed).
        classification: ``identifiable`` (both sides closed), ``flat`` (the profile never drops by
            ``flat_tolerance``: the signature of a structural non-identifiability) or
            ``practically non-identifiable`` (open on at least one side, not flat).
    """

    parameter: str
    scale: str
    theta: np.ndarray
    value: np.ndarray
    others: np.ndarray
    lower: float
    upper: float
    sides: tuple[Side, Side]
    classification: Classification


@dataclass(frozen=True)
class Profiles:
    """Profiles of several parameters; ``reference`` is the best objective found (MAP or profile)."""

    profiles: tuple[Profile, ...]
    reference: float
    threshold: float
    confidence: float
    with_prior: bool
    improved: bool  # a profile point beat the fit by > 0.01: the fit was not the optimum; refit
    evaluations: int
    seconds: float

    def __getitem__(self, parameter: str) -> Profile:
        for p in self.profiles:
            if p.parameter == parameter:
                return p
        raise UnknownIdError("profiled parameter", parameter, tuple(p.parameter for p in self.profiles))

    def to_frame(self) -> pd.DataFrame:
        """One row per parameter: confidence interval (scale and linear) and classification."""
        rows = []
        for p in self.profiles:
            best = p.theta[int(np.argmax(p.value))]
            rows.append({
                "parameter": p.parameter, "scale": p.scale, "estimate": best, "lower": p.lower, "upper": p.upper,
                "lower_value": _linear(p.lower, p.scale), "upper_value": _linear(p.upper, p.scale),
                "lower_side": p.sides[0], "upper_side": p.sides[1], "classification": p.classification,
                "points": len(p.theta),
            })  # fmt: skip
        return pd.DataFrame(rows)

    def points_frame(self) -> pd.DataFrame:
        """Long table of every profile point: ``parameter``, ``theta``, ``value``, ``drop``."""
        return pd.concat(
            [pd.DataFrame({"parameter": p.parameter, "theta": p.theta, "value": p.value,
                           "drop": self.reference - p.value}) for p in self.profiles],
            ignore_index=True,
        )  # fmt: skip


def _linear(x: float, scale: str) -> float:
    """A bound on the parameter scale as a linear value (an open lower bound on log scale is 0)."""
    if scale != "lin" and x == -math.inf:
        return 0.0
    return float(from_scale(x, scale))  # type: ignore[arg-type]


class _Counter:
    """The negated objective for scipy, counting evaluations."""

    def __init__(self, vg: Any) -> None:
        self.vg, self.calls = vg, 0

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        self.calls += 1
        v, g = self.vg(jnp.asarray(x))
        v, g = float(v), np.asarray(g, dtype=float)
        if not (math.isfinite(v) and np.all(np.isfinite(g))):
            return _FAILED, np.zeros_like(x)
        return -v, -g


def _optimise_others(
    negative: _Counter, start: np.ndarray, i: int, at: float, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, float]:
    """Maximise over every entry but ``i`` (held at ``at``), from ``start``."""
    full = start.copy()
    full[i] = at
    free = np.arange(len(full)) != i
    if not free.any():
        v, _ = negative(full)
    else:

        def restricted(z: np.ndarray) -> tuple[float, np.ndarray]:
            x = full.copy()
            x[free] = z
            v, g = negative(x)
            return v, g[free]

        res = minimize(restricted, full[free], jac=True, method="L-BFGS-B",
                       bounds=list(zip(lo[free], hi[free], strict=True)),
                       options={"maxiter": 500, "ftol": 1e-10, "gtol": 1e-8})  # fmt: skip
        full[free], v = res.x, float(res.fun)
    return full, (-v if v < _FAILED else -math.inf)


def _walk(
    negative: _Counter, theta0: np.ndarray, i: int, direction: int, bounds: tuple[np.ndarray, np.ndarray],
    ref: float, threshold: float, points: int,
) -> tuple[list[tuple[float, float, np.ndarray]], Side]:  # fmt: skip
    """Step out from ``theta0`` along entry ``i`` (adaptive step, warm starts) until the profile drops
    by ``threshold`` (``closed``), reaches the bound, runs out of points or a solve fails."""
    lo, hi = bounds
    width = hi[i] - lo[i]
    step, min_step, max_step = width / (2 * points), width * 1e-5, width / 4
    x, prev, out = theta0, 0.0, []
    while len(out) < points:
        at = float(np.clip(x[i] + direction * step, lo[i], hi[i]))
        if at == x[i]:
            return out, "bound"
        x_new, value = _optimise_others(negative, x, i, at, lo, hi)
        rise = (ref - value) - prev
        if rise > threshold / 2 and step > min_step:
            step /= 2  # too coarse (or a failed solve): retry closer
            continue
        if not math.isfinite(value):
            return out, "failed"
        inner = (float(x[i]), ref - prev, x)
        out.append((at, value, x_new))
        x, prev = x_new, ref - value
        if prev > threshold:
            return out + _refine(negative, i, inner, out[-1], ref - threshold, bounds), "closed"
        if at in (lo[i], hi[i]):
            return out, "bound"
        if rise < threshold / 10:
            step = min(2 * step, max_step)
    return out, "points"


def _refine(
    negative: _Counter, i: int, inner: tuple[float, float, np.ndarray], outer: tuple[float, float, np.ndarray],
    level: float, bounds: tuple[np.ndarray, np.ndarray], tolerance: float = 1e-3, iterations: int = 12,
) -> list[tuple[float, float, np.ndarray]]:  # fmt: skip
    """Points between ``inner`` (value above ``level``) and ``outer`` (below) converging on the
    crossing ``value = level`` (Illinois false position), so the interval is not limited by the grid."""
    (ta, va, xa), (tb, vb, _) = inner, outer
    fa, fb, last, out = va - level, vb - level, 0, []
    for _ in range(iterations):
        t = tb - fb * (tb - ta) / (fb - fa)
        x, v = _optimise_others(negative, xa, i, t, *bounds)
        if not math.isfinite(v):
            break
        out.append((t, v, x))
        f = v - level
        if abs(f) < tolerance:
            break
        if f > 0:
            ta, fa, xa = t, f, x
            fb, last = (fb / 2 if last == 1 else fb), 1
        else:
            tb, fb = t, f
            fa, last = (fa / 2 if last == -1 else fa), -1
    return out


def _crossing(theta: np.ndarray, drop: np.ndarray, top: int, direction: int, threshold: float) -> float:
    """Where the drop first exceeds ``threshold`` walking from ``top`` (linear interpolation)."""
    j = top
    while 0 <= j + direction < len(theta):
        k = j + direction
        if drop[k] > threshold:
            f = (threshold - drop[j]) / (drop[k] - drop[j])
            return float(theta[j] + f * (theta[k] - theta[j]))
        j = k
    return -math.inf if direction < 0 else math.inf


def _one_profile(
    negative: _Counter, objective: Objective, i: int, theta0: np.ndarray, ref: float,
    threshold: float, points: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[Side, Side]]:  # fmt: skip
    bounds = (objective.problem.lower, objective.problem.upper)
    left, s_lo = _walk(negative, theta0, i, -1, bounds, ref, threshold, points)
    right, s_hi = _walk(negative, theta0, i, +1, bounds, ref, threshold, points)
    walked = sorted([*left, (float(theta0[i]), ref, theta0), *right], key=lambda w: w[0])
    theta = np.array([w[0] for w in walked])
    value = np.array([w[1] for w in walked])
    return theta, value, np.stack([w[2] for w in walked]), (s_lo, s_hi)


def _classify(drop: np.ndarray, lower: float, upper: float, flat_tolerance: float) -> Classification:
    if math.isfinite(lower) and math.isfinite(upper):
        return "identifiable"
    if float(np.max(drop)) < flat_tolerance:
        return "flat"
    return "practically non-identifiable"


def profile(
    objective: Objective,
    fit: Any,
    *,
    parameters: Sequence[str] | None = None,
    points: int = 15,
    prior: bool = False,
    confidence: float = 0.95,
    flat_tolerance: float = 0.05,
) -> Profiles:
    """Profile likelihoods (Raue et al. 2009, Bioinformatics 25:1923) around a fit.

    For each parameter ``i`` the walk fixes ``θ_i`` on a grid stepping out from the fit on the
    parameter's scale, both ways, and maximises over the other entries with L-BFGS-B (forward
    sensitivities) warm-started from the neighbouring grid point. The step starts at
    ``(upper - lower) / (2 points)``, is halved when one step drops the profile by more than ``Δ/2``
    and doubled when it drops by less than ``Δ/10``; a side stops when the drop exceeds

    .. math:: \\Delta = \\tfrac12\\,\\chi^2_{1}(\\text{confidence}) \\quad (1.92 \\text{ at } 0.95),

    at the bound, or after ``points`` points. The crossing of a closed side is then located by
    Illinois false position (until the drop is within ``1e-3`` of ``Δ``), so the interval bound
    does not depend on the grid.

    Args:
        objective: the compiled problem.
        fit: a :class:`~immunetwin.calibrate.fit.MapFit` (or anything with ``theta``).
        parameters: ids to profile (default: every estimated parameter).
        points: most grid points on each side.
        prior: profile the log posterior instead of the log likelihood.
        confidence: level of the pointwise confidence intervals.
        flat_tolerance: largest drop (log units) for which an open profile is called ``flat``.

    Returns:
        :class:`Profiles`. ``improved`` says a profile found a better point than the fit (refit).
    """
    ids = objective.problem.free_ids
    chosen = list(ids if parameters is None else parameters)
    for pid in chosen:
        if pid not in ids:
            raise UnknownIdError("estimated parameter to profile", pid, ids)
    theta0 = np.asarray(fit.theta, dtype=float)
    if theta0.shape != (len(ids),):
        raise InputError(
            f"fit.theta has shape {theta0.shape}; problem '{objective.problem.name}' needs ({len(ids)},)"
        )
    if points < 1 or not 0.0 < confidence < 1.0:
        raise InputError(f"profile needs points >= 1 and 0 < confidence < 1, got {points}, {confidence}")
    threshold = 0.5 * float(chi2.ppf(confidence, 1))
    t_start = time.perf_counter()
    with jax.enable_x64(True):
        negative = _Counter(
            objective.jitted("value_and_grad" if prior else "value_and_grad_likelihood")
        )
        ref = -negative(theta0)[0]
        if ref <= -_FAILED:
            raise SolverError(f"the objective of '{objective.problem.name}' is not finite at fit.theta")
        walks = {
            pid: _one_profile(negative, objective, ids.index(pid), theta0, ref, threshold, points)
            for pid in chosen
        }
    best = max(ref, *(float(np.max(w[1])) for w in walks.values()))
    scales = {p.id: p.scale for p in objective.problem.free}
    out = []
    for pid, (theta, value, others, sides) in walks.items():
        drop, top = best - value, int(np.argmax(value))
        lower, upper = (_crossing(theta, drop, top, d, threshold) for d in (-1, 1))
        cls = _classify(value.max() - value, lower, upper, flat_tolerance)
        out.append(Profile(pid, scales[pid], theta, value, others, lower, upper, sides, cls))
    return Profiles(tuple(out), best, threshold, confidence, prior, best > ref + 0.01, negative.calls,
                    time.perf_counter() - t_start)  # fmt: skip


# -- global sensitivity -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sensitivity:
    """Global sensitivity indices of one output.

    Attributes:
        output: the outcome or observable analysed (a function's ``__name__``); ``times``: the time
            of each row of the indices for an output per time point (None for one value: one row).
        method: ``sobol`` (indices ``S1``, ``S1_conf``, ``ST``, ``ST_conf``) or ``morris`` (``mu``,
            ``mu_star``, ``mu_star_conf``, ``sigma``); each an array ``(rows, parameters)``;
            ``*_conf`` are half-widths of bootstrap confidence intervals at ``confidence``.
        parameters, scales, bounds: the parameters varied, the scale each was sampled on (``log10``
            for positive ranges, else ``lin``) and their linear ranges.
        evaluations: model simulations run.
    """

    output: str
    method: str
    parameters: tuple[str, ...]
    scales: tuple[str, ...]
    bounds: tuple[tuple[float, float], ...]
    times: np.ndarray | None
    indices: Mapping[str, np.ndarray]
    confidence: float
    evaluations: int

    def ranking(self, row: int = 0) -> tuple[str, ...]:
        """Parameters by decreasing total-order index (Sobol) or ``mu*`` (Morris) at output ``row``."""
        key = self.indices["ST" if self.method == "sobol" else "mu_star"][row]
        return tuple(self.parameters[j] for j in np.argsort(-key, kind="stable"))

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per (output row, parameter) with every index."""
        rows, dims = next(iter(self.indices.values())).shape
        data: dict[str, Any] = {"parameter": np.tile(self.parameters, rows)}
        if self.times is not None:
            data = {"time": np.repeat(self.times, dims)} | data
        return pd.DataFrame(data | {k: v.reshape(-1) for k, v in self.indices.items()})


@dataclass(frozen=True)
class _Space:
    """The parameters varied, their sampling scales and linear ranges."""

    names: tuple[str, ...]
    scales: tuple[str, ...]
    linear: tuple[tuple[float, float], ...]

    @property
    def salib(self) -> dict[str, Any]:
        """SALib's problem: bounds on the sampling scales."""
        bounds = [
            [math.log10(b) if s == "log10" else b for b in bd]
            for bd, s in zip(self.linear, self.scales, strict=True)
        ]
        return {"num_vars": len(self.names), "names": list(self.names), "bounds": bounds}

    def values(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Linear parameter arrays from samples on the scales."""
        return {
            n: (10.0 ** x[:, j] if s == "log10" else x[:, j])
            for j, (n, s) in enumerate(zip(self.names, self.scales, strict=True))
        }


def _parameter_space(template: Template, parameters: Sequence[str] | None) -> _Space:
    meta = template.metadata
    names = [p for p in meta.parameters if p in template.structure.parameters]
    chosen = list(parameters) if parameters is not None else [p for p in names if meta.parameters[p].estimate]
    for pid in chosen:
        if pid not in names:
            raise UnknownIdError(f"parameter of template '{template.name}'", pid, tuple(names))
    if not chosen:
        raise InputError(f"template '{template.name}': no parameters to vary")
    bounds = [tuple(float(x) for x in meta.parameters[p].range) for p in chosen]
    for pid, (lo, hi) in zip(chosen, bounds, strict=True):
        if not lo < hi:
            raise InputError(f"template '{template.name}': parameter '{pid}' has an empty range [{lo}, {hi}]")
    scales = tuple("log10" if lo > 0 else "lin" for lo, _ in bounds)
    return _Space(tuple(chosen), scales, tuple(bounds))  # type: ignore[arg-type]


def _outputs(
    template: Template, output: Output, x: np.ndarray, space: _Space, times: np.ndarray,
    schedule: Schedule | None, controls: Controls, chunk_size: int,
) -> np.ndarray:  # fmt: skip
    """Simulate the cohort of samples ``x`` (on the scales) and evaluate ``output``: ``(B, rows)``."""
    pars = space.values(x)
    traj = simulate_cohort(template.model, times, parameters=pars, schedule=schedule, controls=controls,
                           chunk_size=chunk_size)  # fmt: skip
    if not np.all(traj.ok):
        bad = int(np.flatnonzero(~traj.ok)[0])
        raise SolverError(f"{int(np.sum(~traj.ok))} of {len(traj)} simulations failed "
                          f"(first: {_point(pars, bad)}, status {traj.status[bad]})")  # fmt: skip
    if callable(output):
        y = np.asarray(output(traj), dtype=float)
    elif output in template.metadata.outcomes:
        y = np.asarray(template.outcomes(traj)[output], dtype=float)
    else:
        y = np.asarray(template.observe(traj)[output], dtype=float)
    y = y[:, None] if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[0] != len(traj) or y.shape[1] not in (1, len(times)):
        raise InputError(
            f"output '{_name(output)}' must give shape ({len(traj)},) or ({len(traj)}, {len(times)}), got {y.shape}"
        )
    bad_rows = ~np.all(np.isfinite(y), axis=1)
    if bad_rows.any():
        first = int(np.flatnonzero(bad_rows)[0])
        raise InputError(f"output '{_name(output)}' is not finite for {int(bad_rows.sum())} of {len(y)} samples "
                         f"(first: {_point(pars, first)}); narrow the ranges, tighten controls or choose "
                         f"another output")  # fmt: skip
    return y


def _name(output: Output) -> str:
    return output if isinstance(output, str) else getattr(output, "__name__", "output")


def _point(pars: Mapping[str, np.ndarray], i: int) -> str:
    return ", ".join(f"{k}={float(v[i]):.3g}" for k, v in pars.items())


def _analyse(method: str, problem: dict[str, Any], x: np.ndarray, y: np.ndarray, seed: int, confidence: float,
             levels: int) -> dict[str, np.ndarray]:  # fmt: skip
    keys = (
        ("S1", "S1_conf", "ST", "ST_conf")
        if method == "sobol"
        else ("mu", "mu_star", "mu_star_conf", "sigma")
    )
    out = {k: np.zeros((y.shape[1], problem["num_vars"])) for k in keys}
    for r in range(y.shape[1]):
        if np.ptp(y[:, r]) == 0.0:
            continue  # a constant output: no parameter contributes (indices 0 by convention)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if method == "sobol":
                res = sobol_analysis.analyze(
                    problem, y[:, r], calc_second_order=False, conf_level=confidence, seed=seed
                )
            else:
                res = morris_analysis.analyze(
                    problem, x, y[:, r], conf_level=confidence, num_levels=levels, seed=seed
                )
        for k in keys:
            out[k][r] = np.asarray(res[k], dtype=float)
    return out


def sensitivity(
    template: Template,
    output: Output,
    *,
    times: Any,
    key: Any,
    parameters: Sequence[str] | None = None,
    method: Literal["sobol", "morris"] = "sobol",
    n: int = 1024,
    levels: int = 4,
    schedule: Schedule | None = None,
    controls: Controls = Controls(),
    confidence: float = 0.95,
    chunk_size: int = 1024,
) -> Sensitivity:
    """Global sensitivity of a template outcome (``template.outcomes``) or observable over time.

    Parameters vary independently and uniformly over their template ``range`` (on ``log10`` when
    the range is positive). Sobol: ``n`` (a power of 2) scrambled Sobol points, Saltelli's scheme
    without second-order terms (``n (d + 2)`` simulations), first-order and total indices

    .. math:: S_i = \\frac{V[E(Y \\mid X_i)]}{V(Y)}, \\qquad
              S_{T_i} = \\frac{E[V(Y \\mid X_{\\sim i})]}{V(Y)}

    (Saltelli et al. 2010, Comput Phys Commun 181:259; Jansen's estimator for ``S_T``). Morris:
    ``n`` trajectories on a ``levels``-level grid (``n (d + 1)`` simulations), ``μ*`` the mean
    absolute elementary effect and ``σ`` their sd (Campolongo et al. 2007). The model runs as one
    cohort (:func:`immunetwin.simulate_cohort`).

    Args:
        template: the template.
        output: an outcome id, an observable id (indices at each of ``times``), or a function of
            the :class:`~immunetwin.CohortTrajectory` giving ``(B,)`` or ``(B, len(times))`` values.
        times: output times of the simulations (outcomes are computed over them).
        key: ``jax.random.PRNGKey``; seeds the sampling and the bootstrap.
        parameters: ids to vary (default: the template's estimated parameters).
        method: ``sobol`` or ``morris``.
        n: Sobol base sample size (power of 2) or number of Morris trajectories.
        schedule, controls: passed to the simulations.
        confidence: level of the bootstrap confidence intervals.

    Raises:
        UnknownIdError: unknown output or parameter. InputError: bad ``n``, empty range, an output
        that is not finite for some sample. SolverError: a simulation failed.
    """
    meta = template.metadata
    if isinstance(output, str) and output not in meta.outcomes and output not in meta.observables:
        raise UnknownIdError(f"outcome or observable of template '{template.name}'", output,
                             (*meta.outcomes, *meta.observables))  # fmt: skip
    if method not in ("sobol", "morris"):
        raise InputError(f"unknown sensitivity method '{method}' (sobol, morris)")
    if method == "sobol" and (n < 2 or n & (n - 1)):
        raise InputError(f"Sobol sampling needs n a power of 2, got {n}")
    if method == "morris" and n < 2:
        raise InputError(f"Morris needs at least 2 trajectories, got {n}")
    space = _parameter_space(template, parameters)
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    if method == "sobol":
        x = sobol_sampling.sample(space.salib, n, calc_second_order=False, seed=seed)
    else:
        x = morris_sampling.sample(space.salib, n, num_levels=levels, seed=seed)
    ts = np.asarray(times, dtype=float)
    y = _outputs(template, output, x, space, ts, schedule, controls, chunk_size)
    indices = _analyse(method, space.salib, x, y, seed, confidence, levels)
    per_time = y.shape[1] > 1 or (isinstance(output, str) and output in meta.observables)
    return Sensitivity(_name(output), method, space.names, space.scales, space.linear,
                       ts if per_time else None, indices, confidence, len(x))  # fmt: skip


# -- posterior predictive checks --------------------------------------------------------------------


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
    ``InferenceData`` from :mod:`~immunetwin.calibrate.posterior`) the observables are simulated and
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
        h, sigma, ok = jax.jit(jax.vmap(objective.observables))(jnp.asarray(theta))
        good = np.asarray(jnp.all(ok, axis=1))
        if not good.any():
            raise SolverError(f"every draw fails to solve problem '{problem.name}'")
        h, sigma = h[good], sigma[good]
        z = jnp.where(laplace, jax.random.laplace(k_noise, h.shape), jax.random.normal(k_noise, h.shape))
        g_rep = _transform(h, tcode) + sigma * z
        y_safe = jnp.where(present, y, 1.0)
        g_obs = _transform(y_safe, tcode)
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
    ll = _row_log_density(y, h, sigma, tcode, laplace, cens)
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


@dataclass(frozen=True)
class ToleranceCheck:
    """The log-likelihood at one ``theta`` under tighter and tighter solver tolerances.

    ``changes[i] = |ll[i+1] - ll[i]|``; ``spread = max - min``; ``error`` (the last change) estimates
    the numerical error of the second-tightest value. ``finite`` is False if any solve failed.
    """

    rtols: tuple[float, ...]
    atols: tuple[float, ...]
    log_likelihoods: np.ndarray
    changes: np.ndarray
    spread: float
    finite: bool

    @property
    def error(self) -> float:
        return float(self.changes[-1]) if self.changes.size else math.nan

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"rtol": self.rtols, "atol": self.atols, "log_likelihood": self.log_likelihoods,
                             "change": np.concatenate([[np.nan], self.changes])})  # fmt: skip


def tolerance_check(
    problem: Problem,
    theta: Any,
    *,
    rtols: Sequence[float] = (1e-6, 1e-8, 1e-10),
    atol_ratio: float = 1e-2,
    solver: AbstractMethod | None = None,
) -> ToleranceCheck:
    """``log p(y | θ)`` under ``Controls(rtol, atol = rtol * atol_ratio)`` for each of ``rtols``
    (strictly decreasing). The differences between successive values measure the numerical error
    of the likelihood; when they are not small against the differences that matter (1.92 for a 95 %
    profile interval, a fraction of a unit for MCMC), tighten the tolerances. Each tolerance compiles
    its own objective."""
    rt = tuple(float(r) for r in rtols)
    if len(rt) < 2 or any(not 0.0 < r < 1.0 for r in rt) or any(b >= a for a, b in itertools.pairwise(rt)):
        raise InputError(f"rtols must be at least two strictly decreasing values in (0, 1), got {rt}")
    th = np.asarray(theta, dtype=float)
    if th.shape != (len(problem.free),):
        raise InputError(f"theta must have shape ({len(problem.free)},), got {th.shape}")
    at = tuple(r * atol_ratio for r in rt)
    values = []
    with jax.enable_x64(True):
        for r, a in zip(rt, at, strict=True):
            obj = compile_objective(problem, solver=solver, controls=Controls(rtol=r, atol=a))
            values.append(float(jax.jit(obj.log_likelihood)(jnp.asarray(th))))
    ll = np.array(values)
    finite = bool(np.all(np.isfinite(ll)))
    changes = np.abs(np.diff(ll)) if finite else np.full(len(ll) - 1, np.inf)
    return ToleranceCheck(rt, at, ll, changes, float(ll.max() - ll.min()) if finite else math.inf, finite)
