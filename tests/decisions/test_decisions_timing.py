"""``best_start_day`` on ``viral_immune`` (the same 250 patients and start days as the comparison tests,
so the cohort program compiled there is reused).

Goncalves A et al. CPT Pharmacometrics Syst Pharmacol 2020;9:509-514 (doi:10.1002/psp4.12543): the
earlier an antiviral starts, the larger its effect on viral load; with a utility on peak damage and peak
viral load the best start day is the earliest one and the value falls with every day of delay. With a
utility on time to clearance alone the latest day wins, because early 5-day courses let the virus
regrow (template README; Kim KS et al. Life Sci Alliance 2021;4:e202101049).
"""

from __future__ import annotations

import numpy as np
import pytest
from decisions_cohort import DAYS, HORIZON

from immunetwin.decisions import (
    Action,
    ExpectedUtility,
    MinimiseRisk,
    best_start_day,
    decide,
    weighted_mcse,
    weighted_mean,
)
from immunetwin.errors import InputError, TemplateError

DAMAGE = ExpectedUtility({"peak_damage": 100.0, "peak_viral_load": 1.0}, {"antiviral": 0.1})


@pytest.fixture(scope="module")
def timing(viral_immune, patients):
    return best_start_day(viral_immune, patients, "antiviral", DAYS[::-1], DAMAGE, horizon=HORIZON)


def test_the_earliest_start_is_best_for_damage_and_viral_load(timing):
    assert timing.days == DAYS  # sorted
    assert timing.best_day == 3.0 and timing.criterion == "expected utility" and timing.higher_is_better
    assert np.all(np.diff(timing.values) < 0)  # every day of delay costs utility ...
    c, w = timing.comparison, timing.comparison.used_weights
    for a, b in zip(timing.scenarios, timing.scenarios[1:], strict=False):  # ... beyond Monte Carlo error
        paired = DAMAGE.utility(c, a) - DAMAGE.utility(c, b)
        assert weighted_mean(paired, w) > 4.0 * weighted_mcse(paired, w)
    assert timing.no_treatment < timing.values.min()
    np.testing.assert_allclose(timing.gain, timing.values - timing.no_treatment, rtol=1e-9)
    assert np.all(timing.gain[:3] > 4.0 * timing.gain_mcse[:3])  # days 3-7 clearly beat no treatment
    assert timing.gain[3] < 0.1 * timing.gain[1]  # day 9 (after the peak) gains little over none
    assert timing.decision.action is Action.TREAT and timing.decision.chosen == "antiviral(start=3)"
    table = timing.table
    assert list(table.columns) == [
        "day",
        "scenario",
        "value",
        "mcse",
        "gain",
        "gain_mcse",
        "feasible",
        "best",
    ]
    assert table.loc[table.best, "day"].tolist() == [3.0]
    assert table.scenario.tolist() == [f"antiviral(start={d:g})" for d in DAYS]


def test_best_start_day_agrees_with_deciding_the_same_comparison(timing, antiviral_comparison):
    direct = decide(antiviral_comparison, DAMAGE)
    for name, value in zip(timing.scenarios, timing.values, strict=True):
        assert value == pytest.approx(direct.score(name).value, rel=1e-12)


def test_for_time_to_clearance_alone_the_latest_start_is_best(antiviral_comparison):
    d = decide(antiviral_comparison, ExpectedUtility({"time_to_clearance": 1.0}))
    assert d.chosen == "antiviral(start=9)" and d.margin - 2.0 * d.margin_mcse > 0


def test_risk_rule_by_start_day(viral_immune, patients):
    rule = MinimiseRisk("peak_damage > 0.25")
    result = best_start_day(viral_immune, patients, "antiviral", DAYS, rule, horizon=HORIZON,
                            arguments={"duration": 5.0})  # fmt: skip
    assert result.scenarios[0] == "antiviral(start=3,duration=5)"
    assert result.criterion == "P(peak_damage > 0.25)" and not result.higher_is_better
    assert result.best_day == 3.0 and result.values[0] < result.no_treatment
    assert result.feasible.all()


@pytest.mark.parametrize(
    ("intervention", "days", "arguments", "error", "message"),
    [
        ("antiviral", [], None, InputError, "non-empty"),
        ("antiviral", [3.0, 3.0], None, InputError, "must not repeat"),
        ("antiviral", [-1.0, 3.0], None, InputError, "finite and >= 0"),
        ("antiviral", [np.nan], None, InputError, "finite and >= 0"),
        ("antiviral", [3.0], {"start": 2.0}, InputError, "must not contain 'start'"),
        ("antiviral", [3.0], {"dose": 2.0}, TemplateError, "no argument 'dose'"),
        ("antiviral", [3.0], {"duration": "long"}, InputError, r"arguments\['duration'\] must be a number"),
        ("antibody", [3.0], None, TemplateError, "unknown intervention 'antibody'"),
    ],
)
def test_bad_start_day_input_is_refused(viral_immune, intervention, days, arguments, error, message):
    with pytest.raises(error, match=message):
        best_start_day(viral_immune, {"beta": np.full(2, 3e-8)}, intervention, days, DAMAGE, horizon=10.0,
                       arguments=arguments)  # fmt: skip
