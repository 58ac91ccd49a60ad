"""Scoring new measurements against what the twin predicted before it saw them; drift alerts.

Before a twin absorbs a measurement :math:`y` of an observable at time :math:`t`, its predictive
distribution for that measurement is the particle mixture of the observable's noise model,

.. math::

    F(y) = \\sum_i w_i\\, G\\big((y - h_i(t)) / \\sigma\\big),

with :math:`h_i(t)` particle :math:`i`'s model value on the observable's scale (log10 for viral
loads, so percentiles are in log space) and :math:`G` the standard normal (or Laplace) CDF. The
measurement's predictive percentile is :math:`F(y)`, its probability integral transform (PIT;
Dawid 1984, JRSS A 147:278; Gneiting, Balabdaoui & Raftery 2007, JRSS B 69:243). A censored row
(below the limit of detection :math:`L`) has percentile :math:`F(L) = P(y \\le L)`: it is surprising
only when the twin thought a value that low improbable.

A percentile outside the central ``band`` (default 95%: below 2.5% or above 97.5%) raises an
:class:`Alert` on the new twin. Every score is kept (:class:`Score`), alerts or not, for the
template-level drift test (:func:`immunetwin.twin.drift_signal`). Under a calibrated twin the PIT of
an uncensored row is uniform on (0, 1), so its probit :math:`z = \\Phi^{-1}(F(y))` is standard normal;
a censored row's PIT is uniform on :math:`(0, F(L))`, and it contributes the conditional mean
:math:`E[z \\mid z < \\Phi^{-1}(F(L))] = -\\varphi(\\Phi^{-1}(F(L)))/F(L)`, which keeps the pooled mean
zero under the null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtri
from scipy.stats import norm

from immunetwin.templates import Template
from immunetwin.twin.observations import Observations
from immunetwin.twin.particles import noise_cdf

__all__ = ["Alert", "Score", "score_rows"]

_EPS = 1e-12


@dataclass(frozen=True)
class Score:
    """One absorbed measurement scored against the twin's prediction made before it.

    Attributes:
        time, observable, value, censored: the measurement (value on the observable's scale).
        percentile: predictive percentile (PIT) in [0, 1]; for a censored row ``P(y <= limit)``.
        probit: :math:`\\Phi^{-1}` of the percentile (for censored rows the conditional mean; see the
            module docstring).
        version: the twin version that made the prediction.
    """

    time: float
    observable: str
    value: float
    censored: bool
    percentile: float
    probit: float
    version: int


@dataclass(frozen=True)
class Alert:
    """A measurement outside the central predictive band of the twin that had not yet seen it.

    Attributes:
        time, observable, value: the measurement.
        percentile: its predictive percentile (PIT).
        band: the central band it fell outside (e.g. 0.95).
        message: plain language, e.g. "viral_load 6.00 at day 20.0 is above the 97.5th percentile ...".
        version: the twin version that made the prediction.
    """

    time: float
    observable: str
    value: float
    percentile: float
    band: float
    message: str
    version: int


def _probit(percentile: float, censored: bool) -> float:
    p = min(max(percentile, _EPS), 1 - _EPS)
    if not censored:
        return float(ndtri(p))
    return float(-norm.pdf(ndtri(p)) / p)


def _message(
    name: str, unit: str, value: float, time: float, percentile: float, band: float, censored: bool
) -> str:
    lo, hi = 50 * (1 - band), 50 * (1 + band)
    if censored:
        return (
            f"{name} below the detection limit ({value:g} {unit}) at day {time:g}: the twin gave that only"
            f" {100 * percentile:.2g}% probability (below the {lo:g}th percentile)"
        )
    side = f"above the {hi:g}th" if percentile > 0.5 else f"below the {lo:g}th"
    return (
        f"{name} {value:.3g} {unit} at day {time:g} is {side} percentile of the twin's forecast"
        f" (percentile {100 * percentile:.3g}%)"
    )


def score_rows(
    template: Template, obs: Observations, h: np.ndarray, weights: np.ndarray, *, band: float, version: int
) -> tuple[tuple[Score, ...], tuple[Alert, ...]]:
    """Scores of every row and alerts for those outside the central ``band``.

    Args:
        template: observables and their noise.
        obs: the new measurements.
        h: (N, R) each particle's model value for each row, NaN where its solve failed.
        weights: (N,) normalised particle weights before the update.
        band: central predictive band (0 < band < 1).
        version: version of the twin that made the prediction.
    """
    ok = np.all(np.isfinite(h), axis=1)
    w = np.where(ok, weights, 0.0)
    w = w / w.sum()
    cdf = noise_cdf(template, obs, obs.value[None, :], np.where(ok[:, None], h, 0.0))
    percentiles = w @ cdf
    scores: list[Score] = []
    alerts: list[Alert] = []
    lo, hi = (1 - band) / 2, (1 + band) / 2
    units = template.metadata.observables
    for r, p in enumerate(percentiles):
        t, name, v, c = float(obs.time[r]), str(obs.observable[r]), float(obs.value[r]), bool(obs.censored[r])
        scores.append(Score(t, name, v, c, float(p), _probit(float(p), c), version))
        if p < lo or (p > hi and not c):
            msg = _message(name, units[name].unit, v, t, float(p), band, c)
            alerts.append(Alert(t, name, v, float(p), band, msg, version))
    return tuple(scores), tuple(alerts)


def as_record(item: Any) -> dict[str, Any]:
    """A score or alert as a plain dict (for storage and provenance)."""
    return dict(item.__dict__)
