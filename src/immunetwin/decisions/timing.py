"""``best_start_day``: when to start a treatment, by a decision rule, over a grid of start days.

Each start day $d$ is a scenario (the intervention with ``start=d``), simulated beside no treatment
with common random numbers (:func:`~immunetwin.decisions.compare_scenarios`); the rule's criterion
(expected utility, or $P(\\text{risk})$ under the harm constraint) is estimated for every day and the
best feasible day is reported, with the decision over all days and no treatment (which may be DO NOT
TREAT when no start day beats waiting). For antivirals the template checks (Goncalves et al. 2020,
*CPT Pharmacometrics Syst Pharmacol* 9:509) say earlier is better.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from immunetwin.decisions.compare import compare_scenarios
from immunetwin.decisions.comparison import ScenarioComparison
from immunetwin.decisions.decide import Decision, decide
from immunetwin.decisions.rules import Rule
from immunetwin.decisions.scenarios import NO_TREATMENT, Scenario, scenario
from immunetwin.decisions.stats import weighted_mcse, weighted_mean
from immunetwin.engines.integrate import Controls
from immunetwin.engines.solvers import AbstractMethod
from immunetwin.errors import InputError
from immunetwin.templates import Template

__all__ = ["StartDayResult", "best_start_day"]


@dataclass(frozen=True, eq=False)
class StartDayResult:
    """The rule's value for each start day of one intervention.

    Attributes:
        intervention: the intervention timed.
        days: the start days, increasing.
        scenarios: the scenario name of each day.
        criterion: what ``values`` are (``"expected utility"``, ``"P(severe)"``); ``higher_is_better``
            their direction.
        values, mcse, feasible: per day, the criterion, its Monte Carlo error, whether it meets the
            rule's constraints.
        gain, gain_mcse: per day, how much better than no treatment (positive: better) and the Monte
            Carlo error of that paired per-particle difference (common random numbers).
        best_day: the best feasible day (ties to the earlier day); ``None`` if no day is feasible.
        no_treatment: the criterion without treatment.
        decision: the rule applied to no treatment and every day together.
        comparison: the underlying scenario comparison.
    """

    intervention: str
    days: tuple[float, ...]
    scenarios: tuple[str, ...]
    criterion: str
    higher_is_better: bool
    values: np.ndarray
    mcse: np.ndarray
    feasible: np.ndarray
    gain: np.ndarray
    gain_mcse: np.ndarray
    best_day: float | None
    no_treatment: float
    decision: Decision = field(repr=False)
    comparison: ScenarioComparison = field(repr=False)

    @property
    def table(self) -> pd.DataFrame:
        """One row per start day: day, scenario, value, mcse, gain, gain_mcse, feasible, best."""
        return pd.DataFrame({
            "day": self.days, "scenario": self.scenarios, "value": self.values, "mcse": self.mcse,
            "gain": self.gain, "gain_mcse": self.gain_mcse, "feasible": self.feasible,
            "best": [d == self.best_day for d in self.days],
        })  # fmt: skip

    def to_frame(self) -> pd.DataFrame:
        """The same as :attr:`table`."""
        return self.table


def _check_days(days: Sequence[float]) -> tuple[float, ...]:
    try:
        grid = np.asarray(days, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"days must be numbers, got {days!r}") from None
    if grid.ndim != 1 or grid.size == 0:
        raise InputError("days must be a non-empty 1-D grid of start days")
    if not np.isfinite(grid).all() or (grid < 0).any():
        raise InputError("start days must be finite and >= 0")
    if np.unique(grid).size != grid.size:
        raise InputError("start days must not repeat")
    return tuple(float(d) for d in np.sort(grid))


def _number(key: str, value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"arguments['{key}'] must be a number, got {value!r}") from None


def _day_scenarios(
    template: Template, intervention: str, days: tuple[float, ...], arguments: Mapping[str, object]
) -> tuple[Scenario, ...]:
    """One scenario per start day, named like the spec ``intervention(start=d,arg=value)``."""
    if "start" in arguments:
        raise InputError("arguments must not contain 'start': the start days are the grid")
    fixed = "".join(f",{k}={_number(k, v):g}" for k, v in arguments.items())
    return tuple(scenario(template, f"{intervention}(start={d:g}{fixed})") for d in days)


def _best(values: np.ndarray, feasible: np.ndarray, higher: bool, days: tuple[float, ...]) -> float | None:
    if not feasible.any():
        return None
    sign = 1.0 if higher else -1.0
    k = min(np.flatnonzero(feasible), key=lambda j: (-sign * values[j], j))
    return days[int(k)]


def best_start_day(
    template: Template,
    parameters: Mapping[str, object],
    intervention: str,
    days: Sequence[float],
    rule: Rule,
    *,
    horizon: float,
    log_weights: object = None,
    arguments: Mapping[str, object] | None = None,
    higher_is_better: Collection[str] | None = None,
    level: float = 0.9,
    step: float = 0.1,
    solver: AbstractMethod | None = None,
    controls: Controls = Controls(),
    progress: Callable[[int, int], None] | None = None,
) -> StartDayResult:
    """Evaluate a decision rule for each start day of ``intervention`` on a grid.

    Args:
        template: the template; ``intervention`` must be one of its interventions with a ``start``.
        parameters: parameter draws by id, each ``(S,)``.
        days: start days (days from the template's time origin), distinct, >= 0.
        rule: :class:`~immunetwin.decisions.ExpectedUtility` or :class:`~immunetwin.decisions.MinimiseRisk`.
        horizon: simulate days ``0 .. horizon``.
        log_weights: ``(S,)`` log weights of the particles, or ``None``.
        arguments: other arguments of the intervention (e.g. ``{"duration": 3}``), the same every day.
        higher_is_better, level, step, solver, controls, progress: as in
            :func:`~immunetwin.decisions.compare_scenarios`.

    Raises:
        InputError: bad days, ``start`` in ``arguments``, or any error of ``compare_scenarios``.
        TemplateError: an unknown intervention or argument.
    """
    grid = _check_days(days)
    day_scen = _day_scenarios(template, intervention, grid, dict(arguments or {}))
    comparison = compare_scenarios(
        template,
        parameters,
        [scenario(template, NO_TREATMENT), *day_scen],
        horizon=horizon,
        log_weights=log_weights,
        reference=NO_TREATMENT,
        higher_is_better=higher_is_better,
        level=level,
        step=step,
        solver=solver,
        controls=controls,
        progress=progress,
    )
    decision = decide(comparison, rule)
    names = tuple(s.name for s in day_scen)
    rows = [decision.score(name) for name in names]
    values = np.array([r.value for r in rows])
    feasible = np.array([r.feasible for r in rows])
    gain, gain_mcse = _gains(comparison, rule, names)
    return StartDayResult(
        intervention=intervention,
        days=grid,
        scenarios=names,
        criterion=decision.criterion,
        higher_is_better=decision.higher_is_better,
        values=values,
        mcse=np.array([r.mcse for r in rows]),
        feasible=feasible,
        gain=gain,
        gain_mcse=gain_mcse,
        best_day=_best(values, feasible, decision.higher_is_better, grid),
        no_treatment=decision.score(NO_TREATMENT).value,
        decision=decision,
        comparison=comparison,
    )


def _gains(comparison: ScenarioComparison, rule: Rule, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Paired improvement over no treatment per scenario, and its Monte Carlo standard error."""
    scores = rule.scores(comparison)
    sign = 1.0 if scores.higher_is_better else -1.0
    w = comparison.used_weights
    diffs = [sign * (scores.per_particle[s] - scores.per_particle[NO_TREATMENT]) for s in names]
    return np.array([weighted_mean(d, w) for d in diffs]), np.array([weighted_mcse(d, w) for d in diffs])
