"""Where virtual patients come from: the template's priors, a fitted population model, or twins.

Each source is a small frozen strategy with one method, ``draw(template, n, rng)``, that returns ``n``
candidate parameter sets on the natural scale, clipped to the template's plausible ranges:

* :class:`FromPrior` - independent draws of each varied parameter from its template prior, truncated
  to the parameter's plausible range (inverse-CDF sampling).
* :class:`FromPopulation` - the *posterior predictive* population of a hierarchical fit
  (:func:`immunetwin.inference.fit_population`): for each virtual patient a posterior draw
  :math:`(\\mu, \\omega)` is picked at random and :math:`\\log\\theta = \\mu + \\omega z`,
  :math:`z \\sim N(0, I)`, so that the uncertainty of the population parameters is carried into the
  cohort (the standard NLME simulation of new subjects; Lavielle 2014, *Mixed Effects Models for the
  Population Approach*, ch. 9).
* :class:`FromTwins` - perturbed copies of personalised twins: a twin is picked uniformly, one of its
  particles by the twin's weights, and every personalised parameter is multiplied by a log-normal factor
  :math:`e^{s \\varepsilon}`, :math:`\\varepsilon \\sim N(0, 1)` (``spread`` :math:`s`).

Parameters a source does not vary keep the template's nominal values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy import stats

from immunetwin.errors import InputError, UnknownIdError
from immunetwin.templates import Template
from immunetwin.templates.metadata import ParameterInfo

__all__ = ["FromPopulation", "FromPrior", "FromTwins", "Source"]

Values = dict[str, np.ndarray]


class Source(Protocol):
    """A population source: ``draw(template, n, rng)`` -> parameter arrays of length ``n`` by id."""

    def draw(self, template: Template, n: int, rng: np.random.Generator) -> Values: ...

    def describe(self) -> str: ...


def _known(template: Template, ids: Sequence[str], what: str) -> tuple[str, ...]:
    known = tuple(template.metadata.parameters)
    for pid in ids:
        if pid not in known:
            raise UnknownIdError(f"template parameter ({what})", pid, known)
    return tuple(ids)


def _clip(template: Template, values: Values) -> Values:
    meta = template.metadata.parameters
    return {k: np.clip(v, *meta[k].range) for k, v in values.items()}


def truncated_prior_ppf(info: ParameterInfo, u: np.ndarray) -> np.ndarray:
    """Quantiles ``u`` in (0, 1) of the parameter's prior truncated to its plausible range.

    ``lognormal(median m, sigma s)`` is :math:`\\ln x \\sim N(\\ln m, s^2)`; ``normal``, ``laplace`` and
    ``uniform`` are on the natural scale.
    """
    prior, (lo, hi) = info.prior, info.range
    a = dict(prior.parameters)
    if prior.distribution == "lognormal":
        dist, lo_v, hi_v = stats.norm(math.log(a["median"]), a["sigma"]), math.log(lo), math.log(hi)
    elif prior.distribution == "normal":
        dist, lo_v, hi_v = stats.norm(a["mean"], a["sd"]), lo, hi
    elif prior.distribution == "laplace":
        dist, lo_v, hi_v = stats.laplace(a["location"], a["scale"]), lo, hi
    else:
        dist, lo_v, hi_v = stats.uniform(a["lower"], a["upper"] - a["lower"]), lo, hi
    c_lo, c_hi = dist.cdf(lo_v), dist.cdf(hi_v)
    if not c_hi > c_lo:
        raise InputError(f"the prior of a parameter puts no mass on its plausible range [{lo:g}, {hi:g}]")
    y = dist.ppf(c_lo + u * (c_hi - c_lo))
    x = np.exp(y) if prior.distribution == "lognormal" else y
    return np.clip(x, lo, hi)


@dataclass(frozen=True)
class FromPrior:
    """Independent draws from the template priors (truncated to the plausible ranges).

    Attributes:
        parameters: the ids to vary; ``None`` varies every parameter the template marks ``estimate``.
    """

    parameters: tuple[str, ...] | None = None

    def varied(self, template: Template) -> tuple[str, ...]:
        if self.parameters is None:
            return tuple(k for k, p in template.metadata.parameters.items() if p.estimate)
        return _known(template, self.parameters, "FromPrior.parameters")

    def draw(self, template: Template, n: int, rng: np.random.Generator) -> Values:
        ids = self.varied(template)
        u = rng.random((n, len(ids)))
        meta = template.metadata.parameters
        return {pid: truncated_prior_ppf(meta[pid], u[:, j]) for j, pid in enumerate(ids)}

    def describe(self) -> str:
        which = ", ".join(self.parameters) if self.parameters else "the estimated parameters"
        return f"template priors of {which}, truncated to the plausible ranges"


@dataclass(frozen=True)
class FromPopulation:
    """New subjects from a hierarchical fit's posterior (random effects on the log scale).

    Attributes:
        fit: a :class:`~immunetwin.inference.population.PopulationFit` of the same template.
    """

    fit: Any

    def draw(self, template: Template, n: int, rng: np.random.Generator) -> Values:
        random = _known(template, tuple(self.fit.random), "population fit")
        mu, omega = np.asarray(self.fit.draws("mu")), np.asarray(self.fit.draws("omega"))
        pick = rng.integers(0, mu.shape[0], size=n)
        z = rng.standard_normal((n, len(random)))
        log_theta = mu[pick] + omega[pick] * z
        return _clip(template, {pid: np.exp(log_theta[:, k]) for k, pid in enumerate(random)})

    def describe(self) -> str:
        return f"posterior predictive of a population fit ({len(self.fit.patients)} patients)"


@dataclass(frozen=True)
class FromTwins:
    """Perturbed copies of personalised twins of the same template.

    Attributes:
        twins: the twins (:class:`~immunetwin.twin.Twin`).
        spread: sd of the log-normal perturbation factor of each personalised parameter.
    """

    twins: tuple[Any, ...]
    spread: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "twins", tuple(self.twins))
        if not self.twins:
            raise InputError("FromTwins needs at least one twin")
        if not (math.isfinite(self.spread) and self.spread >= 0):
            raise InputError(f"FromTwins.spread must be a finite number >= 0, got {self.spread}")

    def draw(self, template: Template, n: int, rng: np.random.Generator) -> Values:
        for twin in self.twins:
            if twin.template_name != template.name:
                raise InputError(f"twin of patient '{twin.patient}' is a {twin.template_name} twin, "
                                 f"not {template.name}")  # fmt: skip
        which = rng.integers(0, len(self.twins), size=n)
        u = rng.random(n)
        eps_all = rng.standard_normal((n, max(len(t.belief.parameter_ids) for t in self.twins)))
        out: dict[str, np.ndarray] = {}
        for t, twin in enumerate(self.twins):
            rows = np.flatnonzero(which == t)
            belief = twin.belief
            cdf = np.cumsum(belief.weights)
            particle = np.minimum(np.searchsorted(cdf / cdf[-1], u[rows], side="right"), belief.size - 1)
            values = belief.values
            for j, pid in enumerate(belief.parameter_ids):
                col = out.setdefault(pid, np.full(n, template.metadata.parameters[pid].value))
                col[rows] = values[pid][particle] * np.exp(self.spread * eps_all[rows, j])
        return _clip(template, out)

    def describe(self) -> str:
        return f"{len(self.twins)} personalised twins, perturbed by log-normal factors (sd {self.spread:g})"
