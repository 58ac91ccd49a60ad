"""Published checks of the ``vaccine_response`` template (antibody kinetics after inactivated HAV vaccine).

Sources:
    Andraud M, Lejeune O, Musoro JZ, Ogunjimi B, Beutels P, Hens N. Living on three time scales: the
    dynamics of plasma cell and antibody populations illustrated for hepatitis A virus. PLoS Comput Biol
    2012;8(3):e1002418. doi:10.1371/journal.pcbi.1002418 -- only the abstract is available to this
    template (antibodies "around one month", short-lived plasma cells "several months", long-lived
    plasma cells "decades"); the article's table estimates could not be retrieved, so the decay rates are
    placeholders chosen from those words and no test here checks them against Andraud (that would only
    check the inputs; see the template README).
    HAVRIX US Prescribing Information, Section 14.3 -- adults after one 1440 EL.U. dose: GMT of
    seroconverters 264-339 mIU/mL at day 15 and 335-637 mIU/mL at month 1; after a booster at month 6:
    GMT 3,318-5,925 mIU/mL one month later.
    Follow-up study "Inactivated hepatitis A vaccine-induced antibodies: follow-up and estimates of
    long-term persistence" (abstract; 120 adults at months 0-6, 194 at months 0-12): annual decline > 65%
    shortly after the last dose, 10-15% thereafter; GMT 522 mIU/mL (0-6) and 749 mIU/mL (0-12) 5.5 years
    after the last dose.
    Landry P et al. Vaccine 2000;19:399-402 -- a booster given 24-66 months after priming raises GMTs
    as much as one given at 6-12 months.

The day-15, month-1, month-7 and both 5.5-year values (0-6 and 0-12) are calibration targets of the template
(five parameters fitted to five titres, README), so their tests guard the calibration; the 0-12 GMT of 749
mIU/mL sets the germinal-centre maturation rate k_gc and is no longer an out-of-sample check. Not fitted:
the booster ratio, the waning pattern of both groups of the follow-up study, and the late booster. Every
number asserted is computed by the immunetwin engine.
"""

from __future__ import annotations

import numpy as np
import pytest

from immunetwin import simulate
from immunetwin.templates import load_template

YEAR = 365.0
BOOST = 180.0  # HAVRIX adult schedule: booster 6 months after the primary dose
BOOST_12 = 365.0  # the follow-up study's second group: booster 12 months after the primary dose

#: HAVRIX label 14.3 ranges (mIU/mL) over the clinical studies.
DAY15_GMT, MONTH1_GMT, POST_BOOST_GMT = (264.0, 339.0), (335.0, 637.0), (3318.0, 5925.0)
#: Follow-up study: GMT 5.5 years after the last dose, mIU/mL (0-6 and 0-12 schedules).
GMT_5_5_YEARS, GMT_5_5_YEARS_0_12 = 522.0, 749.0
#: Follow-up study: fall in the first year after the last dose (more than), mean annual decline afterwards.
FIRST_YEAR_FALL, LATER_ANNUAL_DECLINE = 0.65, (0.10, 0.15)


def value_at(traj, times: np.ndarray, t: float, sid: str = "Ab") -> float:
    """Value of ``sid`` at output time ``t`` (``t`` must be one of ``times``)."""
    return float(np.asarray(traj[sid])[np.flatnonzero(np.isclose(times, t))[0]])


@pytest.fixture(scope="module")
def tpl():
    return load_template("vaccine_response")


@pytest.fixture(scope="module")
def course(tpl):
    """Prime at day 0, booster at day 180, followed 30 years: daily for 2 years, then ~3 weeks apart."""
    checked = [5.5 * YEAR]  # sample time of the follow-up check (5.5 years after the last dose)
    grid = [np.arange(0.0, 2 * YEAR), np.linspace(2 * YEAR, 30 * YEAR, 500), checked]
    after = np.unique(np.concatenate(grid))
    times = np.concatenate([np.arange(0.0, BOOST), BOOST + after])
    traj = simulate(tpl.model, times, schedule=tpl.intervention("prime_boost"))
    assert traj.status == "success"
    return times, traj


def test_metadata_values_are_the_model_values(tpl):
    """The values in template.yaml are the ones the model runs with (a parameter trajectory is constant)."""
    traj = simulate(tpl.model, np.array([0.0, 1.0]))
    assert traj.status == "success"
    for pid, info in tpl.metadata.parameters.items():
        assert np.asarray(traj[pid])[0] == pytest.approx(info.value, rel=1e-12), pid


def test_no_dose_no_antibody(tpl):
    """Seronegative and unvaccinated: nothing happens without a dose (all states stay exactly zero)."""
    traj = simulate(tpl.model, np.linspace(0.0, 365.0, 13))
    assert traj.status == "success"
    for sid in tpl.metadata.states:
        assert np.all(np.asarray(traj[sid]) == 0.0), sid


def test_prime_and_booster_titres_match_the_label(course):
    """Titres at day 15, month 1 and one month after the month-6 booster lie in the HAVRIX label ranges.

    These three are calibration targets; the tolerance is the published range over the label's studies.
    """
    times, traj = course
    for t, (lo, hi) in ((15.0, DAY15_GMT), (30.0, MONTH1_GMT), (BOOST + 30.0, POST_BOOST_GMT)):
        assert lo <= value_at(traj, times, t) <= hi, t


def test_booster_exceeds_first_response_by_the_published_factor(course):
    """Booster over first-dose response: within the label's 3318/637 = 5.2 to 5925/335 = 17.7.

    Compared as the label does: one month after each dose; also the booster's true peak must exceed the
    prime's true peak by at least the lower factor.
    """
    times, traj = course
    ratio = value_at(traj, times, BOOST + 30.0) / value_at(traj, times, 30.0)
    low, high = POST_BOOST_GMT[0] / MONTH1_GMT[1], POST_BOOST_GMT[1] / MONTH1_GMT[0]
    assert low <= ratio <= high
    ab = np.asarray(traj["Ab"])
    assert ab[times >= BOOST].max() / ab[times < BOOST].max() >= low


def waning_after(traj, times: np.ndarray, last: float) -> tuple[float, float, float]:
    """Waning after the last dose at ``last``, measured as the follow-up study reports it.

    Returns the fall from one month after the last dose to one year after it, the geometric-mean annual
    decline from 1 to 5.5 years after it, and the titre 5.5 years after it (mIU/mL).
    """
    post, a1, a55 = (value_at(traj, times, last + t) for t in (30.0, YEAR, 5.5 * YEAR))
    return 1.0 - a1 / post, 1.0 - (a55 / a1) ** (1.0 / 4.5), a55


def test_waning_after_the_last_dose(course):
    """Follow-up study, 0-6 group: > 65% fall in the first year after the last dose; 10-15%/year afterwards.

    Times count from the last dose (day 180), as in the abstract. First year: from the post-booster titre
    (month 7) to one year after the last dose. Afterwards: geometric-mean annual decline from 1 to 5.5
    years after the last dose. The 5.5-year level itself (522 mIU/mL, a calibration target) is checked
    within 10%, the rounding of the calibration.
    """
    times, traj = course
    fall, annual, a55 = waning_after(traj, times, BOOST)
    assert fall > FIRST_YEAR_FALL
    assert LATER_ANNUAL_DECLINE[0] <= annual <= LATER_ANNUAL_DECLINE[1]
    assert a55 == pytest.approx(GMT_5_5_YEARS, rel=0.10)


@pytest.fixture(scope="module")
def course_0_12(tpl):
    """The follow-up study's 0-12 group: prime at day 0, booster at day 365, sampled as it reports."""
    times = np.array([0.0, BOOST_12 + 30.0, BOOST_12 + YEAR, BOOST_12 + 5.5 * YEAR])
    traj = simulate(tpl.model, times, schedule=tpl.intervention("prime_boost", boost=BOOST_12))
    assert traj.status == "success"
    return times, traj


def test_waning_after_a_booster_at_month_12(course_0_12):
    """Follow-up study, 0-12 group: the published waning pattern (its 5.5-year GMT is a calibration target).

    The abstract's > 65% first-year fall and 10-15%/year afterwards, measured as for the 0-6 group. The
    template gives 80% and 11.3%/year. Honest caveats: the end point of the annual decline (the 5.5-year
    GMT) is fitted, the first-year fall is not; in this model the decay after the last dose hardly
    depends on the dose interval, so this mostly re-tests the decay rates on a second schedule. It fails
    when ``mu_S`` or ``f_L`` is halved or doubled, or ``mu_A`` or ``mu_L`` halved (not when ``mu_L`` is
    doubled: 14.4%/year).
    """
    times, traj = course_0_12
    fall, annual, _ = waning_after(traj, times, BOOST_12)
    assert fall > FIRST_YEAR_FALL
    assert LATER_ANNUAL_DECLINE[0] <= annual <= LATER_ANNUAL_DECLINE[1]


def test_gmt_5_5_years_after_a_booster_at_month_12(course, course_0_12):
    """Follow-up study, 0-12 group: GMT 749 mIU/mL 5.5 years after the last dose, above the 0-6 group's 522.

    A calibration target (it sets the germinal-centre maturation rate ``k_gc``), so this guards the
    calibration and is not an out-of-sample check. Tolerance: 10%, as for the 0-6 group's 5.5-year GMT
    (the abstract gives no confidence interval), and the published ordering 0-12 > 0-6. The template
    gives 748.9 mIU/mL (ratio 1.435 to the 0-6 group; published 749/522 = 1.435). Before the germinal-centre
    maturation took months (one stage of 21 days, not fitted to this number) it gave 511 mIU/mL (ratio
    0.98), and this test was a strict expected failure.
    """
    _, _, a55_0_12 = waning_after(course_0_12[1], course_0_12[0], BOOST_12)
    _, _, a55_0_6 = waning_after(course[1], course[0], BOOST)
    assert a55_0_12 > a55_0_6
    assert a55_0_12 == pytest.approx(GMT_5_5_YEARS_0_12, rel=0.10)


def test_late_booster_is_as_good_as_an_early_one(tpl):
    """Landry 2000: a booster at 66 months raises the titre about as much as one at 6 months.

    "Increased dramatically and similarly": we require the one-month post-booster titres within a factor 2.
    """
    early_t, late_t = BOOST, 66 * YEAR / 12
    times = np.array([0.0, early_t + 30.0, late_t + 30.0])
    early = simulate(tpl.model, times, schedule=tpl.intervention("prime_boost", boost=early_t))
    late = simulate(tpl.model, times, schedule=tpl.intervention("prime_boost", boost=late_t))
    assert early.status == "success" and late.status == "success"
    ratio = value_at(late, times, late_t + 30.0) / value_at(early, times, early_t + 30.0)
    assert 0.5 <= ratio <= 2.0


def test_outcomes_and_observable(tpl, course):
    """Outcome metrics are consistent with the trajectory; the observable is log10 of the titre (+1)."""
    _, traj = course
    out = tpl.outcomes(traj)
    ab = np.asarray(traj["Ab"])
    assert out["peak_titre"] == pytest.approx(ab.max())
    assert BOOST < out["time_of_peak"] < BOOST + 60.0
    assert out["protection_lost_at"] == np.inf or out["protection_lost_at"] > 30 * YEAR
    obs = tpl.observe(traj)["anti_hav_igg"]
    assert np.allclose(obs, np.log10(ab + 1.0))
    assert tpl.metadata.observables["anti_hav_igg"].loinc == "22313-1"


def test_more_doses_more_antibody(tpl):
    """A three-dose course (0, 1, 6 months) ends above the two-dose course at 5 years (more LLPC)."""
    times = np.array([0.0, 5 * YEAR])
    two = simulate(tpl.model, times, schedule=tpl.intervention("prime_boost"))
    three = simulate(tpl.model, times, schedule=tpl.intervention("three_dose"))
    assert two.status == "success" and three.status == "success"
    assert value_at(three, times, 5 * YEAR) > value_at(two, times, 5 * YEAR)
