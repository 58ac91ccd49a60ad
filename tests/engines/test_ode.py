"""The simulate / simulate_cohort verbs: analytic solutions, exact dosing, events, failures, batching."""

from __future__ import annotations

import numpy as np
import pytest

import immunetwin as it

DECAY = """
model decay
  compartment c = 1
  species X in c = 10
  J1: X -> ; k*X
  k = 0.5
end
"""

EVENTS = """
model relapse
  compartment c = 1
  species X in c = 10
  J1: X -> ; k*X
  k = 0.5
  reset: at (X < 1): X = 10, count = count + 1
  count = 0
end
"""

BLOWUP = """
model blowup
  x = 1
  x' = x^2
end
"""


@pytest.fixture(scope="module")
def decay() -> it.Model:
    return it.load_model(DECAY)


def test_exponential_decay_matches_the_analytic_solution(decay):
    times = np.linspace(0, 10, 41)
    traj = it.simulate(decay, times, controls=it.Controls(rtol=1e-9, atol=1e-12))
    assert traj.ok
    np.testing.assert_allclose(traj["X"], 10 * np.exp(-0.5 * times), rtol=1e-7)


def test_parameters_and_initial_values_override_the_file(decay):
    times = np.array([0.0, 2.0])
    traj = it.simulate(decay, times, parameters={"k": 1.0}, initial={"X": 3.0})
    np.testing.assert_allclose(traj["X"], [3.0, 3.0 * np.exp(-2.0)], rtol=1e-6)
    assert traj["k"][0] == 1.0


def test_bolus_is_applied_exactly_and_reported_after_the_dose(decay):
    times = np.array([0.0, 4.0, 5.0, 6.0])
    sched = it.Schedule(doses=(it.Bolus("X", 4.0, 100.0),))
    traj = it.simulate(decay, times, schedule=sched, controls=it.Controls(rtol=1e-10, atol=1e-12))
    x4 = 10 * np.exp(-2.0) + 100.0
    np.testing.assert_allclose(traj["X"], [10, x4, x4 * np.exp(-0.5), x4 * np.exp(-1.0)], rtol=1e-8)


def test_input_window_switches_a_parameter_exactly(decay):
    times = np.array([0.0, 2.0, 3.0, 4.0, 5.0])
    sched = it.Schedule(inputs=(it.Input.window("k", 2.0, 4.0, 0.0, off=0.5),))
    traj = it.simulate(decay, times, schedule=sched, controls=it.Controls(rtol=1e-10, atol=1e-12))
    x2 = 10 * np.exp(-1.0)
    np.testing.assert_allclose(traj["X"], [10, x2, x2, x2, x2 * np.exp(-0.5)], rtol=1e-8)
    np.testing.assert_array_equal(traj["k"], [0.5, 0.0, 0.0, 0.5, 0.5])


def test_event_fires_at_the_crossing_time_and_repeats():
    model = it.load_model(EVENTS)
    times = np.linspace(0, 10, 101)
    traj = it.simulate(model, times, controls=it.Controls(rtol=1e-10, atol=1e-12))
    t_hit = np.log(10) / 0.5  # X = 10 exp(-t/2) reaches 1
    phase = np.mod(times, t_hit)
    np.testing.assert_allclose(traj["X"], 10 * np.exp(-0.5 * phase), rtol=1e-6)
    assert traj["count"][-1] == 2


def test_a_blow_up_is_a_status_not_a_silent_nan():
    model = it.load_model(BLOWUP)
    traj = it.simulate(model, np.linspace(0, 2, 5))
    assert traj.status in {"step_size_too_small", "non_finite_state", "max_steps_reached"}
    assert not traj.ok
    assert np.isfinite(traj["x"][:2]).all()  # before t = 1 the solution exists
    with pytest.raises(it.SolverError, match="blowup"):
        it.simulate(model, np.linspace(0, 2, 5), throw=True)


def test_cohort_equals_patient_by_patient_and_keeps_per_patient_status(decay):
    times = np.linspace(0, 5, 11)
    ks = np.array([0.1, 0.5, 2.0])
    coh = it.simulate_cohort(decay, times, parameters={"k": ks}, chunk_size=2)
    assert coh["X"].shape == (3, 11)
    for i, k in enumerate(ks):
        one = it.simulate(decay, times, parameters={"k": float(k)})
        np.testing.assert_allclose(coh["X"][i], one["X"], rtol=1e-12)
    assert coh.ok.all()


def test_cohort_per_patient_schedules(decay):
    times = np.array([0.0, 1.0, 3.0])
    schedules = [it.Schedule(doses=(it.Bolus("X", 0.5, 1.0),)), it.Schedule(doses=(it.Bolus("X", 2.0, 5.0),))]
    coh = it.simulate_cohort(decay, times, schedule=schedules, controls=it.Controls(rtol=1e-10, atol=1e-12))
    expected_0 = (10 * np.exp(-0.25) + 1) * np.exp(-0.5 * np.array([0.5, 2.5]))
    np.testing.assert_allclose(coh["X"][0, 1:], expected_0, rtol=1e-8)
    np.testing.assert_allclose(coh["X"][1, 2], (10 * np.exp(-1.0) + 5) * np.exp(-0.5), rtol=1e-8)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"parameters": {"nope": 1.0}}, it.UnknownIdError, "unknown parameter 'nope'"),
        ({"parameters": {"k": float("nan")}}, it.InputError, "'k' is NaN"),
        ({"parameters": {"J1": 1.0}}, it.InputError, "'J1' is computed by the model"),
        ({"schedule": it.Schedule(doses=(it.Bolus("k", 1.0, 1.0),))}, it.InputError, "not a state"),
        ({"schedule": it.Schedule(doses=(it.Bolus("Y", 1.0, 1.0),))}, it.UnknownIdError, "dose target 'Y'"),
        ({"t0": 5.0}, it.InputError, "before the start time"),
    ],
)
def test_bad_input_gets_one_clear_error(decay, kwargs, error, match):
    with pytest.raises(error, match=match):
        it.simulate(decay, [0.0, 1.0], **kwargs)


def test_unsorted_or_nan_times_are_refused(decay):
    with pytest.raises(it.InputError, match="non-decreasing"):
        it.simulate(decay, [1.0, 0.5])
    with pytest.raises(it.InputError, match="NaN"):
        it.simulate(decay, [0.0, float("nan")])


def test_non_stiff_solver_agrees_with_the_stiff_default(decay):
    times = np.linspace(0, 10, 11)
    a = it.simulate(decay, times, solver=it.Dopri5(), controls=it.Controls(rtol=1e-9, atol=1e-12))
    b = it.simulate(decay, times, controls=it.Controls(rtol=1e-9, atol=1e-12))
    np.testing.assert_allclose(a["X"], b["X"], rtol=1e-7)


@pytest.mark.parametrize("kwargs", [{"rtol": 0.0}, {"atol": -1.0}, {"rtol": float("nan")}, {"max_steps": 0}])
def test_impossible_controls_are_refused(kwargs):
    with pytest.raises(it.InputError):
        it.Controls(**kwargs)
