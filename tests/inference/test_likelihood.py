"""The compiled likelihood against densities computed independently with scipy.stats."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from decay import decay_problem, decay_truth
from immunetwin import Controls
from immunetwin.inference import compile_objective
from immunetwin.inference.likelihood import forward_value_and_grad, reverse_differentiable

THETA = np.array([math.log10(0.5), 1.0])  # k on log10 scale, scale on lin


def _eval(f, theta=THETA):
    with jax.enable_x64(True):
        return float(jax.jit(f)(jnp.asarray(theta)))


@pytest.fixture(scope="module")
def objective(decay_data):
    return compile_objective(decay_problem(decay_data))


def test_normal_log_likelihood_equals_scipy(objective, decay_data):
    expected = stats.norm.logpdf(decay_data, decay_truth(), 0.2).sum()
    assert _eval(objective.log_likelihood) == pytest.approx(expected, rel=1e-7)


def test_prior_is_the_petab_prior_on_the_parameter_scale(objective):
    # k: parameterScaleNormal(-0.3, 1) on log10 k; scale: no prior -> uniform on [0.1, 10]
    expected = stats.norm.logpdf(THETA[0], -0.3, 1.0) - math.log(10 - 0.1)
    assert _eval(objective.log_prior) == pytest.approx(expected, rel=1e-10)
    outside = np.array([THETA[0], 20.0])
    assert _eval(objective.log_prior, outside) == -math.inf


def test_forward_gradient_matches_finite_differences_and_reverse_wrapper(objective):
    with jax.enable_x64(True):
        value, grad = jax.jit(forward_value_and_grad(objective.log_likelihood))(jnp.asarray(THETA))
        f = jax.jit(objective.log_likelihood)
        eps = 1e-6
        fd = [
            (float(f(jnp.asarray(THETA + eps * e))) - float(f(jnp.asarray(THETA - eps * e)))) / (2 * eps)
            for e in np.eye(2)
        ]
        rev = jax.jit(jax.grad(reverse_differentiable(objective.log_likelihood)))(jnp.asarray(THETA))
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rev), np.asarray(grad), rtol=1e-12)
    assert float(value) == pytest.approx(_eval(objective.log_likelihood), rel=1e-12)


def test_log10_observable_includes_the_jacobian_term(decay_data):
    y = np.abs(decay_data)
    obj = compile_objective(decay_problem(y, transformation="log10"))
    h = decay_truth()
    expected = (stats.norm.logpdf(np.log10(y), np.log10(h), 0.2) - np.log(y * math.log(10))).sum()
    assert _eval(obj.log_likelihood) == pytest.approx(expected, rel=1e-7)


def test_left_censored_rows_use_the_cdf_and_missing_values_drop_out(decay_data):
    values = decay_data.copy()
    cens = np.full(8, "", dtype="<U5")
    cens[3] = "left"  # below a limit of detection of 1.0 (true value 10 exp(-2) = 1.35)
    values[3] = 1.0
    values[7] = np.nan  # missing
    obj = compile_objective(decay_problem(values, censoring=cens))
    h = decay_truth()
    dens = [stats.norm.logpdf(values[i], h[i], 0.2) for i in (0, 1, 2, 4, 5, 6)]
    expected = sum(dens) + stats.norm.logcdf((1.0 - h[3]) / 0.2)
    assert _eval(obj.log_likelihood) == pytest.approx(expected, rel=1e-7)


def test_a_failed_solve_gives_minus_inf_and_is_diagnosed(decay_data):
    obj = compile_objective(decay_problem(decay_data), controls=Controls(max_steps=3))
    assert _eval(obj.log_likelihood) == -math.inf
    reasons = obj.diagnose(THETA)
    assert set(reasons) == {("", "c10"), ("", "c5")}
    assert all(r == "max_steps_reached" for r in reasons.values())
