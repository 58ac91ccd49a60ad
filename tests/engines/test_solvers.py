"""Convergence orders and analytic solutions of the one-step methods (tableaus are data: test them)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from immunetwin.engines.codegen import _Names, jacobian_terms
from immunetwin.engines.solvers import (
    ODE,
    Dopri5,
    Rodas5,
    Rodas5P,
    dense_jacobian,
    elimination_order,
    sparse_lu,
    sparse_lu_solve,
)
from immunetwin.templates import list_templates, load_template


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


def _factor_entries(pattern, n, order):
    """Entries of the factors of a matrix with ``pattern`` (plus its diagonal) eliminated in ``order``."""
    rng = np.random.default_rng(0)  # diagonally dominant values: no pivot cancels to zero
    entries = {ij: rng.uniform(0.1, 0.2) for ij in pattern if ij[0] != ij[1]}
    entries |= {(i, i): float(n) for i in range(n)}
    return len(sparse_lu(entries, n, order))


def test_markowitz_order_eliminates_an_arrow_matrix_without_fill():
    # state 0 couples to every other: eliminated first it fills the whole matrix, late it fills nothing
    n = 8
    pattern = [(0, j) for j in range(n)] + [(i, 0) for i in range(n)] + [(i, i) for i in range(n)]
    order = elimination_order(tuple(pattern), n)
    assert order.index(0) >= n - 2 and sorted(order) == list(range(n))  # the hub among the last two
    assert _factor_entries(pattern, n, order) == 3 * n - 2
    assert _factor_entries(pattern, n, None) == n * n


def test_a_dense_pattern_keeps_the_natural_order():
    n = 5
    assert elimination_order(tuple((i, j) for i in range(n) for j in range(n)), n) == tuple(range(n))


@pytest.mark.parametrize("seed", range(5))
def test_lu_in_any_order_solves_the_system(seed):
    rng = np.random.default_rng(seed)
    n = 9
    mask = rng.random((n, n)) < 0.3
    np.fill_diagonal(mask, True)
    pattern = tuple((int(i), int(j)) for i, j in zip(*np.nonzero(mask), strict=True))
    a = np.where(mask, rng.normal(size=(n, n)), 0.0)
    a[np.diag_indices(n)] = np.abs(a).sum(axis=1) + 1.0  # diagonally dominant: no pivoting needed
    b = rng.normal(size=n)
    with jax.enable_x64(True):
        for order in (None, elimination_order(pattern, n), tuple(rng.permutation(n).tolist())):
            lu = sparse_lu({ij: a[ij] for ij in pattern}, n, order)
            x = np.asarray(sparse_lu_solve(lu, jnp.asarray(b), n, order))
            np.testing.assert_allclose(a @ x, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list_templates())
def test_template_jacobians_fill_no_more_than_in_the_natural_order(name):
    spec = load_template(name).model.spec
    terms = jacobian_terms(spec, _Names(spec))
    if terms is None:
        pytest.skip(f"{name} has no symbolic Jacobian")
    n = len(spec.states)
    natural = _factor_entries(terms.pattern, n, None)
    ordered = _factor_entries(terms.pattern, n, elimination_order(tuple(terms.pattern), n))
    assert ordered <= natural
    if name == "viral_immune":  # the flagship's factors were 75 entries in the natural order
        assert ordered < natural
