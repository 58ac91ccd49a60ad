"""Global sensitivity of a template outcome or observable over the template's parameter ranges.

With SALib (Herman & Usher 2017, JOSS 2:97): Sobol indices (Saltelli et al. 2010, Comput Phys
Commun 181:259) or Morris elementary effects (Campolongo et al. 2007, Environ Model Softw 22:1509).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import numpy as np
import pandas as pd
from SALib.analyze import morris as morris_analysis
from SALib.analyze import sobol as sobol_analysis
from SALib.sample import morris as morris_sampling
from SALib.sample import sobol as sobol_sampling

from immunetwin.engines.integrate import Controls
from immunetwin.engines.ode import CohortTrajectory, simulate_cohort
from immunetwin.errors import InputError, SolverError, UnknownIdError
from immunetwin.spec.schedule import Schedule
from immunetwin.templates import Template

__all__ = [
    "Output",
    "Sensitivity",
    "sensitivity",
]


_FAILED = 1e30  # objective value where a solve fails (keeps L-BFGS-B's line search finite)
Classification = Literal["identifiable", "practically non-identifiable", "flat"]
Side = Literal["closed", "bound", "points", "failed"]
#: What a sensitivity analysis measures: a template outcome or observable id, or a function of the
#: cohort trajectory returning one value per patient ``(B,)`` or one per time ``(B, T)``.
Output = str | Callable[[CohortTrajectory], Any]


# -- profile likelihood -----------------------------------------------------------------------------


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
