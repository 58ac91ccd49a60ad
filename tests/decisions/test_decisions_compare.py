"""Scenario comparison on the ``viral_immune`` template with 250 plausible patients.

Published check reproduced (template.yaml ``checks``, README "Antiviral timing"): Goncalves A, Bertrand J,
Ke R, et al. Timing of antiviral treatment initiation is critical to reduce SARS-CoV-2 viral load. CPT
Pharmacometrics Syst Pharmacol 2020;9:509-514, doi:10.1002/psp4.12543 -- the earlier an antiviral
starts, the more it lowers the viral load; in the template a course from day 5 (symptom onset) also
lowers peak damage and shortens time to clearance, while a course from day 9 (after the peak) lowers
peak damage much less.

Template behaviour checked beside it (README "Antiviral timing" and "Behaviour to know about"): a
5-day course started very early (day 3) prolongs shedding because virus regrows when it ends (Kim KS
et al. Life Sci Alliance 2021;4:e202101049, doi:10.26508/lsa.202101049), and a course after the peak
still shortens shedding (nominal patient: 12.2 days from day 9 vs 12.8 from day 5). So "earlier is
better" holds for viral load and damage, not for time to clearance.

Every assertion on a Monte Carlo mean uses its Monte Carlo standard error (4 MCSE), or compares
effects that differ by many MCSE at this seed.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from decisions_cohort import DAYS, HORIZON, PATIENTS

from immunetwin.decisions import (
    Action,
    ExpectedUtility,
    MinimiseRisk,
    ScenarioComparison,
    compare_scenarios,
    decide,
)
from immunetwin.errors import InputError, TemplateError, UnknownIdError

Z = 4.0  # Monte Carlo standard errors required for a "clearly" signed effect


def effect(c: ScenarioComparison, day: float, metric: str):
    return c.summary(f"antiviral(start={day:g})", metric)


def test_every_particle_solved_and_weights_are_equal(antiviral_comparison):
    c = antiviral_comparison
    assert set(c.failed.values()) == {0} and c.used.all()
    assert c.ess == pytest.approx(PATIENTS) and c.horizon == HORIZON
    frame = c.to_frame()
    assert len(frame) == (1 + len(DAYS)) * len(c.metrics) and set(c.metrics) >= {"severe", "peak_damage"}
    assert c.binary == {"severe"} and c.timed == {"time_to_clearance"}


def test_an_early_antiviral_lowers_viral_load_and_damage_and_a_late_one_much_less(antiviral_comparison):
    """Goncalves 2020 / template check: day 5 lowers both clearly; day 9 recovers < half of that."""
    c = antiviral_comparison
    for metric in ("peak_viral_load", "peak_damage"):
        early, late = effect(c, 5, metric), effect(c, 9, metric)
        assert early.diff_mean + Z * early.diff_mcse < 0
        assert early.p_better > 0.5
        assert abs(late.diff_mean) < 0.5 * abs(early.diff_mean)
        # the earlier the start, the larger the reduction (each step by more than its error)
        reductions = [effect(c, d, metric).diff_mean for d in DAYS]
        assert all(a < b for a, b in itertools.pairwise(reductions))


def test_an_early_antiviral_shortens_time_to_clearance_in_most_patients(antiviral_comparison):
    c = antiviral_comparison
    day5 = effect(c, 5, "time_to_clearance")
    paired = c.metric("antiviral(start=5)", "time_to_clearance") - c.metric("none", "time_to_clearance")
    assert day5.p_better > 0.75 and day5.p_worse < 0.25 and np.median(paired) < 0
    assert day5.diff_mean < 0
    # template behaviour: a very early course prolongs shedding, a course after the peak shortens it
    day3, day9 = effect(c, 3, "time_to_clearance"), effect(c, 9, "time_to_clearance")
    assert day3.diff_mean - Z * day3.diff_mcse > 0 and day3.p_worse > 0.5
    assert day9.diff_mean + Z * day9.diff_mcse < day5.diff_mean


def test_particles_are_paired_across_scenarios(antiviral_comparison):
    """Common random numbers: a course that starts after a particle's untreated viral peak leaves that
    peak exactly as it was; a course that starts well before it lowers it."""
    c = antiviral_comparison
    peak_day = c.metric("none", "time_of_peak")
    for day in DAYS:
        same = np.isclose(
            c.metric(f"antiviral(start={day:g})", "peak_viral_load"),
            c.metric("none", "peak_viral_load"),
            rtol=0,
            atol=1e-9,
        )
        assert same[peak_day < day].all()
        assert not same[peak_day > day + 0.5].any()


def test_equal_weights_agree_with_no_weights_on_simulated_outcomes(antiviral_comparison):
    c = antiviral_comparison
    higher = [m for m, lower in c.lower_is_better.items() if not lower]
    kwargs = dict(reference=c.reference, units=c.units, binary=c.binary, timed=c.timed, horizon=c.horizon,
                  higher_is_better=higher)  # fmt: skip
    again = ScenarioComparison.from_values(c.scenarios, c.values, **kwargs)
    weighted = ScenarioComparison.from_values(
        c.scenarios, c.values, log_weights=np.full(PATIENTS, -2.0), **kwargs
    )
    pd.testing.assert_frame_equal(again.to_frame(), c.to_frame())
    pd.testing.assert_frame_equal(weighted.to_frame(), c.to_frame(), rtol=1e-10)


def test_importance_weights_shift_the_summaries(antiviral_comparison, patients):
    """Up-weighting patients with a strong inflammatory gain raises the expected peak damage of this
    sample (damage grows with p_LI), and the weighted mean is the weighted sum of the particles."""
    c = antiviral_comparison
    log_w = np.log(patients["p_LI"] / np.median(patients["p_LI"]))  # weight proportional to p_LI
    kwargs = dict(units=c.units, binary=c.binary, timed=c.timed, horizon=c.horizon)
    tilted = ScenarioComparison.from_values(c.scenarios, c.values, log_weights=log_w, **kwargs)
    assert tilted.ess < 0.95 * PATIENTS
    plain, heavy = c.summary("none", "peak_damage"), tilted.summary("none", "peak_damage")
    assert heavy.mean > plain.mean + 0.01
    assert heavy.mean == pytest.approx(np.dot(tilted.used_weights, c.metric("none", "peak_damage")))


def test_the_rule_treats_early_when_treatment_clearly_helps(antiviral_comparison):
    rule = ExpectedUtility({"peak_damage": 100.0, "peak_viral_load": 1.0}, {"antiviral": 0.1})
    d = decide(antiviral_comparison, rule)
    assert d.action is Action.TREAT and d.chosen == "antiviral(start=3)"
    assert d.margin - Z * d.margin_mcse > 0
    assert all(s.robust for s in d.sensitivity)  # 0.1x to 10x of any weight or of the cost


def test_the_rule_does_not_treat_when_the_cost_dominates_and_the_switch_is_the_benefit(antiviral_comparison):
    c = antiviral_comparison
    rule = ExpectedUtility({"peak_damage": 100.0, "peak_viral_load": 1.0}, {"antiviral": 50.0})
    d = decide(c, rule)
    assert d.action is Action.DO_NOT_TREAT and d.chosen == "none"

    def loss(s: str) -> float:
        return 100.0 * c.summary(s, "peak_damage").mean + c.summary(s, "peak_viral_load").mean

    benefit = max(loss("none") - loss(f"antiviral(start={day:g})") for day in DAYS)
    (cost,) = [s for s in d.sensitivity if s.term == "cost:antiviral"]
    (switch,) = cost.switches  # below this cost the best start day beats no treatment
    assert switch.value == pytest.approx(benefit, rel=1e-9) and switch.before == "antiviral(start=3)"
    assert decide(c, ExpectedUtility(rule.weights, {"antiviral": 0.99 * benefit})).action is Action.TREAT


def test_minimise_risk_on_simulated_outcomes(antiviral_comparison):
    c = antiviral_comparison
    rule = MinimiseRisk("peak_damage > 0.25", harm="time_to_clearance > 21", max_harm=0.2)
    d = decide(c, rule)
    w = c.used_weights
    for s in c.names:
        risk = float(np.dot(w, c.metric(s, "peak_damage") > 0.25))
        harm = float(np.dot(w, c.metric(s, "time_to_clearance", censor=False) > 21))
        assert d.score(s).value == pytest.approx(risk) and d.score(s).feasible == (harm <= 0.2)
    assert d.chosen == min((s for s in c.names if d.score(s).feasible), key=lambda s: d.score(s).value)
    assert d.action is Action.TREAT


@pytest.mark.parametrize(
    ("parameters", "kwargs", "error", "message"),
    [
        ({}, {}, InputError, "at least one parameter"),
        ({"beta": np.array([])}, {}, InputError, "no particles"),
        ({"beta": np.full(3, 3e-8), "p": np.full(4, 3.3e4)}, {}, InputError, r"disagree.*\[3, 4\]"),
        ({"beta": np.array([3e-8, np.nan])}, {}, InputError, r"parameters\['beta'\] contains NaN"),
        ({"beta": np.full((2, 2), 3e-8)}, {}, InputError, "must be 1-D"),
        ({"beta": np.full(2, 3e-8)}, {"log_weights": np.zeros(3)}, InputError, r"shape \(3,\), but there are 2"),
        ({"beta": np.full(2, 3e-8)}, {"log_weights": [0.0, np.nan]}, InputError, "NaN"),
        ({"beta": np.full(2, 3e-8)}, {"reference": "placebo"}, UnknownIdError, "unknown reference scenario 'placebo'"),
        ({"beta": np.full(2, 3e-8)}, {"horizon": 0.0}, InputError, "horizon must be a positive number"),
        ({"beta": np.full(2, 3e-8)}, {"step": -1.0}, InputError, "step must be in"),
        ({"beta": np.full(2, 3e-8)}, {"scenarios": "antiviral"}, InputError, "sequence of scenarios"),
        ({"beta": np.full(2, 3e-8)}, {"scenarios": ["none", "antibody"]}, TemplateError, "unknown intervention 'antibody'"),
        ({"betta": np.full(2, 3e-8)}, {}, UnknownIdError, "unknown parameter 'betta'"),
        ({"beta": np.full(2, 3e-8)}, {"higher_is_better": ["nadir"]}, UnknownIdError, r"'nadir' \(known: time_to"),
        ({"beta": np.full(2, 3e-8)}, {"level": 95}, InputError, r"level must be in \(0, 1\)"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_before_simulating(viral_immune, parameters, kwargs, error, message):
    options = {"scenarios": ["none", "antiviral"], "horizon": 10.0} | kwargs
    with pytest.raises(error, match=message):
        compare_scenarios(viral_immune, parameters, options.pop("scenarios"), **options)


def test_metric_directions_come_from_the_template_metadata(antiviral_comparison) -> None:
    """viral_immune says ``lymphocyte_nadir: better: higher``; every other metric is better lower."""
    better = antiviral_comparison.lower_is_better
    assert better["lymphocyte_nadir"] is False
    assert all(better[m] for m in antiviral_comparison.metrics if m != "lymphocyte_nadir")
