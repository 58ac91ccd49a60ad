"""Decision rules on comparisons built from arrays (no simulation): choices, margins, switch points,
feasibility, weights, failures, censoring and bad input.

The expected values are worked out by hand in each test from the definitions in
:mod:`immunetwin.decisions.rules` (Parmigiani & Inoue 2009, ch. 3: Bayes actions maximise expected
utility) and :mod:`immunetwin.decisions.decide` (switch points where two expected utilities cross).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from immunetwin.decisions import (
    Action,
    Event,
    ExpectedUtility,
    MinimiseRisk,
    Scenario,
    ScenarioComparison,
    decide,
    event,
)
from immunetwin.errors import InputError, SolverError, UnknownIdError
from immunetwin.spec.schedule import Schedule

NONE = Scenario("none", Schedule(), "no treatment")
DRUG = Scenario("drug", Schedule(), "a drug", ("drug",))
OTHER = Scenario("other", Schedule(), "another drug", ("other",))


def two_scenarios(**kwargs) -> ScenarioComparison:
    """Metric ``m`` (lower is better) with means exactly 10 (none) and 6 (drug), and a 0/1 ``bad``."""
    values = {
        "none": {"m": np.array([8.0, 10.0, 12.0, 10.0]), "bad": np.array([1.0, 0.0, 1.0, 0.0])},
        "drug": {"m": np.array([5.0, 6.0, 7.0, 6.0]), "bad": np.array([0.0, 0.0, 1.0, 0.0])},
    }
    return ScenarioComparison.from_values([NONE, DRUG], values, binary=["bad"], **kwargs)


# ------------------------------------------------------------------------------------ expected utility


def test_the_rule_treats_when_the_benefit_exceeds_the_cost():
    # EU(none) = -10, EU(drug) = -6 - 2 = -8
    d = decide(two_scenarios(), ExpectedUtility({"m": 1.0}, {"drug": 2.0}))
    assert d.action is Action.TREAT and d.chosen == "drug" and d.runner_up == "none"
    assert d.score("none").value == pytest.approx(-10.0) and d.score("drug").value == pytest.approx(-8.0)
    # paired utility differences are 1, 2, 3, 2: mean 2, plug-in variance 0.5, ESS 4
    assert d.margin == pytest.approx(2.0) and d.margin_mcse == pytest.approx(math.sqrt(0.5 / 4))
    assert d.score("drug").probabilities["P(bad)"] == pytest.approx(0.25)
    assert d.score("none").probabilities["P(bad)"] == pytest.approx(0.5)
    assert any("TREAT" in r for r in d.reasons)


def test_the_rule_does_not_treat_when_the_cost_dominates():
    d = decide(two_scenarios(), ExpectedUtility({"m": 1.0}, {"drug": 5.0}))
    assert d.action is Action.DO_NOT_TREAT and d.chosen == "none"
    assert d.margin == pytest.approx(1.0)
    assert "The best scenario gives no treatment: DO NOT TREAT." in d.reasons


def test_a_tie_goes_to_fewer_interventions():
    d = decide(two_scenarios(), ExpectedUtility({"m": 1.0}, {"drug": 4.0}))
    assert d.action is Action.DO_NOT_TREAT and d.margin == pytest.approx(0.0, abs=1e-12)
    assert any("ties with drug" in r for r in d.reasons)


def test_switch_points_of_a_weight_and_a_cost_are_exact():
    # EU(none) = -10 f, EU(drug) = -6 f - 2 cross at f = 0.5; with the cost scaled by g, -10 = -6 - 2 g at g = 2
    d = decide(two_scenarios(), ExpectedUtility({"m": 1.0}, {"drug": 2.0}))
    weight, cost = d.sensitivity
    assert weight.term == "m" and cost.term == "cost:drug"
    (sw,) = weight.switches
    assert sw.factor == pytest.approx(0.5, rel=1e-14) and sw.value == pytest.approx(0.5, rel=1e-14)
    assert (sw.before, sw.after) == ("none", "drug")
    assert weight.unchanged == (pytest.approx(0.5, rel=1e-14), 10.0) and not weight.robust
    (sw,) = cost.switches
    assert sw.factor == pytest.approx(2.0, rel=1e-14) and sw.value == pytest.approx(4.0, rel=1e-14)
    assert (sw.before, sw.after) == ("drug", "none")
    assert cost.unchanged == (0.1, pytest.approx(2.0, rel=1e-14))
    assert (
        "The choice holds for m from 0.5x to 10x its value (1); it switches to none below 0.5x (0.5)."
        in d.reasons
    )
    # deciding again just either side of each switch point agrees with it
    for factor, chosen in ((0.49, "none"), (0.51, "drug")):
        assert decide(two_scenarios(), ExpectedUtility({"m": factor}, {"drug": 2.0})).chosen == chosen
    for factor, chosen in ((1.99, "drug"), (2.01, "none")):
        assert decide(two_scenarios(), ExpectedUtility({"m": 1.0}, {"drug": 2.0 * factor})).chosen == chosen


def test_a_choice_that_never_switches_is_robust():
    d = decide(two_scenarios(), ExpectedUtility({"m": 1.0}, {"drug": 0.01}), scan=(0.5, 2.0))
    (weight, cost) = d.sensitivity
    assert weight.robust and weight.unchanged == (0.5, 2.0) and cost.robust


def test_weights_change_the_choice():
    values = {"none": {"m": np.array([0.0, 10.0])}, "drug": {"m": np.array([2.0, 2.0])}}
    equal = ScenarioComparison.from_values([NONE, DRUG], values)
    skewed = ScenarioComparison.from_values([NONE, DRUG], values, log_weights=np.log([0.9, 0.1]))
    rule = ExpectedUtility({"m": 1.0})
    assert decide(equal, rule).chosen == "drug"  # EU -5 vs -2
    assert decide(skewed, rule).chosen == "none"  # EU -1 vs -2
    assert skewed.ess == pytest.approx(1.0 / (0.81 + 0.01))


def test_equal_weights_agree_with_no_weights():
    base = two_scenarios().to_frame()
    for lw in (np.zeros(4), np.full(4, 3.5), np.full(4, -700.0)):
        pd.testing.assert_frame_equal(two_scenarios(log_weights=lw).to_frame(), base, rtol=1e-12)
    rule = ExpectedUtility({"m": 1.0}, {"drug": 2.0})
    a, b = decide(two_scenarios(), rule), decide(two_scenarios(log_weights=np.full(4, 3.5)), rule)
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame(), rtol=1e-12)
    assert a.reasons == b.reasons


def test_paired_differences_and_probability_of_being_better():
    c = two_scenarios(higher_is_better=())
    s = c.summary("drug", "m")
    assert (s.diff_mean, s.diff_lower, s.diff_upper) == (pytest.approx(-4.0), -5.0, -3.0)
    assert s.p_better == 1.0 and s.p_worse == 0.0
    flipped = two_scenarios(higher_is_better=["m"]).summary("drug", "m")
    assert flipped.p_better == 0.0 and flipped.p_worse == 1.0
    bad = c.summary("drug", "bad")  # 1 -> 0 in particle 0, 1 -> 1 in particle 2
    assert bad.p_better == 0.25 and bad.p_worse == 0.0 and bad.mean == 0.25
    assert math.isnan(c.summary("none", "m").diff_mean)


# --------------------------------------------------------------------------------------- minimise risk


def three_scenarios() -> ScenarioComparison:
    """P(bad) = 0.5, 0.25, 0; P(nadir < 1) = 0, 0.25, 0.5 for none, drug, other."""
    values = {
        "none": {"bad": np.array([1.0, 1.0, 0.0, 0.0]), "nadir": np.array([2.0, 2.0, 2.0, 2.0])},
        "drug": {"bad": np.array([1.0, 0.0, 0.0, 0.0]), "nadir": np.array([0.5, 2.0, 2.0, 2.0])},
        "other": {"bad": np.array([0.0, 0.0, 0.0, 0.0]), "nadir": np.array([0.5, 0.9, 2.0, 2.0])},
    }
    return ScenarioComparison.from_values(
        [NONE, DRUG, OTHER], values, binary=["bad"], higher_is_better=["nadir"]
    )


def test_minimise_risk_subject_to_harm():
    rule = MinimiseRisk("bad", harm="nadir < 1", max_harm=0.3)
    d = decide(three_scenarios(), rule)
    assert d.action is Action.TREAT and d.chosen == "drug" and d.runner_up == "none"
    assert d.criterion == "P(bad)" and not d.higher_is_better
    assert [s.feasible for s in d.scores] == [True, True, False]
    assert d.score("other").probabilities["P(nadir < 1)"] == pytest.approx(0.5)
    assert d.margin == pytest.approx(0.25)
    (sens,) = d.sensitivity  # feasibility changes where f * 0.3 reaches 0.25 and 0.5
    assert sens.term == "max_harm"
    assert [(s.factor, s.before, s.after) for s in sens.switches] == [
        (pytest.approx(0.25 / 0.3), "none", "drug"),
        (pytest.approx(0.5 / 0.3), "drug", "other"),
    ]
    assert sens.unchanged == (pytest.approx(0.25 / 0.3), pytest.approx(0.5 / 0.3))
    assert any("Excluded because P(nadir < 1) exceeds 0.3: other (0.500)" in r for r in d.reasons)


def test_without_harm_the_lowest_risk_wins():
    d = decide(three_scenarios(), MinimiseRisk("bad"))
    assert d.chosen == "other" and d.sensitivity == ()


def test_minimise_risk_with_no_feasible_scenario_says_so():
    d = decide(three_scenarios(), MinimiseRisk("bad", harm="nadir < 3", max_harm=0.5))
    assert d.action is Action.NONE_FEASIBLE and d.chosen is None and d.runner_up is None
    assert not any(s.feasible for s in d.scores) and math.isnan(d.margin)
    assert any(r.startswith("No scenario keeps P(nadir < 3) at or below 0.5") for r in d.reasons)
    assert d.to_frame()["chosen"].sum() == 0


def test_events_parse_and_read_uncensored_values():
    assert event("severe") == Event("severe")
    assert event(" nadir<=1.5 ") == Event("nadir", "<=", 1.5)
    assert str(event("t > 21")) == "t > 21"
    values = {"none": {"t": np.array([5.0, np.inf])}, "drug": {"t": np.array([4.0, 30.0])}}
    c = ScenarioComparison.from_values([NONE, DRUG], values, timed=["t"], horizon=20.0)
    assert c.summary("none", "t").mean == pytest.approx(12.5)  # inf censored at the horizon 20
    assert c.summary("none", "t").censored == 0.5 and c.summary("drug", "t").censored == 0.0
    assert event("t > 25").indicator(c, "none").tolist() == [False, True]  # never cleared: beyond 25
    d = decide(c, ExpectedUtility({"t": 1.0}))
    assert any("restricted means" in r for r in d.reasons)


# -------------------------------------------------------------------------------------- failed solves


def test_failed_particles_are_excluded_from_every_scenario_and_counted():
    values = {
        "none": {"m": np.array([8.0, 10.0, 12.0, 10.0])},
        "drug": {"m": np.array([5.0, 6.0, np.nan, 6.0])},
    }
    c = ScenarioComparison.from_values([NONE, DRUG], values)
    assert c.used.tolist() == [True, True, False, True] and dict(c.failed) == {"none": 0, "drug": 1}
    assert c.excluded_weight == pytest.approx(0.25) and c.ess == pytest.approx(3.0)
    assert c.summary("none", "m").mean == pytest.approx(28.0 / 3.0)
    d = decide(c, ExpectedUtility({"m": 1.0}))
    assert d.excluded == 1
    assert any(r.startswith("1 of 4 particles (25.0% of the weight) were excluded") for r in d.reasons)


def test_infinite_values_are_failures_unless_an_event_never_happened():
    values = {
        "none": {"m": np.array([1.0, np.inf, 1.0]), "t": np.array([3.0, 4.0, np.inf])},
        "drug": {"m": np.array([1.0, 1.0, 1.0]), "t": np.array([-np.inf, 4.0, 5.0])},
    }
    c = ScenarioComparison.from_values([NONE, DRUG], values, timed=["t"], horizon=10.0)
    assert c.used.tolist() == [False, False, True] and dict(c.failed) == {"none": 1, "drug": 1}
    assert c.summary("none", "t").mean == 10.0 and c.summary("none", "t").censored == 1.0


def test_all_particles_failing_is_an_error():
    values = {"none": {"m": np.array([1.0, np.nan])}, "drug": {"m": np.array([np.nan, 1.0])}}
    with pytest.raises(SolverError, match="every particle failed"):
        ScenarioComparison.from_values([NONE, DRUG], values)


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: ExpectedUtility({"m": math.nan}), InputError, r"weights\['m'\] must be finite"),
        (lambda: ExpectedUtility({"m": "heavy"}), InputError, r"weights\['m'\] must be a number"),
        (lambda: ExpectedUtility({"m": 1.0}, {"drug": math.inf}), InputError, "treatment_costs"),
        (lambda: ExpectedUtility({}), InputError, "at least one metric weight or treatment cost"),
        (
            lambda: MinimiseRisk("bad", "m > 1", max_harm=-0.01),
            InputError,
            "must be in \\[0, 1\\], got -0.01",
        ),
        (lambda: MinimiseRisk("bad", "m > 1", max_harm=1.5), InputError, "must be in \\[0, 1\\]"),
        (lambda: MinimiseRisk("bad", "m > 1", max_harm=math.nan), InputError, "max_harm must be finite"),
        (lambda: MinimiseRisk("m <> 3"), InputError, "is not an event"),
        (lambda: MinimiseRisk("m > often"), InputError, "threshold must be a number"),
        (lambda: Event("m", "==", 1.0), InputError, "unknown comparison '=='"),
    ],
)
def test_bad_rules_are_refused(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(
    ("rule", "error", "message"),
    [
        (
            ExpectedUtility({"damage": 1.0}),
            UnknownIdError,
            r"unknown outcome metric \(in weights\) 'damage' \(known: m, bad\)",
        ),
        (ExpectedUtility({"m": 1.0}, {"aspirin": 1.0}), UnknownIdError, r"'aspirin' \(known: drug\)"),
        (MinimiseRisk("m"), InputError, "'m' is not a 0/1 outcome; give a threshold"),
        (MinimiseRisk("bad", "nadir < 1"), UnknownIdError, "unknown outcome metric 'nadir'"),
    ],
)
def test_rules_naming_unknown_things_are_refused(rule, error, message):
    with pytest.raises(error, match=message):
        decide(two_scenarios(), rule)


def test_decide_checks_its_arguments():
    with pytest.raises(InputError, match="0 < lo < 1 < hi"):
        decide(two_scenarios(), ExpectedUtility({"m": 1.0}), scan=(2.0, 10.0))
    with pytest.raises(InputError, match="rule must be ExpectedUtility or MinimiseRisk"):
        decide(two_scenarios(), {"m": 1.0})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "kwargs", "error", "message"),
    [
        ({"none": {"m": np.array([])}, "drug": {"m": np.array([])}}, {}, InputError, "no particles"),
        ({"none": {"m": np.ones(3)}, "drug": {"m": np.ones(4)}}, {}, InputError, r"disagree.*\[3, 4\]"),
        ({"none": {"m": np.ones(4)}, "drug": {"x": np.ones(4)}}, {}, InputError, "exactly the metrics"),
        ({"none": {"m": np.ones((4, 1))}, "drug": {"m": np.ones(4)}}, {}, InputError, "must be 1-D"),
        ({"none": {"m": np.ones(4)}, "drug": {"m": np.ones(4)}}, {"log_weights": np.zeros(5)}, InputError,
         r"shape \(5,\), but there are 4 particles"),
        ({"none": {"m": np.ones(4)}, "drug": {"m": np.ones(4)}}, {"reference": "placebo"}, UnknownIdError,
         r"unknown reference scenario 'placebo' \(known: none, drug\)"),
        ({"none": {"m": np.ones(4)}, "drug": {"m": np.ones(4)}}, {"level": 1.0}, InputError, "level"),
        ({"none": {"m": np.ones(4)}, "drug": {"m": np.ones(4)}}, {"binary": ["n"]}, UnknownIdError, "'n'"),
        ({"none": {"m": np.ones(4)}, "drug": {"m": np.ones(4)}}, {"timed": ["m"]}, InputError,
         r"time-to-event metrics \['m'\] need a finite horizon"),
    ],
)  # fmt: skip
def test_bad_comparison_input_is_refused(values, kwargs, error, message):
    with pytest.raises(error, match=message):
        ScenarioComparison.from_values([NONE, DRUG], values, **kwargs)


def test_scenario_names_must_be_unique():
    values = {"none": {"m": np.ones(2)}}
    with pytest.raises(InputError, match="'none' is used twice"):
        ScenarioComparison.from_values([NONE, NONE], values)
