"""Cohorts: the batch-last loop equals the per-patient loop, and splitting patients over devices
changes nothing (a fresh process, since JAX fixes its device count when it starts)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import immunetwin as it
from immunetwin.engines import integrate, ode
from immunetwin.runtime import use_all_cpu_cores

# an event that re-fires, a dose and an input switch per patient: every path of the loop
RELAPSE = """
model relapse
  compartment c = 1
  species X in c = 10
  species Y in c = 0
  J1: X -> Y; k*X
  J2: Y -> ; k2*Y
  k = 0.5
  k2 = 0.3
  reset: at (X < 1): X = 10, count = count + 1
  count = 0
end
"""
BLOWUP = "model blowup\n  x = 1\n  x' = r*x^2\n  r = 1\nend\n"
TIMES = np.linspace(0.0, 10.0, 21)
KS = np.array([0.5, 0.9, 1.4, 0.7, 2.0])


def _schedules() -> list[it.Schedule]:
    return [
        it.Schedule(
            doses=(it.Bolus("Y", 1.0 + i, 2.0 * i),),
            inputs=(it.Input.window("k2", 3.0, 3.5 + i, 0.0, off=0.3),),
        )
        for i in range(len(KS))
    ]


def _per_patient_loop(
    model: it.Model,
    method: it.AbstractMethod,
    ctl: it.Controls,
    schedules: list[it.Schedule],
    **values: np.ndarray,
):
    """``jax.vmap`` of the single-patient verb ``_one`` (solve_one), the reference for the batch loop."""
    b = len(schedules)
    over = ode._overrides(model, values, "parameter", b)
    d, m = ode._declared(model, over, b)
    stops = ode._stops(model, schedules, model.spec.constants)
    trig0 = np.array([e.initial_value for e in model.spec.events], dtype=bool)
    with jax.enable_x64(True):
        one = partial(ode._one, model.functions, method, ctl, jnp.asarray(trig0), jnp.asarray(TIMES))
        return [np.asarray(x) for x in jax.jit(jax.vmap(one))(*map(jnp.asarray, (d, m, *stops)))]


@pytest.mark.parametrize("method", [it.Rodas5P(), it.Dopri5()], ids=lambda m: m.name)
def test_batch_loop_equals_the_per_patient_loop(method):
    model, ctl = it.load_model(RELAPSE), it.Controls(rtol=1e-8, atol=1e-10)
    coh = it.simulate_cohort(
        model, TIMES, parameters={"k": KS}, schedule=_schedules(), solver=method, controls=ctl
    )
    obs, status, steps = _per_patient_loop(model, method, ctl, _schedules(), k=KS)
    assert coh.ok.all() and (status == 0).all()
    assert coh["count"][:, -1].min() >= 1  # the event fired in every patient
    np.testing.assert_allclose(coh.values, obs, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(coh.steps, steps)


def test_long_schedules_equal_the_per_patient_loop():
    # more schedule entries than the batch loop reads by selects: it gathers them
    model, method, ctl = it.load_model(RELAPSE), it.Rodas5P(), it.Controls(rtol=1e-8, atol=1e-10)
    days = np.arange(12) * 0.75
    schedules = [
        it.Schedule(doses=tuple(it.Bolus("Y", t + 0.1 * i, 0.5 + i) for t in days)) for i in range(3)
    ]
    coh = it.simulate_cohort(model, TIMES, parameters={"k": KS[:3]}, schedule=schedules, controls=ctl)
    obs, status, steps = _per_patient_loop(model, method, ctl, schedules, k=KS[:3])
    assert len(days) > integrate._FEW_STOPS
    assert coh.ok.all() and (status == 0).all()
    np.testing.assert_allclose(coh.values, obs, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(coh.steps, steps)


def test_a_failing_patient_stops_alone():
    model = it.load_model(BLOWUP)
    coh = it.simulate_cohort(model, np.linspace(0, 2, 5), parameters={"r": np.array([0.1, 1.0, 0.2])})
    assert list(coh.ok) == [True, False, True]
    assert np.isfinite(coh["x"][[0, 2]]).all()
    np.testing.assert_allclose(coh["x"][0, -1], 1 / (1 - 0.1 * 2), rtol=1e-5)


def test_forward_mode_derivatives_pass_through_one_patient():
    model, method, ctl = it.load_model(RELAPSE), it.Rodas5P(), it.Controls(rtol=1e-10, atol=1e-12)
    d, m = ode._declared(model, {}, 1)
    stops = [s[0] for s in ode._stops(model, [it.Schedule()], model.spec.constants)]
    k, x = model.ids.index("k"), model.ids.index("X")
    trig0 = np.array([e.initial_value for e in model.spec.events])
    with jax.enable_x64(True):
        args = (
            [jnp.asarray(a) for a in (trig0, TIMES[:7])],
            jnp.asarray(m[0]),
            [jnp.asarray(s) for s in stops],
        )

        def total(dv):
            obs, _, _ = ode._one(model.functions, method, ctl, *args[0], dv, args[1], *args[2])
            return obs[:, x].sum()

        d0 = jnp.asarray(d[0])
        grad = np.asarray(jax.jacfwd(total)(d0))
        step = 1e-6
        central = (total(d0.at[k].add(step)) - total(d0.at[k].add(-step))) / (2 * step)
    exact = np.sum(-TIMES[:7] * 10 * np.exp(-0.5 * TIMES[:7]))  # d/dk of 10 exp(-k t); no event before t = 3
    np.testing.assert_allclose(grad[k], exact, rtol=1e-6)
    np.testing.assert_allclose(grad[k], float(central), rtol=1e-5)


CHILD = """
import json, sys
from pathlib import Path
from immunetwin.runtime import enable_compilation_cache, use_all_cpu_cores
took = use_all_cpu_cores(2)
import jax, numpy as np
import immunetwin as it
from immunetwin.engines import cache
sys.path.insert(0, {here!r})
from test_batch import KS, RELAPSE, TIMES, _schedules
enable_compilation_cache(Path({cache!r}))
model = it.load_model(RELAPSE)
runs = []
for _ in range(2):  # the second run reads the program the first one saved (2 devices)
    cache._solver.cache_clear()
    coh = it.simulate_cohort(model, TIMES, parameters={{"k": KS}}, schedule=_schedules(), chunk_size=4)
    runs.append(coh)
saved = list(Path({cache!r}, "immunetwin-programs").glob("*.xla"))
np.save({out!r}, runs[1].values)
print(json.dumps({{"took": took, "devices": jax.device_count(), "saved": len(saved), "status": runs[1].status.tolist(),
                  "steps": runs[1].steps.tolist(), "same": bool(np.array_equal(runs[0].values, runs[1].values))}}))
"""


def test_two_cpu_devices_give_the_results_of_one(tmp_path):
    here = str(Path(__file__).parent)
    script = CHILD.format(here=here, cache=str(tmp_path / "cache"), out=str(tmp_path / "values.npy"))
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["took"] and got["devices"] == 2
    assert got["saved"] == 1 and got["same"]  # two chunks of 4 (the last one padded): one program
    one = it.simulate_cohort(it.load_model(RELAPSE), TIMES, parameters={"k": KS}, schedule=_schedules())
    np.testing.assert_allclose(np.load(tmp_path / "values.npy"), one.values, rtol=1e-13, atol=0)
    assert got["status"] == one.status.tolist() and got["steps"] == one.steps.tolist()


def test_cpu_cores_are_set_only_before_jax_starts(monkeypatch):
    jax.devices()  # this process has started JAX
    assert use_all_cpu_cores() is False
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    assert use_all_cpu_cores() is False


def test_a_cohort_can_return_only_some_outputs() -> None:
    from immunetwin.errors import InputError, UnknownIdError

    model = it.load_model("model m\n  x = 2\n  x' = -k*x\n  y := 3*x\n  z' = x\n  z = 0\n  k = 0.7\nend\n")
    times = np.linspace(0.0, 2.0, 5)
    full = it.simulate_cohort(model, times, parameters={"k": np.array([0.5, 1.0, 2.0])})
    some = it.simulate_cohort(
        model, times, parameters={"k": np.array([0.5, 1.0, 2.0])}, outputs=["y", "x", "y"]
    )
    assert some.ids == ("y", "x") and some.values.shape == (3, 5, 2)
    np.testing.assert_array_equal(some["y"], full["y"])
    np.testing.assert_array_equal(some["x"], full["x"])
    with pytest.raises(UnknownIdError, match="w"):
        it.simulate_cohort(model, times, parameters={"k": np.array([0.5])}, outputs=["w"])
    with pytest.raises(InputError, match="non-empty sequence"):
        it.simulate_cohort(model, times, parameters={"k": np.array([0.5])}, outputs="x")


def test_a_patients_result_does_not_depend_on_its_chunk() -> None:
    """Chunks are padded to full vector blocks (ode.LANES): XLA's scalar leftover code rounds the
    controller's power and the model's exp differently, which used to move step sizes by a patient's
    place in the chunk (relative differences ~1e-5 at rtol 1e-6)."""
    model = it.load_model(
        "model m\n  x = 1\n  y = 0.1\n  x' = r*x*exp(-y) - x^1.5*k\n  y' = k*x - log(1 + y)*y\n"
        "  r = 1.2\n  k = 0.3\nend\n"
    )
    ks = np.linspace(0.1, 0.9, 37)
    times = np.linspace(0.0, 20.0, 41)
    runs = [it.simulate_cohort(model, times, parameters={"k": ks}, chunk_size=c) for c in (37, 5, 1)]
    assert all(r.ok.all() for r in runs)
    for other in runs[1:]:
        np.testing.assert_array_equal(other.values, runs[0].values)
        np.testing.assert_array_equal(other.steps, runs[0].steps)
    assert ode._block(5, 37) == (16, 1) and ode._block(40, 1) == (1, 1)


def test_lanes_that_take_the_next_patient_change_no_result(monkeypatch) -> None:
    """40 patients through 16 lanes (a lane whose patient finishes takes the next one) give what 48
    lanes at once give, bit for bit, whatever the chunk: patients with 1-12 doses and events, so
    they finish at very different steps and the lanes are refilled out of order."""
    model, ctl = it.load_model(RELAPSE), it.Controls(rtol=1e-8, atol=1e-10)
    rng = np.random.default_rng(3)
    ks = rng.uniform(0.2, 3.0, 40)
    schedules = [
        it.Schedule(doses=tuple(it.Bolus("Y", 0.5 + 0.7 * d, 1.0) for d in range(1 + i % 12)))
        for i in range(40)
    ]

    def run(lanes: int, chunk: int) -> it.CohortTrajectory:
        monkeypatch.setattr(ode, "CPU_LANES", lanes)
        return it.simulate_cohort(
            model, TIMES, parameters={"k": ks}, schedule=schedules, controls=ctl, chunk_size=chunk
        )

    whole = run(48, 40)
    assert whole.ok.all() and np.ptp(whole.steps) > 50  # uneven work: the refills happen out of order
    for lanes, chunk in ((16, 40), (16, 24)):
        other = run(lanes, chunk)
        np.testing.assert_array_equal(other.values, whole.values)
        np.testing.assert_array_equal(other.steps, whole.steps)
        np.testing.assert_array_equal(other.status, whole.status)


def test_failures_are_recorded_per_patient_when_lanes_are_refilled(monkeypatch) -> None:
    monkeypatch.setattr(ode, "CPU_LANES", 16)
    model = it.load_model(BLOWUP)
    r = np.where(np.arange(50) % 7 == 3, 1.0, 0.1)  # x(t) = 1 / (1 - r t) blows up at t = 1 for r = 1
    coh = it.simulate_cohort(model, np.linspace(0, 2, 5), parameters={"r": r})
    np.testing.assert_array_equal(coh.ok, r < 0.5)
    assert set(coh.status[r > 0.5]) <= {"step_size_too_small", "non_finite_state"}
    assert np.isnan(coh["x"][r > 0.5, -1]).all()
    np.testing.assert_allclose(coh["x"][r < 0.5, -1], 1 / (1 - 0.1 * 2), rtol=1e-5)


def test_lanes_must_be_positive() -> None:
    with pytest.raises(it.InputError, match="lanes must be a positive number of patients, got 0"):
        integrate.solve_batch(None, it.Rodas5P(), it.Controls(), *([None] * 8), lanes=0)
