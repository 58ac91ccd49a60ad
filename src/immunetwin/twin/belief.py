"""What a twin believes: weighted particles of the personalised parameters and their latent state.

A belief is a weighted sample :math:`\\{(\\theta_i, w_i)\\}_{i=1}^N` of the posterior
:math:`p(\\theta \\mid y_{1:n}) \\propto p(\\theta) \\prod_k p(y_k \\mid \\theta)` on the problem's
parameter scales (``log10`` for positive parameters), with the log prior and the log likelihood of
all data seen kept per particle (so a sequential update only adds the new rows' terms) and each
particle's latent state at the twin's reference time (so a forecast starts there instead of at
infection). Weighted estimates are self-normalised importance-sampling estimates; the effective
sample size is Kish's

.. math::

    \\mathrm{ESS} = \\Big(\\sum_i w_i\\Big)^2 \\Big/ \\sum_i w_i^2

(Chopin & Papaspiliopoulos 2020, *An Introduction to Sequential Monte Carlo*, Springer, section 8.6).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from immunetwin.errors import InputError
from immunetwin.inference.problem import from_scale

__all__ = ["Belief", "normalise", "weighted_quantiles"]

_ARRAYS = ("theta", "log_weights", "log_likelihood", "log_prior", "states")


def normalise(log_weights: np.ndarray) -> np.ndarray:
    """Log weights shifted so that ``logsumexp`` is 0 (``-inf`` stays ``-inf``).

    Raises:
        InputError: every weight is zero (no particle is compatible with the data).
    """
    lw = np.where(np.isnan(log_weights), -np.inf, np.asarray(log_weights, dtype=float))
    total = logsumexp(lw)
    if not np.isfinite(total):
        raise InputError("every particle has zero weight: no parameter draw is compatible with the data")
    return lw - total


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Quantiles of weighted samples along axis 0: ``values`` (N, ...) -> (len(levels), ...).

    The empirical CDF puts each sample's mass at its midpoint (the Hazen plotting position) and is
    interpolated linearly (constant beyond the extreme samples); with equal weights this is
    ``numpy.quantile(method="hazen")``.
    """
    values = np.asarray(values, dtype=float)
    n = len(values)
    rows = np.ascontiguousarray(values.reshape(n, -1).T)  # (M, N): one series per row
    order = np.argsort(rows, axis=1)
    v = np.take_along_axis(rows, order, axis=1)
    w = np.asarray(weights, dtype=float)[order]
    cw = (np.cumsum(w, axis=1) - 0.5 * w) / np.sum(w, axis=1, keepdims=True)
    m, lv = len(rows), np.asarray(levels, dtype=float)
    offset = 2.0 * np.arange(m)[:, None]  # cw lies in [0, 1]: one sorted array for every series
    k = np.searchsorted((cw + offset).ravel(), (lv[None, :] + offset).ravel()).reshape(m, len(lv))
    k -= n * np.arange(m)[:, None]  # first sample at or above each level, per series
    hi, lo = np.minimum(k, n - 1), np.maximum(k - 1, 0)
    r = np.arange(m)[:, None]
    c_lo, c_hi = cw[r, lo], cw[r, hi]
    width = np.where(c_hi > c_lo, c_hi - c_lo, 1.0)
    frac = np.clip(np.where(c_hi > c_lo, (lv[None, :] - c_lo) / width, 0.0), 0.0, 1.0)
    out = v[r, lo] + frac * (v[r, hi] - v[r, lo])  # (M, L)
    return out.T.reshape((len(lv), *values.shape[1:]))


def _frozen(a: Any) -> np.ndarray:
    out = np.array(a, dtype=float)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Belief:
    """Weighted particles of the personalised parameters (see the module docstring).

    Attributes:
        parameter_ids: personalised parameters, the columns of ``theta``.
        scales: each parameter's scale (``lin``, ``log``, ``log10``): ``theta`` is on these scales.
        theta: (N, d) particles.
        log_weights: (N,) normalised log weights (``logsumexp == 0``).
        log_likelihood: (N,) log likelihood of every measurement seen (``-inf`` where a solve failed).
        log_prior: (N,) log prior density of ``theta``.
        state_ids: model states, the columns of ``states``.
        states: (N, n) latent state of each particle at the twin's reference time.
        method: how the particles were made, e.g. ``"laplace-is+mh"`` or ``"reweighted"``.
        diagnostics: numbers and notes from that method (ESS, Pareto k, acceptance rate, ...).
    """

    parameter_ids: tuple[str, ...]
    scales: tuple[str, ...]
    theta: np.ndarray
    log_weights: np.ndarray
    log_likelihood: np.ndarray
    log_prior: np.ndarray
    state_ids: tuple[str, ...]
    states: np.ndarray
    method: str
    diagnostics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _ARRAYS:
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        n, d = self.theta.shape if self.theta.ndim == 2 else (-1, -1)
        if d != len(self.parameter_ids) or len(self.scales) != d:
            raise InputError(
                f"belief: theta has shape {self.theta.shape} for parameters {self.parameter_ids}"
            )
        for name in ("log_weights", "log_likelihood", "log_prior"):
            if getattr(self, name).shape != (n,):
                raise InputError(f"belief: {name} has shape {getattr(self, name).shape}, expected ({n},)")
        if self.states.shape != (n, len(self.state_ids)):
            raise InputError(
                f"belief: states has shape {self.states.shape}, expected ({n}, {len(self.state_ids)})"
            )
        plain = {str(k): v.item() if isinstance(v, np.generic) else v for k, v in self.diagnostics.items()}
        object.__setattr__(self, "diagnostics", MappingProxyType(plain))

    # -- weights ----------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of particles N."""
        return int(self.theta.shape[0])

    @property
    def weights(self) -> np.ndarray:
        """Normalised weights (sum 1)."""
        return np.exp(self.log_weights)

    @property
    def ess(self) -> float:
        """Kish's effective sample size of the weights."""
        w = self.weights
        return float(1.0 / np.sum(w**2))

    # -- views ------------------------------------------------------------------------------------

    @property
    def values(self) -> dict[str, np.ndarray]:
        """Each parameter's particles on the natural (linear) scale, by id."""
        return {
            p: np.asarray(from_scale(self.theta[:, j], s))
            for j, (p, s) in enumerate(zip(self.parameter_ids, self.scales, strict=True))
        }

    def mean(self) -> np.ndarray:
        """Weighted mean of ``theta`` (on the parameter scales), shape (d,)."""
        return self.weights @ self.theta

    def sd(self) -> np.ndarray:
        """Weighted standard deviation of ``theta``, shape (d,)."""
        return np.sqrt(self.weights @ (self.theta - self.mean()) ** 2)

    def covariance(self) -> np.ndarray:
        """Weighted covariance of ``theta``, (d, d)."""
        centred = self.theta - self.mean()
        return (centred * self.weights[:, None]).T @ centred

    def state(self, ident: str) -> np.ndarray:
        """Particles of one latent state at the reference time, (N,)."""
        if ident not in self.state_ids:
            raise InputError(f"unknown state '{ident}' (states: {', '.join(self.state_ids)})")
        return self.states[:, self.state_ids.index(ident)]

    def summary(self, levels: tuple[float, ...] = (0.05, 0.5, 0.95)) -> pd.DataFrame:
        """Weighted mean, sd and quantiles of each parameter, on its scale and on the natural scale."""
        q = weighted_quantiles(self.theta, self.weights, np.asarray(levels))
        rows = []
        for j, (pid, scale) in enumerate(zip(self.parameter_ids, self.scales, strict=True)):
            nat = [float(from_scale(x, scale)) for x in q[:, j]]
            rows.append({"parameter": pid, "scale": scale, "mean": self.mean()[j], "sd": self.sd()[j]}
                        | {f"q{100 * lv:g}": x for lv, x in zip(levels, nat, strict=True)})  # fmt: skip
        return pd.DataFrame(rows)

    def digest(self) -> str:
        """sha256 of the particle arrays (dtype, shape and bytes), for provenance."""
        h = hashlib.sha256()
        for name in _ARRAYS:
            a = np.ascontiguousarray(getattr(self, name))
            h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def arrays(self) -> dict[str, np.ndarray]:
        """The particle arrays by name (for storage)."""
        return {name: getattr(self, name) for name in _ARRAYS}

    def record(self) -> dict[str, Any]:
        """Everything but the arrays, as plain Python values."""
        return {
            "parameter_ids": list(self.parameter_ids),
            "scales": list(self.scales),
            "state_ids": list(self.state_ids),
            "method": self.method,
            "diagnostics": dict(self.diagnostics),
        }

    def with_weights(self, log_weights: np.ndarray, **changes: Any) -> Belief:
        """A copy with new (normalised) log weights and other fields replaced."""
        fields = {**self.record(), **{k: getattr(self, k) for k in _ARRAYS}}
        fields["parameter_ids"], fields["scales"] = self.parameter_ids, self.scales
        fields["state_ids"] = self.state_ids
        fields.update(changes, log_weights=normalise(log_weights))
        return Belief(**fields)

    def __len__(self) -> int:
        return self.size
