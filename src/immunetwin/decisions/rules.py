"""Decision rules as data: expected utility, and risk minimisation under a harm constraint.

Both rules are Bayes decision rules over the twin's particles (Parmigiani & Inoue 2009, *Decision
Theory: Principles and Approaches*, Wiley): the action chosen is the scenario with the
best posterior expected value of a criterion, estimated by the weighted particle mean.

* :class:`ExpectedUtility`: for particle $i$ under scenario $s$ with metrics $y_{s,i,m}$,

  $$ u_{s,i} = -\\sum_m w_m\\, y_{s,i,m} - \\sum_{a \\in s} c_a, \\qquad
     \\hat s = \\arg\\max_s \\sum_i \\bar w_i\\, u_{s,i}, $$

  with weights $w_m$ per unit of each metric (positive: lower is better) and the cost $c_a$ of each
  intervention $a$ the scenario uses. Choosing by expected value, not by a significance test, is the
  decision-analytic position of Claxton (1999, *J Health Econ* 18:341-364): the Monte Carlo error and
  the interval only say how sure the choice is.
* :class:`MinimiseRisk`: $\\hat s = \\arg\\min_s P_s(\\text{risk})$ subject to $P_s(\\text{harm}) \\le
  h_{\\max}$, with $P_s(E) = \\sum_i \\bar w_i\\, \\mathbb 1[E(y_{s,i})]$ for an :class:`Event` $E$ on one
  metric (``"severe"``: a 0/1 outcome equals 1; ``"lymphocyte_nadir<1"``: a threshold).

Ties (equal values) go to the scenario with fewer interventions, then to the earlier scenario.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from immunetwin.decisions.comparison import ScenarioComparison
from immunetwin.errors import InputError, UnknownIdError

__all__ = ["Event", "ExpectedUtility", "MinimiseRisk", "Rule", "Scores", "event"]

_OPS = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}
_EVENT = re.compile(r"\s*([A-Za-z_]\w*)\s*(?:(<=|>=|<|>)\s*(\S+))?\s*")
#: Slack for comparing a probability (a sum of weights) with a bound: sums of weights are not exact.
_TOLERANCE = 1e-12


def _ties(a: float, b: float) -> bool:
    """Whether two criterion values are equal up to rounding (``_TOLERANCE`` relative)."""
    return abs(a - b) <= _TOLERANCE * max(1.0, abs(a), abs(b))


def _finite(value: object, at: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{at} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise InputError(f"{at} must be finite, got {x}")
    return x


@dataclass(frozen=True)
class Event:
    """An event on one outcome metric: ``metric op threshold``, or a 0/1 outcome equal to 1.

    Attributes:
        metric: the outcome metric, e.g. ``"severe"`` or ``"lymphocyte_nadir"``.
        op: ``"<"``, ``"<="``, ``">"`` or ``">="`` (ignored without a threshold).
        threshold: the bound in the metric's unit; ``None`` means the metric is a 0/1 outcome
            (kind ``exceeds``) and the event is that it equals 1.
    """

    metric: str
    op: str = ">"
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise InputError(
                f"event on '{self.metric}': unknown comparison '{self.op}' (known: <, <=, >, >=)"
            )
        if self.threshold is not None:
            object.__setattr__(self, "threshold", _finite(self.threshold, f"event '{self.metric}' threshold"))

    def __str__(self) -> str:
        return self.metric if self.threshold is None else f"{self.metric} {self.op} {self.threshold:g}"

    def indicator(self, comparison: ScenarioComparison, scenario: str) -> np.ndarray:
        """Whether the event happens for each used particle (uncensored metric values)."""
        x = comparison.metric(scenario, self.metric, censor=False)
        if self.threshold is None:
            if self.metric not in comparison.binary:
                raise InputError(
                    f"'{self.metric}' is not a 0/1 outcome; give a threshold, e.g. '{self.metric} > 0.5'"
                )
            return x >= 0.5
        return _OPS[self.op](x, self.threshold)


def event(spec: str | Event) -> Event:
    """Parse ``"severe"`` (a 0/1 outcome) or ``"lymphocyte_nadir < 1.0"`` into an :class:`Event`."""
    if isinstance(spec, Event):
        return spec
    match = _EVENT.fullmatch(spec) if isinstance(spec, str) else None
    if match is None:
        raise InputError(f"'{spec}' is not an event such as 'severe' or 'lymphocyte_nadir < 1.0'")
    metric, op, raw = match.groups()
    if op is None:
        return Event(metric)
    return Event(metric, op, _finite(raw, f"event '{spec}' threshold"))


@dataclass(frozen=True)
class Scores:
    """A rule's criterion for every scenario of a comparison.

    Attributes:
        criterion: what ``values`` are, e.g. ``"expected utility"`` or ``"P(severe)"``.
        higher_is_better: whether the rule maximises (utility) or minimises (risk).
        per_particle: scenario -> ``(n_used,)`` per-particle criterion (utility, or a 0/1 indicator).
        feasible: scenario -> whether the scenario meets the rule's constraints.
        extra: scenario -> further probabilities shown beside the criterion (e.g. ``P(harm)``).
    """

    criterion: str
    higher_is_better: bool
    per_particle: Mapping[str, np.ndarray]
    feasible: Mapping[str, bool]
    extra: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)


def _mapping(raw: Mapping[str, object] | None, what: str) -> Mapping[str, float]:
    out = {}
    for key, value in dict(raw or {}).items():
        if not isinstance(key, str):
            raise InputError(f"{what}: keys must be names, got {key!r}")
        out[key] = _finite(value, f"{what}['{key}']")
    return MappingProxyType(out)


@dataclass(frozen=True)
class ExpectedUtility:
    """Choose the scenario of highest expected utility $-\\sum_m w_m y_m - \\text{costs}$.

    Attributes:
        weights: metric -> weight per unit of the metric (positive when lower is better, e.g.
            ``{"peak_damage": 100, "time_to_clearance": 1}``: 0.01 of damage is worth one day).
        treatment_costs: intervention -> cost in utility units, paid by every scenario using it.
    """

    weights: Mapping[str, float]
    treatment_costs: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", _mapping(self.weights, "weights"))
        object.__setattr__(self, "treatment_costs", _mapping(self.treatment_costs, "treatment_costs"))
        if not self.weights and not self.treatment_costs:
            raise InputError("ExpectedUtility needs at least one metric weight or treatment cost")

    def check(self, comparison: ScenarioComparison) -> None:
        """Raise :class:`UnknownIdError` for a weight on an unknown metric or a cost on an unknown
        intervention."""
        for m in self.weights:
            if m not in comparison.metrics:
                raise UnknownIdError("outcome metric (in weights)", m, comparison.metrics)
        for a in self.treatment_costs:
            if a not in comparison.interventions:
                raise UnknownIdError("intervention (in treatment_costs)", a, comparison.interventions)

    def cost(self, comparison: ScenarioComparison, scenario: str) -> float:
        """The treatment cost of a scenario: the sum over the interventions it uses."""
        return sum(self.treatment_costs.get(a, 0.0) for a in comparison.scenario(scenario).interventions)

    def utility(self, comparison: ScenarioComparison, scenario: str) -> np.ndarray:
        """$u_{s,i}$ for each used particle (time-to-event metrics censored at the horizon)."""
        u = np.full(int(comparison.used.sum()), -self.cost(comparison, scenario))
        for m, w in self.weights.items():
            u = u - w * comparison.metric(scenario, m)
        return u

    def scores(self, comparison: ScenarioComparison) -> Scores:
        """Per-particle utilities of every scenario (all feasible)."""
        self.check(comparison)
        per = {s: self.utility(comparison, s) for s in comparison.names}
        return Scores("expected utility", True, per, dict.fromkeys(comparison.names, True))

    def terms(self) -> tuple[str, ...]:
        """Names of the adjustable terms: each metric weight, then ``cost:<intervention>``."""
        return (*self.weights, *(f"cost:{a}" for a in self.treatment_costs))

    def term_value(self, term: str) -> float:
        """The value of a term of :meth:`terms` (a weight, or a cost)."""
        return self.treatment_costs[term[5:]] if term.startswith("cost:") else self.weights[term]

    def metrics(self) -> tuple[str, ...]:
        """The outcome metrics the rule reads."""
        return tuple(self.weights)

    def term_part(self, comparison: ScenarioComparison, scenario: str, term: str) -> float:
        """The contribution of one term to a scenario's expected utility."""
        w = comparison.used_weights
        if term.startswith("cost:"):
            iv = term[5:]
            uses = iv in comparison.scenario(scenario).interventions
            return -self.treatment_costs[iv] if uses else 0.0
        return -self.weights[term] * float(np.dot(w, comparison.metric(scenario, term)))

    def describe(self) -> str:
        """The utility as a formula in words."""
        parts = " + ".join(f"{w:g} × {m}" for m, w in self.weights.items()) or "0"
        costs = ", ".join(f"{a} {c:g}" for a, c in self.treatment_costs.items())
        return f"utility = -({parts})" + (f" - treatment costs ({costs})" if costs else "")


@dataclass(frozen=True)
class MinimiseRisk:
    """Minimise $P(\\text{risk})$ subject to $P(\\text{harm}) \\le$ ``max_harm``.

    Attributes:
        risk: the event to make unlikely (an :class:`Event` or its spec); default ``"severe"``.
        harm: the event the treatment must keep rare (e.g. ``"lymphocyte_nadir < 1.0"``); ``None``
            for no constraint.
        max_harm: the largest acceptable $P(\\text{harm})$, in [0, 1].
    """

    risk: Event | str = "severe"
    harm: Event | str | None = None
    max_harm: float = 0.05

    def __post_init__(self) -> None:
        object.__setattr__(self, "risk", event(self.risk))
        if self.harm is not None:
            object.__setattr__(self, "harm", event(self.harm))
        bound = _finite(self.max_harm, "max_harm")
        if not 0.0 <= bound <= 1.0:
            raise InputError(f"max_harm is a probability and must be in [0, 1], got {bound:g}")
        object.__setattr__(self, "max_harm", bound)

    def scores(self, comparison: ScenarioComparison) -> Scores:
        """Risk indicators of every scenario; feasible where $P(\\text{harm}) \\le$ ``max_harm``."""
        assert isinstance(self.risk, Event)
        w = comparison.used_weights
        per = {s: self.risk.indicator(comparison, s).astype(float) for s in comparison.names}
        extra: dict[str, dict[str, np.ndarray]] = {s: {} for s in comparison.names}
        feasible = dict.fromkeys(comparison.names, True)
        if isinstance(self.harm, Event):
            for s in comparison.names:
                harm = self.harm.indicator(comparison, s).astype(float)
                extra[s][f"P({self.harm})"] = harm
                feasible[s] = float(np.dot(w, harm)) <= self.max_harm + _TOLERANCE
        return Scores(f"P({self.risk})", False, per, feasible, extra)

    def metrics(self) -> tuple[str, ...]:
        """The outcome metrics the rule reads (of the risk and the harm event)."""
        events = (self.risk, self.harm)
        return tuple(dict.fromkeys(e.metric for e in events if isinstance(e, Event)))

    def harm_probabilities(self, comparison: ScenarioComparison) -> dict[str, float]:
        """$P(\\text{harm})$ of every scenario (empty without a harm event)."""
        if not isinstance(self.harm, Event):
            return {}
        w = comparison.used_weights
        return {s: float(np.dot(w, self.harm.indicator(comparison, s))) for s in comparison.names}

    def describe(self) -> str:
        """The rule in words."""
        bound = f" subject to P({self.harm}) <= {self.max_harm:g}" if self.harm is not None else ""
        return f"minimise P({self.risk}){bound}"


Rule = ExpectedUtility | MinimiseRisk
