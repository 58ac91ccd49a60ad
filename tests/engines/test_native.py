"""The native backend (generated C) against the XLA engine, patient by patient: same method, same
controller, same stops, so the same steps and outputs within rounding; results independent of chunk,
thread count and companions; failures reported by status; what it cannot run refused by name."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sysconfig

import numpy as np
import pytest
import sympy as sp

import immunetwin as it
from immunetwin.engines import native
from immunetwin.engines.sensitivity import sensitivity_spec
from immunetwin.engines.solvers import Dopri5, Rodas5, Rodas5P
from immunetwin.errors import InputError
from immunetwin.templates.library import list_templates, load_template

TIMES = np.linspace(0.0, 28.0, 57)

# the constructs the C printers handle: piecewise with and without 'otherwise', boolean logic,
# non-integer and negative integer powers, exp/log/sqrt/sin, time in the rates, and a species in
# amounts in a compartment that is not 1
CONSTRUCTS = """
model constructs
  compartment cell = 2.5
  species A in cell = 4
  substanceOnly species B in cell = 1
  C = 0.5
  u = 0
  on = piecewise(1, (time > 2) && (time < 6) || (A > 100), 0)
  hill := A^1.7 / (K^1.7 + A^1.7)
  J1: A -> B; cell * (k1 * hill + k0 * A * (1 + sin(time)) / (1 + A)^2)
  J2: B -> ; k2 * B * exp(-time / 10) + kf * piecewise(1, time > 7, 0.5) * B / 10
  C' = r * sqrt(C + 1) * (1 - C) + u + on * 0.01 * log(1 + A)
  late := piecewise(C, time > 3)
  K = 2; k1 = 0.8; k0 = 0.1; k2 = 0.3; kf = 0.2; r = 1.5
end
"""


def _compare(model: it.Model, **kw: object) -> tuple[it.CohortTrajectory, it.CohortTrajectory]:
    xla = it.simulate_cohort(model, TIMES, backend="xla", **kw)
    nat = it.simulate_cohort(model, TIMES, backend="native", **kw)
    return xla, nat


def _assert_same(xla: it.CohortTrajectory, nat: it.CohortTrajectory, rtol: float = 1e-7) -> None:
    np.testing.assert_array_equal(nat.status, xla.status)
    np.testing.assert_array_equal(nat.steps, xla.steps)  # the same accepted and rejected steps
    for ident in xla.ids:
        a, b = np.asarray(xla[ident]), np.asarray(nat[ident])
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        scale = np.nanmax(np.abs(a)) if np.any(np.isfinite(a)) else 1.0
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * scale, err_msg=ident)


def _varied(model: it.Model, ids: list[str], n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {p: model.defaults[p] * np.exp(0.25 * rng.standard_normal(n)) for p in ids}


@pytest.mark.parametrize("name", [t for t in list_templates()])
def test_every_template_matches_xla_or_is_refused(name: str) -> None:
    tpl = load_template(name)
    model = tpl.model
    if model.spec.events:
        with pytest.raises(InputError, match="events"):
            it.simulate_cohort(model, TIMES, size=2, backend="native")
        return
    finite = [p for p in model.parameter_ids if p not in model.state_ids and np.isfinite(model.defaults[p]) and model.defaults[p] > 0]  # fmt: skip
    xla, nat = _compare(model, parameters=_varied(model, finite[:6], 6, seed=1))
    assert xla.ok.all()
    _assert_same(xla, nat)


def test_every_printed_construct_matches_xla() -> None:
    model = it.load_model(CONSTRUCTS)
    pars = {
        "k1": np.array([0.8, 1.6, 0.2]),
        "K": np.array([2.0, 0.5, 8.0]),
        "cell": np.array([2.5, 1.0, 4.0]),
    }
    xla, nat = _compare(model, parameters=pars, outputs=list(model.ids))
    assert xla.ok.all()
    _assert_same(xla, nat)


def test_doses_and_input_switches_are_exact_stops() -> None:
    tpl = load_template("viral_immune")
    model = tpl.model
    state = model.state_ids[3]
    switch = next(c for c in model.spec.constants if model.defaults[c] > 0)
    schedules = [
        it.Schedule.of(
            [it.Bolus(state, 3.0, 1e3), it.Input(switch, (5.0, 9.5), (0.0, model.defaults[switch]))]
        ),
        it.Schedule.of([it.Bolus(state, 0.0, 10.0), it.Bolus(state, 14.25, 5.0)]),
        it.Schedule(),
    ]
    xla, nat = _compare(model, schedule=schedules, outputs=list(model.ids))
    assert xla.ok.all()
    _assert_same(xla, nat)
    # the dose lands between outputs 6 (day 3.0) and 7: the output at day 3 is the state after it
    assert nat[state][0, 6] > xla[state][2, 6]


def test_an_output_reads_the_inputs_switched_at_or_before_its_time() -> None:
    # outputs every 0.01 day against steps of ~0.1-1 day: many fall inside the step that ends at a
    # switch (before it: the old value) and one at each switch (the new value)
    model = it.load_model("model w\n  x' = -k * x + u\n  x = 1; k = 1; u = 0\nend\n")
    times = np.linspace(0.0, 8.0, 801)
    schedules = [it.Schedule.of([it.Input.window("u", 2.0, 5.0, 3.0)]), it.Schedule()]
    xla = it.simulate_cohort(model, times, schedule=schedules, outputs=["x", "u"], backend="xla")
    nat = it.simulate_cohort(model, times, schedule=schedules, outputs=["x", "u"], backend="native")
    _assert_same(xla, nat)
    on = (times >= 2.0) & (times < 5.0)
    np.testing.assert_array_equal(np.asarray(nat["u"]), np.stack([np.where(on, 3.0, 0.0), np.zeros(801)]))


def test_result_independent_of_chunk_threads_and_companions() -> None:
    model = load_template("viral_immune").model
    pars = _varied(
        model, ["beta", "delta", "p"] if "beta" in model.ids else list(model.parameter_ids[:3]), 11, 7
    )
    whole = it.simulate_cohort(model, TIMES, parameters=pars, backend="native", chunk_size=4096)
    small = it.simulate_cohort(model, TIMES, parameters=pars, backend="native", chunk_size=3)
    np.testing.assert_array_equal(small["V"] if "V" in model.ids else small[model.state_ids[0]], whole["V"] if "V" in model.ids else whole[model.state_ids[0]])  # fmt: skip
    solver = native.build(model.spec, Rodas5P())
    from immunetwin.engines.ode import _declared, _overrides, _prepare_times, _stops

    _, ts, _ = _prepare_times(TIMES, 0.0)
    d, m = _declared(model, _overrides(model, pars, "parameter", 11), 11)
    stops = _stops(model, [it.Schedule()] * 11, model.spec.constants)
    one = native.run_native(solver, ts, d, m, stops, it.Controls(), 4096, None, None, threads=1)
    three = native.run_native(solver, ts, d, m, stops, it.Controls(), 4, None, None, threads=3)
    alone = native.run_native(solver, ts, d[5:6], m[5:6], tuple(s[5:6] for s in stops), it.Controls(), 1, None, None, threads=1)  # fmt: skip
    for a, b in zip(one, three, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(alone[0][0], one[0][5])
    np.testing.assert_array_equal(alone[2][0], one[2][5])


def test_costly_subexpressions_of_constants_alone_are_hoisted_once() -> None:
    x, y, k, v, km = sp.symbols("x y k v km")
    exprs = [k * x / v, 2 * k * y / v - x / v, x / (x + km), sp.exp(-k) * x, k * x + y]
    moved, table = native.hoist_invariants(exprs, frozenset({k, v, km}))
    values = dict(table)
    assert {values[s] for s in moved[0].free_symbols - {x}} == {k / v}  # k*x/V -> w*x, w = k/V
    assert moved[2] == exprs[2]  # a denominator with a state in it stays
    assert moved[4] == exprs[4]  # nothing costly: nothing moved
    assert sp.exp(-k) in values.values()
    assert len(values) == len(set(values.values()))  # each distinct value once
    for before, after in zip(exprs, moved, strict=True):  # the same values
        assert sp.simplify(after.xreplace(values) - before) == 0
    cond = sp.Piecewise((x, sp.exp(k) > y), (0, True))
    (only,), table = native.hoist_invariants([cond], frozenset({k}))
    ((w, value),) = table
    assert value == sp.exp(k) and only == sp.Piecewise((x, w > y), (0, True))  # a condition stays


def test_a_stop_that_changes_a_hoisted_constant_is_followed() -> None:
    # 1/V is computed once per change of a lane's constants: a switch of V halfway, and patients
    # with different V taking over each other's lanes, must each see their own current V
    model = it.load_model("model dil\n  x' = k * (s - x) / V\n  x = 0; k = 1; s = 2; V = 1\nend\n")
    times = np.linspace(0.0, 6.0, 61)
    vols = np.array([0.5, 1.0, 2.0, 4.0, 0.25, 3.0, 1.5, 0.75, 2.5, 5.0, 0.6, 1.2, 3.5])
    schedules = [it.Schedule.of([it.Input("V", (3.0,), (2.0 * v,))]) for v in vols]
    kw = {"parameters": {"V": vols}, "schedule": schedules, "outputs": ["x"]}
    ctl = it.Controls(rtol=1e-10, atol=1e-12)
    xla = it.simulate_cohort(model, times, backend="xla", controls=ctl, **kw)  # type: ignore[arg-type]
    nat = it.simulate_cohort(model, times, backend="native", controls=ctl, **kw)  # type: ignore[arg-type]
    _assert_same(xla, nat)
    early = 2.0 * (1.0 - np.exp(-np.minimum(times, 3.0)[None, :] / vols[:, None]))
    late = 2.0 + (early - 2.0) * np.exp(-np.maximum(times - 3.0, 0.0)[None, :] / (2.0 * vols[:, None]))
    np.testing.assert_allclose(np.asarray(nat["x"]), late, rtol=1e-7, atol=1e-9)


def test_failures_are_statuses_like_xla() -> None:
    blowup = it.load_model("model blowup\n  x = 1\n  x' = r*x^2\n  r = 1\nend\n")
    times = np.linspace(0.0, 2.0, 9)
    pars = {"r": np.array([0.1, 1.0, 2.0])}  # blows up at t = 1/r: after the end, at 1, at 0.5
    xla = it.simulate_cohort(blowup, times, parameters=pars)
    nat = it.simulate_cohort(blowup, times, parameters=pars, backend="native")
    np.testing.assert_array_equal(nat.status, xla.status)
    assert nat.status[0] == "success" and nat.status[2] != "success"
    np.testing.assert_array_equal(np.isnan(nat["x"]), np.isnan(xla["x"]))
    assert np.isnan(nat["x"][2, -1]) and np.isfinite(nat["x"][2, 0])
    capped = it.simulate_cohort(
        load_template("viral_immune").model,
        TIMES,
        size=2,
        backend="native",
        controls=it.Controls(max_steps=40),
    )
    assert list(capped.status) == ["max_steps_reached"] * 2
    assert np.all(capped.steps == 40) and np.isnan(capped[capped.state_ids[0]][:, -1]).all()


def test_a_model_without_states() -> None:
    model = it.load_model("model z\n  k = 2\n  y := k * time\nend\n")
    times = np.linspace(0.0, 3.0, 4)
    nat = it.simulate_cohort(model, times, parameters={"k": np.array([2.0, 3.0])}, backend="native")
    assert list(nat.status) == ["success"] * 2
    np.testing.assert_array_equal(nat["y"], [2.0 * times, 3.0 * times])


def test_single_patient_and_rodas5() -> None:
    model = load_template("viral_immune").model
    a = it.simulate(model, TIMES, solver=Rodas5())
    b = it.simulate(model, TIMES, solver=Rodas5(), backend="native")
    assert a.steps == b.steps and b.ok
    np.testing.assert_allclose(b.values, a.values, rtol=1e-7, atol=1e-7 * np.nanmax(np.abs(a.values)))


def test_refusals_name_the_problem() -> None:
    model = load_template("viral_immune").model
    with pytest.raises(InputError, match="Dopri5"):
        it.simulate_cohort(model, TIMES, size=2, solver=Dopri5(), backend="native")
    with pytest.raises(InputError, match="unknown backend 'cuda'"):
        it.simulate(model, TIMES, backend="cuda")
    floor = it.load_model("model fl\n  x = 1\n  x' = -k * floor(x + 2)\n  k = 0.1\nend\n")
    with pytest.raises(InputError, match="exact Jacobian of model 'fl'"):
        it.simulate(floor, TIMES, backend="native")
    events = it.load_model("model ev\n  x = 1\n  x' = -x\n  at (x < 0.5): x = 1\nend\n")
    with pytest.raises(InputError, match="events; model 'ev' has 1"):
        it.simulate(events, TIMES, backend="native")


def test_a_missing_compiler_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from immunetwin.errors import SolverError

    monkeypatch.setenv("CC", "/nonexistent/cc")  # part of the module's key: nothing cached is found
    native.build.cache_clear()
    native._build_alone.cache_clear()
    model = it.load_model("model nocc\n  x = 1\n  x' = -k * x\n  k = 0.3\nend\n")
    with pytest.raises(SolverError, match="could not build the model with this machine's C compiler"):
        it.simulate(model, TIMES, backend="native")
    native.build.cache_clear()
    native._build_alone.cache_clear()


def test_source_is_deterministic_and_cached(tmp_path: object) -> None:
    spec = load_template("tumor_immune").model.spec
    assert native.c_source(spec, Rodas5P()) == native.c_source(spec, Rodas5P())
    assert native.build(spec, Rodas5P()) is native.build(spec, Rodas5P())  # built once per process


def test_a_stage_input_is_reused_only_where_the_step_formed_it() -> None:
    from immunetwin.engines.solvers import _rosenbrock_arrays

    A = _rosenbrock_arrays(Rodas5P().tableau)[0]  # type: ignore[attr-defined]
    assert [s for s in range(1, 9) if native._extends(A[s], A[s - 1], s)] == [6, 7, 8]
    first = np.zeros(8)
    first[0] = 1.0  # u1 = y + k0: stage 0 read y, so there is no u to add k0 to
    assert not native._extends(first, np.zeros(8), 1)


def _trial_rows(model: it.Model, arms: list[it.Schedule], patients: int, seed: int) -> tuple:
    """Inputs of ``patients`` patients under every arm, arms of a patient in consecutive rows (as a
    trial's chunk lays them out)."""
    from immunetwin.engines.ode import _declared, _overrides, _prepare_times, _stops

    pars = _varied(model, ["beta", "delta", "p"], patients, seed)
    b = patients * len(arms)
    rows = {k: np.repeat(v, len(arms)) for k, v in pars.items()}
    _, ts, _ = _prepare_times(TIMES, 0.0)
    d, m = _declared(model, _overrides(model, rows, "parameter", b), b)
    return ts, d, m, _stops(model, arms * patients, model.spec.constants)


def _arms(model: it.Model) -> list[it.Schedule]:
    on = it.Input.window("eps_av", 3.0, 8.0, 0.9)
    return [
        it.Schedule(),
        it.Schedule.of([on]),
        it.Schedule.of([it.Input.window("eps_av", 5.0, 10.0, 0.9)]),
        it.Schedule.of([on, it.Bolus(model.state_ids[4], 12.0, 1e3)]),  # the same as arm 1 until day 12
        it.Schedule.of([it.Bolus(model.state_ids[4], 0.0, 10.0)]),  # differs from the start
    ]


@pytest.mark.parametrize("max_steps", [100_000, 200, 30])
def test_arms_solved_once_up_to_their_first_difference_give_the_same_bits(max_steps: int) -> None:
    # max_steps 200 stops the patients after the shared days (~55 steps), 30 within them
    model = load_template("viral_immune").model
    ts, d, m, stops = _trial_rows(model, _arms(model), 7, seed=3)
    assert np.isfinite(native.shared_prefixes(np.zeros(len(d)), [d, m], stops)[1]).sum() == 7
    solver = native.build(model.spec, Rodas5P())
    ctl = it.Controls(max_steps=max_steps)
    cols = tuple(range(len(model.spec.quantities)))
    for columns in (None, (cols[-1], cols[-3])):  # every quantity; two states only
        alone = native.run_native(solver, ts, d, m, stops, ctl, 4096, None, columns, threads=2, share=False)
        shared = native.run_native(solver, ts, d, m, stops, ctl, 4096, None, columns, threads=2)
        for a, b in zip(alone, shared, strict=True):
            np.testing.assert_array_equal(b, a)
    status = shared[1]
    assert (status == 0).all() if max_steps > 1000 else (status == 1).all()


def test_shared_prefixes_groups_consecutive_rows_until_their_schedules_differ() -> None:
    model = load_template("viral_immune").model
    _, d, m, stops = _trial_rows(model, _arms(model), 2, seed=3)
    group, until = native.shared_prefixes(np.zeros(len(d)), [d, m], stops)
    # arms 0-3 of a patient until day 3 (arm 1 and 3 alike until 12, but 0 and 2 differ earlier);
    # arm 4 differs at the start: alone
    np.testing.assert_array_equal(group, [0, 0, 0, 0, 1, 2, 2, 2, 2, 3])
    np.testing.assert_array_equal(until, [3.0, np.inf, 3.0, np.inf])
    # arms 1 and 3 of a patient: until day 12; a row that repeats a row before the previous one is
    # not grouped with it
    pick = [1, 3, 6, 1, 8]
    group, until = native.shared_prefixes(np.zeros(5), [d[pick], m[pick]], tuple(s[pick] for s in stops))
    np.testing.assert_array_equal(group, [0, 0, 1, 2, 3])
    np.testing.assert_array_equal(until, [12.0, np.inf, np.inf, np.inf])
    # any input bit that differs separates rows; NaN equals NaN
    d2 = d[[0, 0, 0]].copy()
    d2[:, 0] = [np.nan, np.nan, -0.0 if d2[0, 0] == 0 else np.nextafter(d2[0, 0], 1)]
    group, _ = native.shared_prefixes(np.zeros(3), [d2], tuple(s[[0, 1, 1]] for s in stops))
    np.testing.assert_array_equal(group, [0, 0, 1])


def test_outputs_of_states_only_equal_those_read_with_other_quantities() -> None:
    # states only: the solver interpolates just those states and skips the other quantities
    model = load_template("viral_immune").model
    ts, d, m, stops = _trial_rows(model, _arms(model)[:2], 5, seed=4)
    solver = native.build(model.spec, Rodas5P())
    index = {q.id: i for i, q in enumerate(model.spec.quantities)}
    states = (index["V"], index["D"], index["T"])
    derived = next(i for q, i in index.items() if q not in model.state_ids and q not in model.spec.constants)
    only = native.run_native(solver, ts, d, m, stops, it.Controls(), 64, None, states, threads=1)
    mixed = native.run_native(solver, ts, d, m, stops, it.Controls(), 64, None, (*states, derived), threads=1)
    np.testing.assert_array_equal(only[0], mixed[0][..., :3])
    np.testing.assert_array_equal(only[2], mixed[2])
    assert np.isfinite(only[0]).all()


def test_threads_building_one_solver_at_once_get_one_module(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    # cffi's compile changes the process's working directory: two threads building at once (two
    # chunks starting together on a fresh Dask worker) failed with the other's deleted folder
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(native, "_cache_dir", lambda: tmp_path)
    model = it.load_model("model race\n  x' = -k * x + u\n  x = 1; k = 0.7; u = 0.01\nend\n")
    source = native.c_source(model.spec, Rodas5P())
    sizes = (len(model.spec.quantities), len(model.spec.states), len(model.spec.constants))
    with ThreadPoolExecutor(3) as pool:
        solvers = list(pool.map(lambda _: native._build(source, *sizes), range(3)))
    assert len({id(s) for s in solvers}) == 1
    assert len(list(tmp_path.glob("_immunetwin_native_*"))) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("order", [3, 4, 5])
def test_the_controllers_root_is_within_two_ulp_of_the_exact_one(order: int) -> None:
    # x^(-1/order) by the generated C's vector iteration (what the step-size factor 0.9 en^(-1/order)
    # uses instead of pow), against 60-digit arithmetic over the range where the factor is not clipped
    mpmath = pytest.importorskip("mpmath")

    method = dataclasses.replace(Rodas5P(), order=order)  # Rodas5P's stages, this controller's exponent
    model = it.load_model("model m\n  x' = -k * x\n  x = 1; k = 1\nend\n")
    source = native.c_source(model.spec, method)
    solver = native._build(source, len(model.spec.quantities), 1, len(model.spec.constants))
    rng = np.random.default_rng(order)
    lo, hi = native._ROOT_RANGE
    x = np.concatenate([np.exp(rng.uniform(np.log(lo), np.log(hi), 3000)), [lo, hi, 1.0, 2.0, 0.5, np.nextafter(1.0, 0), np.nextafter(2.0, 0)]])  # fmt: skip
    got = np.empty_like(x)
    solver.lib.itn_root_inverse(x.size, solver.ffi.cast("double *", x.ctypes.data), solver.ffi.cast("double *", got.ctypes.data))  # fmt: skip
    mpmath.mp.dps = 60
    exact = np.array([float(mpmath.mpf(float(v)) ** (mpmath.mpf(-1) / order)) for v in x])
    assert np.max(np.abs(got - exact) / np.spacing(exact)) <= 2.0
    # outside the range the input is clamped (the factor is clipped there anyway); NaN and inf too
    edges = np.array([0.0, 1e-300, lo / 2, np.nan, np.inf, hi * 2])
    out = np.empty_like(edges)
    solver.lib.itn_root_inverse(edges.size, solver.ffi.cast("double *", edges.ctypes.data), solver.ffi.cast("double *", out.ctypes.data))  # fmt: skip
    low, high = got[x.size - 7], got[x.size - 6]
    np.testing.assert_array_equal(out, [low, low, low, low, high, high])


@pytest.mark.parametrize(("name", "width"), [("viral_immune", 8), ("constructs", 2)])
def test_the_lane_count_changes_no_bits(name: str, width: int) -> None:
    # a solver stepping `width` patients per vector (8: AVX-512's) against the 4-lane one: lanes are
    # independent and element-wise, so every patient's outputs, status and steps are the same bits
    model = load_template(name).model if name != "constructs" else it.load_model(CONSTRUCTS)
    if name == "constructs":
        from immunetwin.engines.ode import _declared, _overrides, _prepare_times, _stops

        _, ts, _ = _prepare_times(TIMES, 0.0)
        d, m = _declared(
            model, _overrides(model, _varied(model, ["K", "k1", "r"], 13, 5), "parameter", 13), 13
        )
        stops = _stops(model, [it.Schedule()] * 13, model.spec.constants)
    else:
        ts, d, m, stops = _trial_rows(model, _arms(model), 7, seed=11)  # 35 rows: lanes left over
    sizes = (len(model.spec.quantities), len(model.spec.states), len(model.spec.constants))
    four = native._build(native.c_source(model.spec, Rodas5P(), lanes=4), *sizes)
    other = native._build(native.c_source(model.spec, Rodas5P(), lanes=width), *sizes)
    assert four.key != other.key and (four.lanes, other.lanes) == (4, width)
    a = native.run_native(four, ts, d, m, stops, it.Controls(), 4096, None, None, threads=2)
    b = native.run_native(other, ts, d, m, stops, it.Controls(), 4096, None, None, threads=2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(y, x)
    assert (a[1] == 0).all()


def test_the_instruction_set_changes_no_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    # the step's products are added with one rounding (v_fma): with this machine's flags one FMA
    # instruction, with none libm's fma (exact wherever it runs). Both must give the same bits
    if not {"-mfma", "-mavx512f"} & set(native._target_flags()):
        pytest.skip("this machine has no FMA instruction: both builds would call libm's fma")
    model = load_template("viral_immune").model
    ts, d, m, stops = _trial_rows(model, _arms(model), 3, seed=5)
    sizes = (len(model.spec.quantities), len(model.spec.states), len(model.spec.constants))
    source = native.c_source(model.spec, Rodas5P(), lanes=4)
    machine = native._build(source, *sizes)
    monkeypatch.setattr(native, "_target_flags", lambda: ())
    native._build_alone.cache_clear()
    try:
        plain = native._build(source, *sizes)
    finally:
        monkeypatch.undo()
        native._build_alone.cache_clear()
    assert plain.key != machine.key
    a = native.run_native(machine, ts, d, m, stops, it.Controls(), 4096, None, None, threads=1)
    b = native.run_native(plain, ts, d, m, stops, it.Controls(), 4096, None, None, threads=1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(y, x)
    assert (a[1] == 0).all()


def test_every_fused_multiply_add_is_one_vector_instruction_where_the_target_has_them() -> None:
    # an fma lane loop that GCC neither inlined nor vectorised made a fit's sensitivity solve 8x
    # slower with the same bits: what the compiler made of v_fma is checked in its assembly
    flags = native._target_flags()
    if not {"-mfma", "-mavx512f"} & set(flags):
        pytest.skip("this machine has no FMA instruction: v_fma calls libm's fma by design")
    cc = shlex.split(os.environ.get("CC", "") or str(sysconfig.get_config_var("CC") or "cc"))
    spec = load_template("viral_immune").model.spec
    sens = sensitivity_spec(spec, 4).spec
    for model, lanes in ((spec, native.lanes()), (spec, 4), (sens, 4)):
        source = native.c_source(model, Rodas5P(), lanes=lanes)
        done = subprocess.run(
            [*cc, *native.CFLAGS, *flags, "-S", "-o", "-", "-x", "c", "-"],
            input=source,
            capture_output=True,
            text=True,
            check=True,
        )
        packed = re.findall(r"\bvfn?madd\d{3}pd\b", done.stdout)
        assert len(packed) >= source.count("v_fma(") - 1  # every call site (less the helper's own line)
        assert not re.search(r"\bvfn?madd\d{3}sd\b|call\s+\S*fma", done.stdout)


def test_lanes_are_a_power_of_two() -> None:
    model = it.load_model("model m\n  x' = -k * x\n  x = 1; k = 1\nend\n")
    assert native.lanes() in (4, 8)
    with pytest.raises(InputError, match="lanes must be a power of two"):
        native.c_source(model.spec, Rodas5P(), lanes=6)


def test_a_cohort_takes_wide_vectors_only_when_every_thread_fills_one() -> None:
    wide = native.lanes()
    narrow = min(wide, 4)
    assert native.lanes_for(1, threads=1) == narrow
    assert native.lanes_for(wide, threads=1) == wide
    assert native.lanes_for(2 * wide - 1, threads=2) == narrow
    assert native.lanes_for(2 * wide, threads=2) == wide
    assert native.lanes_for(10**6) == wide
