"""Published checks of the ``acute_inflammation`` template (reduced acute inflammatory response model).

Sources:
    Reynolds A, Rubin J, Clermont G, Day J, Vodovotz Y, Ermentrout GB. A reduced mathematical model of
    the acute inflammatory response: I. Derivation of model and analysis of anti-inflammation. J Theor
    Biol 2006;242(1):220-236 (PMID 16584750) -- the four equations (P, N*, D, C_A), Table 1 values, and
    the three outcomes of the model: health (return to baseline), aseptic death (pathogen eliminated,
    N* and D stay high) and septic death (pathogen persists).
    BioModels BIOMD0000000714 (curated encoding of Reynolds 2006) -- the initial conditions of its three
    outcome simulations: HealthyOutcome P(0) = 1, AsepticDeath P(0) = 1.5 (k_pg = 0.3 /h), SepticDeath
    P(0) = 1 with k_pg = 0.6 /h; N*(0) = D(0) = 0, C_A(0) = 0.125.

The template is in days: Table 1 rates per hour are multiplied by 24 (k_pg 0.3 /h = 7.2 /day, 0.6 /h =
14.4 /day), so the paper's hour h is day h/24 here. Every number asserted is computed by the immunetwin
engine from the template; the published outcomes are the references. The last tests check behaviour of
the interventions this template adds (not published results) and are labelled so.
"""

from __future__ import annotations

import numpy as np
import pytest

from immunetwin import simulate, simulate_cohort
from immunetwin.templates import load_template

#: Reynolds 2006 Table 1 k_pg (0.3 /h) and the septic run's k_pg (0.6 /h), converted to 1/day.
K_PG, K_PG_SEPTIC = 0.3 * 24, 0.6 * 24
#: BIOMD0000000714 initial pathogen of the health, aseptic and septic runs (10^6 cells/cc).
P0_HEALTH, P0_ASEPTIC, P0_SEPTIC = 1.0, 1.5, 1.0
#: Baseline anti-inflammation s_c/mu_c (Reynolds 2006 initial condition C_A(0) = 0.125).
CA_BASELINE = 0.125

# Classification of a state (tolerances of the published outcomes). The two "death" equilibria of the
# Table 1 model have D ~ 17 and (septic) P ~ 5, the health state has P = D = 0: thresholds an order of
# magnitude from both sides (P 2, D 10 for "high"; P 1e-3, D 0.05 for "back to baseline") cannot be
# crossed by solver error and fail only if the qualitative outcome changes.
HIGH_P, HIGH_D, LOW_P, LOW_D = 2.0, 10.0, 1e-3, 0.05


def at(times: np.ndarray, values: np.ndarray, t: float) -> float:
    """Value at output time ``t`` (``t`` must be one of ``times``)."""
    return float(np.asarray(values)[np.flatnonzero(np.isclose(times, t))[0]])


@pytest.fixture(scope="module")
def tpl():
    return load_template("acute_inflammation")


@pytest.fixture(scope="module")
def runs(tpl):
    """The three BIOMD0000000714 runs over 21 days (504 h), as one cohort: health, aseptic, septic."""
    times = np.linspace(0.0, 21.0, 2101)
    coh = simulate_cohort(
        tpl.model,
        times,
        parameters={"k_pg": np.array([K_PG, K_PG, K_PG_SEPTIC])},
        initial={"P": np.array([P0_HEALTH, P0_ASEPTIC, P0_SEPTIC])},
    )
    assert list(coh.status) == ["success"] * 3
    return times, coh


def test_metadata_values_are_the_model_values(tpl):
    """The values in template.yaml are the ones the model runs with (a parameter trajectory is constant)."""
    traj = simulate(tpl.model, np.array([0.0, 1.0]))
    assert traj.status == "success"
    for pid, info in tpl.metadata.parameters.items():
        assert np.asarray(traj[pid])[0] == pytest.approx(info.value, rel=1e-12), pid


def test_table1_rates_are_per_hour_times_24(tpl):
    """Spot-check the unit conversion of Table 1: k_pg 0.3 /h, mu_c 0.1 /h, s_c 0.0125 /h; c_inf unscaled."""
    p = tpl.metadata.parameters
    assert p["k_pg"].value == pytest.approx(0.3 * 24)
    assert p["mu_c"].value == pytest.approx(0.1 * 24)
    assert p["s_c"].value == pytest.approx(0.0125 * 24)
    assert p["c_inf"].value == pytest.approx(0.28)


def test_health_baseline_is_an_equilibrium(tpl):
    """Without pathogen, P = N* = D = 0 and C_A = s_c/mu_c = 0.125 stay put (Reynolds 2006 baseline).

    Tolerance 1e-9: the right-hand side is exactly zero there, so only solver round-off can move it.
    """
    times = np.linspace(0.0, 21.0, 211)
    traj = simulate(tpl.model, times, initial={"P": 0.0})
    assert traj.status == "success"
    for sid in ("P", "Nstar", "D"):
        assert np.max(np.abs(traj[sid])) < 1e-9, sid
    assert np.max(np.abs(np.asarray(traj["CA"]) - CA_BASELINE)) < 1e-9


def test_health_outcome(runs):
    """P(0) = 1: the pathogen is cleared and the host returns to baseline (Reynolds 2006 'health').

    Cleared within 2 days (48 h), D and N* back near zero by day 14 (336 h), C_A falling back to its
    baseline; class 0 at day 21.
    """
    times, coh = runs
    assert at(times, coh["P"][0], 2.0) < LOW_P
    assert at(times, coh["D"][0], 14.0) < LOW_D
    assert at(times, coh["Nstar"][0], 14.0) < LOW_D
    assert abs(coh["CA"][0][-1] - CA_BASELINE) < 0.05  # still relaxing slowly at day 21
    assert coh["outcome_class"][0][-1] == 0


def test_aseptic_death_outcome(runs):
    """P(0) = 1.5: the pathogen is eliminated but N* and D stay high (Reynolds 2006 'aseptic death')."""
    times, coh = runs
    assert at(times, coh["P"][1], 2.0) < LOW_P
    assert np.all(np.asarray(coh["P"][1])[times >= 2.0] < LOW_P)  # never comes back
    assert coh["D"][1][-1] > HIGH_D
    assert coh["Nstar"][1][-1] > 10 * at(times, coh["Nstar"][0], 21.0)  # N* stays activated
    assert coh["outcome_class"][1][-1] == 1


def test_septic_death_outcome(runs):
    """k_pg = 0.6 /h: the pathogen persists at a high level, damage high (Reynolds 2006 'septic death')."""
    times, coh = runs
    late = times >= 7.0
    assert np.all(np.asarray(coh["P"][2])[late] > HIGH_P)
    assert coh["D"][2][-1] > HIGH_D
    assert coh["outcome_class"][2][-1] == 2


def test_inoculum_parameter_sets_the_initial_pathogen(tpl, runs):
    """``P0`` (the estimable inoculum) starts the same aseptic run as setting the state ``P`` directly."""
    times, coh = runs
    traj = simulate(tpl.model, times, parameters={"P0": P0_ASEPTIC})
    assert traj.status == "success"
    assert np.asarray(traj["P"])[0] == P0_ASEPTIC
    assert np.allclose(traj["D"], coh["D"][1], rtol=1e-6, atol=1e-9)


def test_outcome_metrics(tpl, runs):
    """The template's outcomes classify the three runs, and damage peaks far higher in the deaths."""
    _, coh = runs
    out = tpl.outcomes(coh)
    assert list(out["outcome_class"]) == [0.0, 1.0, 2.0]
    assert list(out["septic_episode"]) == [0.0, 0.0, 1.0]
    assert out["peak_damage"][0] < HIGH_D < min(out["peak_damage"][1], out["peak_damage"][2])


def test_larger_inoculum_is_never_healthier(tpl):
    """Between the published runs, raising P(0) from 0.5 to 2 never moves from death back to health."""
    times = np.linspace(0.0, 21.0, 211)
    loads = np.array([0.5, 0.8, 1.0, 1.2, 1.5, 2.0])
    coh = simulate_cohort(tpl.model, times, initial={"P": loads})
    assert np.all(coh.status == "success")
    classes = np.asarray(coh["outcome_class"])[:, -1]
    assert classes[0] == 0 and classes[-1] == 1
    assert np.all(np.diff(classes) >= 0)


# ---------------------------------------------------------------------------------------------------
# Behaviour of the interventions added by this template (not results of Reynolds 2006).


def test_early_strong_antibiotic_prevents_septic_death(tpl):
    """Template behaviour: killing the pathogen at 30/day from 2.4 h on turns the septic run into health."""
    times = np.linspace(0.0, 21.0, 211)
    sched = tpl.intervention("antibiotic", start=0.1, kill_rate=30.0)
    traj = simulate(tpl.model, times, parameters={"k_pg": K_PG_SEPTIC}, schedule=sched)
    assert traj.status == "success"
    assert tpl.outcomes(traj)["outcome_class"] == 0


def test_late_antibiotic_leaves_aseptic_death(tpl):
    """Template behaviour: an antibiotic from 12 h clears the septic run's pathogen, but damage persists."""
    times = np.linspace(0.0, 21.0, 211)
    sched = tpl.intervention("antibiotic")  # 10/day from 12 h for 7 days
    traj = simulate(tpl.model, times, parameters={"k_pg": K_PG_SEPTIC}, schedule=sched)
    assert traj.status == "success"
    assert tpl.outcomes(traj)["outcome_class"] == 1


def test_anti_inflammation_helps_or_harms_by_dose(tpl):
    """Template behaviour: a moderate C_A dose at 12 h rescues the aseptic run; a large early one harms.

    In the Reynolds 2006 equations C_A inhibits damage production and pathogen killing alike, so the
    effect of raising it depends on dose and timing; shown here with this template's bolus intervention.
    """
    times = np.linspace(0.0, 21.0, 211)
    moderate = tpl.intervention("anti_inflammatory_bolus")  # 0.5 C_A-units at 12 h
    large_early = tpl.intervention("anti_inflammatory_bolus", time=0.1, dose=1.0)
    rescue = simulate(tpl.model, times, initial={"P": P0_ASEPTIC}, schedule=moderate)
    harm = simulate(tpl.model, times, schedule=large_early)
    assert rescue.status == "success" and harm.status == "success"
    assert tpl.outcomes(rescue)["outcome_class"] == 0
    assert tpl.outcomes(harm)["outcome_class"] > 0
