"""Identifiability: profile likelihoods and likelihood-based confidence intervals.

:func:`profile` (Raue et al. 2009, Bioinformatics 25:1923). For parameter ``i`` the profile is
``PL(θ_i) = max_{θ_j, j≠i} log p(y | θ)``; the confidence interval at level ``1 - α`` is
``{θ_i : PL(θ_hat) - PL(θ_i) < Δ}``, ``Δ = χ²_{1,1-α} / 2`` (1.92 at 95 %, pointwise).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.stats import chi2

from immunetwin.engines.ode import CohortTrajectory
from immunetwin.errors import InputError, SolverError, UnknownIdError
from immunetwin.inference.likelihood import (
    Objective,
)
from immunetwin.inference.problem import from_scale

__all__ = [
    "Profile",
    "Profiles",
    "profile",
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
        fit: a :class:`~immunetwin.inference.fit.MapFit` (or anything with ``theta``).
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
        negative = _Counter(objective.jitted("value_and_grad" if prior else "value_and_grad_likelihood"))
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
