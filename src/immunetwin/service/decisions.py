"""Scenario comparison and decision for a twin, as the CLI report does it (shared by API and jobs).

The default scenario set is every intervention of the template alone and, when there are several,
all together, each starting at the twin's reference time (the day of its last data), beside no
treatment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from immunetwin.decisions import Decision, ExpectedUtility, ScenarioComparison, compare_scenarios, decide
from immunetwin.decisions import scenario as parse_scenario
from immunetwin.errors import InputError
from immunetwin.twin import Twin

__all__ = ["compare_and_decide", "default_scenarios"]


def default_scenarios(twin: Twin) -> list[str]:
    """``none``, each intervention from the twin's reference time, and all of them together."""
    now = twin.reference_time
    ivs = list(twin.template.metadata.interventions)
    specs = ["none", *(f"{iv}(start={now:g})" for iv in ivs)]
    if len(ivs) > 1:
        specs.append("+".join(f"{iv}(start={now:g})" for iv in ivs))
    return specs


def compare_and_decide(
    twin: Twin,
    scenarios: Sequence[str] | None,
    weights: Mapping[str, float],
    costs: Mapping[str, float],
    horizon: float = 40.0,
) -> tuple[ScenarioComparison, Decision]:
    """Compare scenarios over the twin's particles up to ``horizon`` days after its reference time and
    choose by expected utility (``weights`` per unit of each outcome metric, ``costs`` per intervention).

    Raises:
        InputError: no weights, a non-positive horizon, or fewer than two scenarios.
        UnknownIdError, TemplateError: an unknown metric, intervention or argument.
    """
    if not weights:
        raise InputError("weights: give at least one outcome metric weight, e.g. {'time_to_clearance': 1}")
    if not horizon > 0:
        raise InputError(f"horizon: must be a positive number of days, got {horizon}")
    specs = list(scenarios) if scenarios else default_scenarios(twin)
    if len(specs) < 2:
        raise InputError("scenarios: give at least two to compare (e.g. 'none' and 'antiviral(start=3)')")
    parsed = [parse_scenario(twin.template, s) for s in specs]
    rule = ExpectedUtility(dict(weights), treatment_costs=dict(costs))
    comparison = compare_scenarios(
        twin.template, twin.belief.values, parsed, horizon=twin.reference_time + horizon,
        log_weights=twin.belief.log_weights,
    )  # fmt: skip
    return comparison, decide(comparison, rule)
