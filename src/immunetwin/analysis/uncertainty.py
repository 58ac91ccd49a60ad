"""Algorithmic uncertainty: the log-likelihood under successively tighter ODE tolerances."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from immunetwin.engines.integrate import Controls
from immunetwin.engines.ode import CohortTrajectory
from immunetwin.engines.solvers import AbstractMethod
from immunetwin.engines.xla import jit
from immunetwin.errors import InputError
from immunetwin.inference.likelihood import (
    compile_objective,
)
from immunetwin.inference.problem import Problem

__all__ = [
    "ToleranceCheck",
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
            values.append(float(jit(obj.log_likelihood)(jnp.asarray(th))))
    ll = np.array(values)
    finite = bool(np.all(np.isfinite(ll)))
    changes = np.abs(np.diff(ll)) if finite else np.full(len(ll) - 1, np.inf)
    return ToleranceCheck(rt, at, ll, changes, float(ll.max() - ll.min()) if finite else math.inf, finite)
