"""Forward sensitivities of the native backend against closed forms and finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from enzyme import ENZYME
from immunetwin import Controls, load_model
from immunetwin.engines import native
from immunetwin.engines.sensitivity import sensitivity_spec
from immunetwin.engines.solvers import Rodas5P
from immunetwin.errors import InputError

CTL = Controls(rtol=1e-10, atol=1e-12)
TIMES = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0])


def _solve(spec, y0, c, dy0, dc):
    solver, sens = native.build_sensitivities(spec, Rodas5P(), dy0.shape[-1])
    ts = np.tile(TIMES, (len(y0), 1))
    return native.solve_sensitivities(solver, sens, ts, y0, c, dy0, dc, CTL)


def test_decay_sensitivities_equal_the_closed_form() -> None:
    # A' = -k A: dA/dA0 = exp(-k t), dA/dk = -t A0 exp(-k t)
    model = load_model("model decay\n  A' = -k * A\n  A = 10\n  k = 0.5\nend\n")
    spec = model.spec
    k_index = spec.constants.index("k")
    c = np.zeros((1, len(spec.constants)))
    c[0, k_index] = 0.5
    y0 = np.array([[10.0]])
    dy0 = np.array([[[1.0, 0.0]]])  # direction 0: A0; direction 1: k
    dc = np.zeros((1, len(spec.constants), 2))
    dc[0, k_index, 1] = 1.0
    states, sens, status = _solve(spec, y0, c, dy0, dc)
    assert status.tolist() == [0]
    np.testing.assert_allclose(states[0, :, 0], 10 * np.exp(-0.5 * TIMES), rtol=1e-8)
    np.testing.assert_allclose(sens[0, :, 0, 0], np.exp(-0.5 * TIMES), rtol=1e-8)
    np.testing.assert_allclose(sens[0, :, 0, 1], -TIMES * 10 * np.exp(-0.5 * TIMES), rtol=1e-8, atol=1e-12)


def test_sensitivities_match_finite_differences_through_rules_and_compartments() -> None:
    spec = load_model(ENZYME).spec
    assert any(st.stored_as_amount for st in spec.states)
    plain = native.build(spec, Rodas5P())
    names = list(spec.constants)
    c0 = np.array([[{"C": 2.0, "Vm": 1.5, "Km": 3.0, "Ki": 4.0}.get(x, 0.0) for x in names]])
    y0 = np.array([[20.0, 0.0]])  # amounts: 10 * C
    # three seeded directions: S's start amount, Km, and a mix of Vm and the compartment size
    dy0 = np.zeros((1, 2, 3))
    dy0[0, 0, 0] = 1.0
    dc = np.zeros((1, len(names), 3))
    dc[0, names.index("Km"), 1] = 1.0
    dc[0, names.index("Vm"), 2], dc[0, names.index("C"), 2] = 0.7, 0.3
    states, sens, status = _solve(spec, y0, c0, dy0, dc)
    assert status.tolist() == [0]
    q = {q.id: i for i, q in enumerate(spec.quantities)}
    cols = [q[st.id] for st in spec.states]
    values, _ = native.solve_values(plain, TIMES[None], y0, c0, CTL)
    np.testing.assert_allclose(states[0], values[0][:, cols] * 2.0, rtol=1e-8, atol=1e-10)  # amounts
    for d in range(3):
        eps = 1e-3  # central differences: truncation ~eps^2, solver noise ~rtol |y| / eps, both ~1e-6
        up, _ = native.solve_values(plain, TIMES[None], y0 + eps * dy0[..., d], c0 + eps * dc[..., d], CTL)
        down, _ = native.solve_values(plain, TIMES[None], y0 - eps * dy0[..., d], c0 - eps * dc[..., d], CTL)
        # values are concentrations; the stored states are amounts = concentration * C
        size_up, size_down = (c[0, names.index("C")] for c in (c0 + eps * dc[..., d], c0 - eps * dc[..., d]))
        fd = (up[0][:, cols] * size_up - down[0][:, cols] * size_down) / (2 * eps)
        np.testing.assert_allclose(sens[0, :, :, d], fd, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(sens[0, 1:, :, 1]) > 0)  # Km moves both species after t = 0


def test_lanes_are_independent_of_their_companions() -> None:
    spec = load_model(ENZYME).spec
    names = list(spec.constants)
    base = np.array([{"C": 2.0, "Vm": 1.5, "Km": 3.0, "Ki": 4.0}.get(x, 0.0) for x in names])
    c = np.stack([base * f for f in (1.0, 0.5, 2.0, 1.3, 0.8, 1.0)])
    y0 = np.tile([20.0, 0.0], (6, 1))
    dy0 = np.zeros((6, 2, 2))
    dy0[:, 0, 0] = 1.0
    dc = np.zeros((6, len(names), 2))
    dc[:, names.index("Km"), 1] = 1.0
    together = _solve(spec, y0, c, dy0, dc)
    alone = _solve(spec, y0[:1], c[:1], dy0[:1], dc[:1])
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[5], b[0])  # the same patient in another lane, another thread


def test_refusals_name_the_problem() -> None:
    with_event = load_model("model ev\n  A' = -A\n  A = 1\n  E1: at time > 1: A = 2\nend\n").spec
    with pytest.raises(InputError, match="events"):
        sensitivity_spec(with_event, 2)
    with pytest.raises(InputError, match="at least one direction"):
        sensitivity_spec(load_model(ENZYME).spec, 0)


def test_augmented_spec_layout() -> None:
    spec = load_model(ENZYME).spec
    sens = sensitivity_spec(spec, 3)
    n, nc = len(spec.states), len(spec.constants)
    assert len(sens.spec.states) == n * 4 and len(sens.spec.constants) == nc * 4
    assert len(sens.state_columns) == n and len(sens.sensitivity_columns) == 3 * n
    assert sens.spec.states[:n] == spec.states and sens.spec.constants[:nc] == spec.constants
