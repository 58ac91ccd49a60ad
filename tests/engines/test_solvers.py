"""Convergence orders and analytic solutions of the one-step methods (tableaus are data: test them)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from immunetwin.engines.solvers import ODE, Dopri5, Rodas5, Rodas5P, dense_jacobian


def _rhs(t, y, c):  # y' = -c0 * y + sin(t): non-autonomous, exercises the d_i * df/dt terms
    return -c[0] * y + jnp.sin(t)


def _exact(t, y0, k):
    # solution of y' = -k y + sin t
    a = (k * np.sin(t) - np.cos(t)) / (1 + k * k)
    return (y0 - (-1 / (1 + k * k))) * np.exp(-k * t) + a


def _fixed_step_error(method, n_steps: int, k: float = 2.0, t_end: float = 2.0) -> float:
    with jax.enable_x64(True):
        y = jnp.array([1.0])
        c = jnp.array([k])
        h = t_end / n_steps
        t = 0.0
        for _ in range(n_steps):
            y, _, _ = method.step(ODE(_rhs), jnp.asarray(t), y, c, jnp.asarray(h))
            t += h
        return float(abs(y[0] - _exact(t_end, 1.0, k)))


@pytest.mark.parametrize("method", [Rodas5P(), Rodas5(), Dopri5()], ids=["rodas5p", "rodas5", "dopri5"])
def test_observed_order_is_five(method):
    e1 = _fixed_step_error(method, 10)
    e2 = _fixed_step_error(method, 20)
    order = np.log2(e1 / e2)
    assert 4.5 < order < 6.5, f"observed order {order:.2f} (errors {e1:.3e}, {e2:.3e})"


@pytest.mark.parametrize("method", [Rodas5P(), Rodas5()], ids=["rodas5p", "rodas5"])
def test_dense_output_is_accurate_inside_a_step(method):
    with jax.enable_x64(True):
        y0, c, h = jnp.array([1.0]), jnp.array([2.0]), jnp.asarray(0.05)
        y1, _, dense = method.step(ODE(_rhs), jnp.asarray(0.0), y0, c, h)
        for theta in (0.25, 0.5, 0.75):
            yi = method.interpolate(y0, y1, dense, jnp.asarray(theta), h)
            assert abs(float(yi[0]) - _exact(theta * 0.05, 1.0, 2.0)) < 1e-8


def test_rosenbrock_is_stable_on_a_very_stiff_problem():
    # y' = -1e6 (y - cos t): explicit methods need h < 2e-6; Rodas5P takes h = 0.1 and tracks cos t.
    def rhs(t, y, c):
        return -1e6 * (y - jnp.cos(t))

    with jax.enable_x64(True):
        y, t = jnp.array([1.0]), 0.0
        for _ in range(20):
            y, _, _ = Rodas5P().step(ODE(rhs), jnp.asarray(t), y, jnp.zeros(0), jnp.asarray(0.1))
            t += 0.1
        assert abs(float(y[0]) - np.cos(2.0)) < 1e-5


@pytest.mark.parametrize("method", [Rodas5P(), Rodas5(), Dopri5()], ids=["rodas5p", "rodas5", "dopri5"])
@pytest.mark.parametrize("batch", [(), (3,)], ids=["one", "batch-last"])
def test_dense_shape_is_that_of_a_step(method, batch):
    """The engine sizes its loop state by ``dense_shape`` without tracing a step: it must be the shape
    and dtype a traced step gives (one patient, and batch-last)."""
    with jax.enable_x64(True):
        y, c, t = jnp.ones((2, *batch)), jnp.full((1, *batch), 2.0), jnp.zeros(batch)
        ode = ODE(_rhs)
        if batch:  # as the engine lays out a block: each function vmapped over the last axis
            jac, pattern = dense_jacobian(_rhs, 2)
            last = partial(jax.vmap, in_axes=-1, out_axes=-1)
            ode = ODE(last(_rhs), last(jac), pattern)
        traced = jax.eval_shape(lambda: method.step(ode, t, y, c, jnp.ones_like(t))[2])
        assert method.dense_shape(ode, t, y, c) == traced
