"""``forecast``: predictive quantiles of every observable and latent state from a twin's belief.

Every particle is simulated from its state at the twin's reference time :math:`t_r` over the horizon
(one batched solve; under a treatment schedule that starts before :math:`t_r` the particles are
simulated from the origin instead, so the schedule's past part counts). For each time :math:`t`:

* **model** quantiles of an observable or a latent state :math:`x`: the weighted quantiles of the
  particles' values :math:`x_i(t)` (parameter uncertainty only);
* **predictive** quantiles of an observable: the quantiles of the mixture
  :math:`F(y) = \\sum_i w_i G((y - h_i(t))/\\sigma)` of the measurement noise around each particle
  (parameter and measurement uncertainty: what a new measurement would show), found by safeguarded
  Newton iteration on :math:`F(q) = \\alpha`. They are the central intervals whose coverage
  :mod:`immunetwin.analysis` scores (Gneiting & Raftery 2007, JASA 102:359). Values below an
  observable's limit of detection are shown as modelled (a measurement would report "not
  detected"; ``lod`` gives the limit).

Particles whose solve fails are left out and counted (``failed``), never silently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import pandas as pd
from scipy.special import ndtr
from scipy.stats import laplace, norm

from immunetwin.errors import InputError
from immunetwin.spec.schedule import Schedule
from immunetwin.twin.belief import weighted_quantiles
from immunetwin.twin.particles import natural, simulate_particles
from immunetwin.twin.twin import Twin

__all__ = ["Forecast", "forecast"]

LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)


def _readonly(m: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    out = {}
    for k, v in m.items():
        a = np.array(v, dtype=float)
        a.setflags(write=False)
        out[k] = a
    return MappingProxyType(out)


@dataclass(frozen=True, eq=False)
class Forecast:
    """Predictive quantiles of a twin version over a horizon (see the module docstring).

    Attributes:
        patient, twin_version, reference_time: which twin made it.
        times: (T,) output days.
        levels: quantile levels (increasing).
        model: observable -> (T, L) quantiles of the modelled value.
        predictive: observable -> (T, L) quantiles of a measurement (with noise).
        states: latent state -> (T, L) quantiles (e.g. tissue damage ``D``).
        units: unit of every quantity.
        lod: each observable's limit of detection (None: none).
        particles: particles used; ``failed``: particles whose solve failed (left out).
        scenario: the schedule's description (``"none"`` without one).
    """

    patient: str
    twin_version: int
    reference_time: float
    times: np.ndarray
    levels: tuple[float, ...]
    model: Mapping[str, np.ndarray]
    predictive: Mapping[str, np.ndarray]
    states: Mapping[str, np.ndarray]
    units: Mapping[str, str] = field(repr=False)
    lod: Mapping[str, float | None] = field(repr=False)
    particles: int = 0
    failed: int = 0
    scenario: str = "none"

    def __post_init__(self) -> None:
        times = np.array(self.times, dtype=float)
        times.setflags(write=False)
        object.__setattr__(self, "times", times)
        for name in ("model", "predictive", "states"):
            object.__setattr__(self, name, _readonly(getattr(self, name)))
        object.__setattr__(self, "units", MappingProxyType(dict(self.units)))
        object.__setattr__(self, "lod", MappingProxyType(dict(self.lod)))

    def quantiles(self, name: str, kind: str = "predictive") -> np.ndarray:
        """(T, L) quantiles of ``name``: ``kind`` is ``"predictive"``, ``"model"`` or ``"state"``."""
        table = {"predictive": self.predictive, "model": self.model, "state": self.states}.get(kind)
        if table is None:
            raise InputError(f"unknown forecast kind '{kind}' (predictive, model, state)")
        if name not in table:
            raise InputError(f"no {kind} forecast of '{name}' (known: {', '.join(table)})")
        return np.array(table[name])

    def to_frame(self) -> pd.DataFrame:
        """Long table: quantity, kind, unit, time and one column per level (``q5``, ``q50``, ...)."""
        cols = [f"q{100 * lv:g}" for lv in self.levels]
        parts = []
        for kind, table in (("predictive", self.predictive), ("model", self.model), ("state", self.states)):
            for name, q in table.items():
                part = pd.DataFrame(q, columns=cols)
                part.insert(0, "time", self.times)
                part.insert(0, "unit", self.units.get(name, ""))
                part.insert(0, "kind", kind)
                part.insert(0, "quantity", name)
                parts.append(part)
        return pd.concat(parts, ignore_index=True)


def mixture_quantiles(
    h: np.ndarray, w: np.ndarray, sigma: float, noise: str, levels: np.ndarray, *, tol: float = 1e-8
) -> np.ndarray:
    """Quantiles (T, L) of the mixture ``sum_i w_i G((y - h_i(t)) / sigma)``, ``h`` (N, T).

    Newton's method on ``F(q) - level`` from the moment-matched normal's quantiles, kept inside a bracket
    that every iterate narrows (a step that leaves it is replaced by bisection); entries stop once
    ``|F(q) - level| < tol``. Identical particles (after resampling) are merged first.
    """
    h, inverse = np.unique(h, axis=0, return_inverse=True)
    w = np.bincount(inverse.ravel(), weights=w, minlength=len(h))
    cdf, pdf = (laplace.cdf, laplace.pdf) if noise == "laplace" else (ndtr, _normal_pdf)
    dist = laplace if noise == "laplace" else norm
    n_t, n_l = h.shape[1], len(levels)
    col = np.repeat(np.arange(n_t), n_l)  # each (time, level) entry's time column
    level = np.tile(np.asarray(levels, dtype=float), n_t)
    lo, hi = h.min(axis=0)[col] - 40 * sigma, h.max(axis=0)[col] + 40 * sigma
    mean = w @ h
    spread = np.sqrt(w @ (h - mean) ** 2 + sigma**2)
    start = dist.ppf(np.asarray(levels, dtype=float))  # the moment-matched normal (or Laplace) quantiles
    q = (
        mean[:, None] + spread[:, None] * start[None, :] * (1.0 if noise != "laplace" else 1 / math.sqrt(2))
    ).ravel()
    active = np.arange(len(q))
    for _ in range(100):
        z = (q[active] - h[:, col[active]]) / sigma
        gap = w @ cdf(z) - level[active]
        done = np.abs(gap) < tol
        dens = w @ pdf(z) / sigma
        a_lo, a_hi, a_q = lo[active], hi[active], q[active]
        a_lo, a_hi = np.where(gap < 0, a_q, a_lo), np.where(gap > 0, a_q, a_hi)
        step = a_q - gap / np.where(dens > 0, dens, np.inf)
        inside = (step >= a_lo) & (step <= a_hi) & (dens > 0)
        q[active] = np.where(done, a_q, np.where(inside, step, 0.5 * (a_lo + a_hi)))
        lo[active], hi[active] = a_lo, a_hi
        active = active[~done]
        if active.size == 0:
            break
    return q.reshape(n_t, n_l)


def _normal_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _check(
    twin: Twin, horizon: float, levels: Sequence[float], times: Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray]:
    lv = np.asarray(levels, dtype=float)
    if lv.ndim != 1 or lv.size == 0 or np.any((lv <= 0) | (lv >= 1)) or np.any(np.diff(lv) <= 0):
        raise InputError(f"levels must increase strictly within (0, 1), got {tuple(levels)}")
    t_r = twin.reference_time
    if times is None:
        if not (np.isfinite(horizon) and horizon > 0):
            raise InputError(f"horizon must be a positive number of days, got {horizon}")
        ts = np.unique(np.append(t_r + np.arange(0.0, horizon, 1.0), t_r + horizon))
    else:
        ts = np.asarray(times, dtype=float)
        if ts.ndim != 1 or ts.size == 0 or not np.all(np.isfinite(ts)) or np.any(np.diff(ts) <= 0):
            raise InputError("times must be a non-empty, strictly increasing sequence of finite days")
        if ts[0] < t_r:
            raise InputError(f"forecast time {ts[0]:g} is before the twin's reference time {t_r:g}")
    return ts, lv


def forecast(
    twin: Twin,
    horizon: float = 28.0,
    schedule: Schedule | None = None,
    *,
    levels: Sequence[float] = LEVELS,
    times: Sequence[float] | None = None,
) -> Forecast:
    """Predictive quantiles of every observable and latent state (see the module docstring).

    Args:
        twin: the twin version to forecast from.
        horizon: days after the reference time (daily outputs, both ends included).
        schedule: a treatment scenario (e.g. ``template.intervention("antiviral", start=9)``);
            ``None``: no treatment.
        levels: quantile levels.
        times: explicit output days (at or after the reference time) instead of ``horizon``.

    Raises:
        InputError: a non-positive horizon, bad levels or times, or every particle's solve failed.
    """
    ts, lv = _check(twin, horizon, levels, times)
    b, tpl = twin.belief, twin.template
    past = schedule is not None and any(t < twin.reference_time for t in schedule.times)
    start, states = (0.0, None) if past else (twin.reference_time, b.states)
    out = simulate_particles(
        tpl, natural(b.theta, b.parameter_ids, b.scales), ts, start=start, states=states,
        controls=twin.settings.controls, schedule=schedule,
    )  # fmt: skip
    w = np.where(out.ok, b.weights, 0.0)
    if not w.sum() > 0:
        raise InputError(
            f"forecast of '{twin.patient}': every particle's solve failed ({out.traj.status[0]})"
        )
    w, keep = w / w.sum(), out.ok
    meta = tpl.metadata
    obs = {k: v[keep] for k, v in tpl.observe(out.traj).items()}
    model = {k: weighted_quantiles(v, w[keep], lv).T for k, v in obs.items()}
    predictive = {
        k: mixture_quantiles(v, w[keep], meta.observables[k].noise.sigma, meta.observables[k].noise.model, lv)
        for k, v in obs.items()
    }
    states = {s: weighted_quantiles(out.traj[s][keep], w[keep], lv).T for s in out.traj.state_ids}
    units = {k: o.unit for k, o in meta.observables.items()} | {k: s.unit for k, s in meta.states.items()}
    return Forecast(
        patient=twin.patient, twin_version=twin.version, reference_time=twin.reference_time, times=ts,
        levels=tuple(float(x) for x in lv), model=model, predictive=predictive, states=states, units=units,
        lod={k: o.lloq for k, o in meta.observables.items()}, particles=int(keep.sum()),
        failed=int((~keep).sum()), scenario=_describe(schedule),
    )  # fmt: skip


def _describe(schedule: Schedule | None) -> str:
    if schedule is None or (not schedule.doses and not schedule.inputs):
        return "none"
    parts = [f"{i.target}: " + ", ".join(f"{v:g} from day {t:g}" for t, v in zip(i.times, i.values, strict=True)) for i in schedule.inputs]  # fmt: skip
    parts += [f"dose {d.amount:g} into {d.target} at day {d.time:g}" for d in schedule.doses]
    return "; ".join(parts)
