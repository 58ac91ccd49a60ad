"""``decide(comparison, rule)``: the action, the numbers behind it, and how sensitive it is.

The decision names the chosen scenario (TREAT if it gives anything, DO NOT TREAT if it is the
scenario without treatment), its margin over the runner-up with the Monte Carlo standard error of the
paired per-particle difference (so the error reflects common random numbers), per-scenario values,
probabilities and credible intervals, plain-language reasons, and a one-way sensitivity analysis
(Parmigiani & Inoue 2009; Claxton 1999 for why the expected value decides):

* :class:`~immunetwin.decisions.rules.ExpectedUtility`: each weight $w_m$ (and each treatment cost)
  is scaled by a factor $f$ over ``scan`` (default 0.1x to 10x). Expected utilities are linear in $f$,
  $\\mathrm{EU}_s(f) = \\mathrm{EU}_s + (f - 1)\\,c_s$ with $c_s$ the term's contribution, so the choice can
  only change where two lines cross, $f^* = 1 + (\\mathrm{EU}_t - \\mathrm{EU}_s)/(c_s - c_t)$: the
  switch points are computed exactly, not read off a grid.
* :class:`~immunetwin.decisions.rules.MinimiseRisk`: ``max_harm`` is scaled the same way; the feasible
  set (and so the choice) only changes where $f\\,h_{\\max}$ reaches some $P_s(\\text{harm})$.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

import pandas as pd

from immunetwin.decisions.comparison import ScenarioComparison
from immunetwin.decisions.reasons import reasons
from immunetwin.decisions.rules import _TOLERANCE, ExpectedUtility, MinimiseRisk, Rule, Scores, _ties
from immunetwin.decisions.stats import weighted_mcse, weighted_mean, weighted_quantile
from immunetwin.errors import InputError, UnknownIdError

__all__ = ["Action", "Decision", "ScenarioScore", "Sensitivity", "Switch", "decide"]


class Action(StrEnum):
    """What the decision recommends."""

    TREAT = "TREAT"
    DO_NOT_TREAT = "DO NOT TREAT"
    NONE_FEASIBLE = "NO FEASIBLE SCENARIO"


@dataclass(frozen=True)
class ScenarioScore:
    """The rule's criterion for one scenario, and the probabilities and intervals behind it.

    ``lower``/``upper`` bound the central credible interval of the per-particle criterion (utility);
    NaN for probability criteria. ``probabilities`` holds P(=1) of every 0/1 metric and the rule's
    events; ``intervals`` the credible interval of each metric the rule uses.
    """

    scenario: str
    treats: bool
    value: float
    mcse: float
    lower: float
    upper: float
    feasible: bool
    probabilities: Mapping[str, float]
    intervals: Mapping[str, tuple[float, float]]


@dataclass(frozen=True)
class Switch:
    """Where a scaled term changes the choice: at ``factor`` x the base value (``value``)."""

    factor: float
    value: float
    before: str | None
    after: str | None


@dataclass(frozen=True)
class Sensitivity:
    """One-way sensitivity of the choice to one term (a weight, a cost, or ``max_harm``).

    Attributes:
        term: the metric weighted, ``cost:<intervention>`` or ``max_harm``.
        base: the term's value in the rule.
        scanned: the factor range examined.
        unchanged: the factor range around 1 over which the choice stays the same.
        switches: each factor in ``scanned`` where the choice changes (``None``: nothing feasible).
    """

    term: str
    base: float
    scanned: tuple[float, float]
    unchanged: tuple[float, float]
    switches: tuple[Switch, ...]

    @property
    def robust(self) -> bool:
        """Whether the choice is the same over the whole scanned range."""
        return not self.switches


@dataclass(frozen=True)
class Decision:
    """A treatment decision with its evidence.

    Attributes:
        action: TREAT, DO NOT TREAT, or NO FEASIBLE SCENARIO.
        chosen: the chosen scenario (``None`` when none is feasible); ``runner_up`` the next best.
        rule: the rule applied; ``criterion`` what its values are; ``higher_is_better`` its direction.
        scores: one :class:`ScenarioScore` per scenario, in the comparison's order.
        margin: how much better ``chosen`` is than ``runner_up`` (NaN without one), and ``margin_mcse``
            its Monte Carlo standard error from the paired per-particle differences.
        reasons: plain-language sentences for reports.
        sensitivity: one :class:`Sensitivity` per rule term.
        ess: Kish effective sample size of the particles used; ``excluded``: particles dropped
            because a solve failed.
    """

    action: Action
    chosen: str | None
    runner_up: str | None
    rule: Rule
    criterion: str
    higher_is_better: bool
    scores: tuple[ScenarioScore, ...]
    margin: float
    margin_mcse: float
    reasons: tuple[str, ...]
    sensitivity: tuple[Sensitivity, ...] = field(default=())
    ess: float = math.nan
    excluded: int = 0

    def score(self, scenario: str) -> ScenarioScore:
        """The score of one scenario."""
        for s in self.scores:
            if s.scenario == scenario:
                return s
        raise UnknownIdError("scenario", scenario, tuple(s.scenario for s in self.scores))

    def to_frame(self) -> pd.DataFrame:
        """One row per scenario: value, error, interval, feasibility, probabilities and intervals."""
        rows = []
        for s in self.scores:
            row = {
                k: getattr(s, k)
                for k in ("scenario", "treats", "value", "mcse", "lower", "upper", "feasible")
            }
            row |= dict(s.probabilities)
            row |= {
                f"{m} {e}": b
                for m, (lo, hi) in s.intervals.items()
                for e, b in (("lower", lo), ("upper", hi))
            }
            rows.append(row | {"chosen": s.scenario == self.chosen})
        return pd.DataFrame(rows)


def _ranking(
    names: Sequence[str],
    values: Mapping[str, float],
    feasible: Mapping[str, bool],
    higher: bool,
    size: Mapping[str, int],
) -> list[str]:
    """Feasible scenarios, best first. Values within rounding (``1e-12`` relative) tie; ties go to fewer
    interventions, then to the earlier scenario."""
    sign = 1.0 if higher else -1.0
    order = {s: k for k, s in enumerate(names)}
    ranked = sorted((s for s in names if feasible[s]), key=lambda s: -sign * values[s])
    groups: list[list[str]] = []
    for s in ranked:
        if groups and _ties(values[groups[-1][0]], values[s]):
            groups[-1].append(s)
        else:
            groups.append([s])
    return [s for g in groups for s in sorted(g, key=lambda s: (size[s], order[s]))]


def _sizes(c: ScenarioComparison) -> dict[str, int]:
    """How many interventions each scenario gives (a bare schedule counts as one)."""
    return {s.name: len(s.interventions) or int(s.treats) for s in c.scenarios}


Choice = Callable[[float], str | None]


def _segments(choose: Choice, cuts: Sequence[float], lo: float, hi: float) -> list[list]:
    """Merged ``[a, b, choice]`` pieces of ``[lo, hi]``; the choice is constant between cuts."""
    points = sorted({lo, hi, *(c for c in cuts if lo < c < hi)})
    pieces: list[list] = []
    for a, b in itertools.pairwise(points):
        choice = choose(math.sqrt(a * b))
        if pieces and pieces[-1][2] == choice:
            pieces[-1][1] = b
        else:
            pieces.append([a, b, choice])
    return pieces


def _sensitivity(
    term: str, base: float, choose: Choice, cuts: Sequence[float], scan: tuple[float, float]
) -> Sensitivity:
    """Scan the factor on one term; the choice can only change at ``cuts``."""
    pieces = _segments(choose, cuts, *scan)
    at_one = choose(1.0)
    around = [(a, b) for a, b, c in pieces if a <= 1.0 <= b and c == at_one]
    unchanged = (min(a for a, _ in around), max(b for _, b in around)) if around else (1.0, 1.0)
    switches = tuple(Switch(p[1], base * p[1], p[2], q[2]) for p, q in itertools.pairwise(pieces))
    return Sensitivity(term, base, scan, unchanged, switches)


def _utility_sensitivity(
    c: ScenarioComparison, rule: ExpectedUtility, eu: Mapping[str, float], scan: tuple[float, float]
) -> tuple[Sensitivity, ...]:
    """$\\mathrm{EU}_s(f) = \\mathrm{EU}_s + (f - 1) c_s$ per term; cuts where two lines cross."""
    size, everyone = _sizes(c), dict.fromkeys(c.names, True)
    out = []
    for term in rule.terms():
        part = {s: rule.term_part(c, s, term) for s in c.names}
        cuts = [
            1.0 + (eu[t] - eu[s]) / (part[s] - part[t])
            for s in c.names
            for t in c.names
            if part[s] != part[t]
        ]

        def choose(f: float, part: dict = part) -> str | None:
            scaled = {s: eu[s] + (f - 1.0) * part[s] for s in c.names}
            return _ranking(c.names, scaled, everyone, True, size)[0]

        out.append(_sensitivity(term, rule.term_value(term), choose, cuts, scan))
    return tuple(out)


def _harm_sensitivity(
    c: ScenarioComparison, rule: MinimiseRisk, risk: Mapping[str, float], scan: tuple[float, float]
) -> tuple[Sensitivity, ...]:
    """The feasible set changes only where ``f * max_harm`` reaches some $P_s(\\text{harm})$."""
    harm = rule.harm_probabilities(c)
    if not harm or rule.max_harm == 0.0:
        return ()
    size = _sizes(c)

    def choose(f: float) -> str | None:
        ok = {s: harm[s] <= f * rule.max_harm + _TOLERANCE for s in c.names}
        ranked = _ranking(c.names, risk, ok, False, size)
        return ranked[0] if ranked else None

    cuts = [p / rule.max_harm for p in harm.values()]
    return (_sensitivity("max_harm", rule.max_harm, choose, cuts, scan),)


def _score(c: ScenarioComparison, scores: Scores, rule: Rule, name: str) -> ScenarioScore:
    w = c.used_weights
    x = scores.per_particle[name]
    lo, hi = math.nan, math.nan
    probs = {f"P({m})": c.summary(name, m).mean for m in c.metrics if m in c.binary}
    probs |= {k: weighted_mean(v, w) for k, v in scores.extra.get(name, {}).items()}
    if scores.higher_is_better:  # a utility: its credible interval over the particles
        lo, hi = (float(v) for v in weighted_quantile(x, w, [(1 - c.level) / 2, (1 + c.level) / 2]))
    else:  # a probability, shown beside the others
        probs[scores.criterion] = weighted_mean(x, w)
    intervals = {m: (c.summary(name, m).lower, c.summary(name, m).upper) for m in rule.metrics()}
    return ScenarioScore(
        name,
        c.scenario(name).treats,
        weighted_mean(x, w),
        weighted_mcse(x, w),
        lo,
        hi,
        scores.feasible[name],
        MappingProxyType(probs),
        MappingProxyType(intervals),
    )


def _check_scan(scan: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in scan)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo < 1.0 < hi):
        raise InputError(f"scan must be a factor range (lo, hi) with 0 < lo < 1 < hi, got {scan}")
    return lo, hi


def _margin(
    c: ScenarioComparison, scores: Scores, best: str | None, runner: str | None
) -> tuple[float, float]:
    """How much better ``best`` is than ``runner``, and the MCSE of the paired difference."""
    if best is None or runner is None:
        return math.nan, math.nan
    sign = 1.0 if scores.higher_is_better else -1.0
    d = sign * (scores.per_particle[best] - scores.per_particle[runner])
    return weighted_mean(d, c.used_weights), weighted_mcse(d, c.used_weights)


def _action(c: ScenarioComparison, chosen: str | None) -> Action:
    if chosen is None:
        return Action.NONE_FEASIBLE
    return Action.TREAT if c.scenario(chosen).treats else Action.DO_NOT_TREAT


def decide(
    comparison: ScenarioComparison, rule: Rule, *, scan: tuple[float, float] = (0.1, 10.0)
) -> Decision:
    """Apply a decision rule to a scenario comparison.

    Args:
        comparison: from :func:`~immunetwin.decisions.compare_scenarios` (or ``from_values``).
        rule: :class:`~immunetwin.decisions.ExpectedUtility` or
            :class:`~immunetwin.decisions.MinimiseRisk`.
        scan: factor range for the sensitivity analysis of each weight, cost or ``max_harm``.

    Raises:
        UnknownIdError: the rule names a metric or intervention the comparison does not have.
        InputError: an event without threshold on a metric that is not 0/1, or a bad ``scan``.
    """
    if not isinstance(rule, ExpectedUtility | MinimiseRisk):
        raise InputError(f"rule must be ExpectedUtility or MinimiseRisk, got {type(rule).__name__}")
    scan = _check_scan(scan)
    scores = rule.scores(comparison)
    table = tuple(_score(comparison, scores, rule, s) for s in comparison.names)
    values = {s.scenario: s.value for s in table}
    ranked = _ranking(comparison.names, values, scores.feasible, scores.higher_is_better, _sizes(comparison))
    chosen = ranked[0] if ranked else None
    runner = ranked[1] if len(ranked) > 1 else None
    margin, margin_mcse = _margin(comparison, scores, chosen, runner)
    if isinstance(rule, ExpectedUtility):
        sensitivity = _utility_sensitivity(comparison, rule, values, scan)
    else:
        sensitivity = _harm_sensitivity(comparison, rule, values, scan)
    decision = Decision(
        action=_action(comparison, chosen),
        chosen=chosen,
        runner_up=runner,
        rule=rule,
        criterion=scores.criterion,
        higher_is_better=scores.higher_is_better,
        scores=table,
        margin=margin,
        margin_mcse=margin_mcse,
        reasons=(),
        sensitivity=sensitivity,
        ess=comparison.ess,
        excluded=int((~comparison.used).sum()),
    )
    return replace(decision, reasons=reasons(comparison, decision))
