"""Multi-start MAP / maximum likelihood."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import curve_fit

from decay import decay_problem
from immunetwin.errors import InputError
from immunetwin.inference import compile_objective
from immunetwin.inference.fit import fit_map


@pytest.fixture(scope="module")
def objective(decay_data):
    return compile_objective(decay_problem(decay_data))


def test_maximum_likelihood_equals_least_squares(objective, decay_data):
    # With normal noise of known sd, the MLE is the least-squares fit (scipy, independent of our code).
    t = np.array([0.5, 1.0, 2.0, 4.0])

    def model(_x, k, scale):
        return scale * np.concatenate([10 * np.exp(-k * t), 5 * np.exp(-k * t)])

    (k_ls, s_ls), _ = curve_fit(model, None, decay_data, p0=(0.3, 1.2))
    fit = fit_map(objective, key=jax.random.PRNGKey(0), starts=4, prior=False)
    assert fit.values["k"] == pytest.approx(k_ls, rel=1e-4)
    assert fit.values["scale"] == pytest.approx(s_ls, rel=1e-4)
    assert fit.converged and fit.at_best >= 2
    assert fit.log_likelihood == pytest.approx(fit.objective, rel=1e-10)
    assert [s.value for s in fit.starts] == sorted((s.value for s in fit.starts), reverse=True)


def test_map_is_pulled_toward_the_prior(objective):
    ml = fit_map(objective, key=jax.random.PRNGKey(1), starts=3, prior=False)
    mp = fit_map(objective, key=jax.random.PRNGKey(1), starts=3, prior=True)
    # prior on log10 k is N(-0.3, 1): log10 0.5 = -0.301, so the MAP moves toward -0.3 by little
    assert mp.objective == pytest.approx(mp.log_likelihood + mp.log_prior, rel=1e-10)
    # the split into likelihood and prior is the objective's own, evaluated at the optimum
    with jax.enable_x64(True):
        theta = jnp.asarray(mp.theta)
        assert mp.log_likelihood == pytest.approx(float(objective.jitted("log_likelihood")(theta)), rel=1e-9)
        assert mp.log_prior == pytest.approx(float(objective.jitted("log_prior")(theta)), rel=1e-12)
    assert abs(math.log10(mp.values["k"]) + 0.3) <= abs(math.log10(ml.values["k"]) + 0.3) + 1e-9


def test_zero_starts_are_refused(objective):
    with pytest.raises(InputError, match="starts"):
        fit_map(objective, key=jax.random.PRNGKey(0), starts=0)


def test_finite_difference_gradient_reaches_the_same_optimum(objective, decay_data):
    """The batched finite-difference strategy finds the least-squares optimum the forward-sensitivity
    strategy finds (to the solver's precision)."""
    forward = fit_map(objective, key=jax.random.PRNGKey(0), starts=3, prior=False)
    fd = fit_map(objective, key=jax.random.PRNGKey(0), starts=3, prior=False, gradient="finite-difference")
    np.testing.assert_allclose(fd.theta, forward.theta, rtol=1e-4, atol=1e-5)
    assert fd.objective == pytest.approx(forward.objective, abs=1e-6)
    with pytest.raises(InputError, match="unknown gradient"):
        fit_map(objective, key=jax.random.PRNGKey(0), starts=1, gradient="adjoint")


def test_batched_hessian_matches_forward_over_forward_differentiation(objective):
    """Central second differences of one batched solve against jax.hessian (forward over forward)."""
    import jax.numpy as jnp

    from immunetwin.inference import hessian

    theta = np.asarray(objective.problem.nominal, dtype=float)
    with jax.enable_x64(True):
        ours = hessian(objective, theta)
        exact = np.asarray(jax.jit(jax.jacfwd(jax.jacfwd(objective.log_posterior)))(jnp.asarray(theta)))
    np.testing.assert_allclose(ours, exact, rtol=1e-3, atol=1e-3 * np.abs(exact).max())


def test_native_lockstep_starts_reach_the_same_fits_as_one_after_another(objective, decay_data):
    native = compile_objective(decay_problem(decay_data), backend="native")
    key = jax.random.PRNGKey(3)
    # three iterations: the starts are still apart, so a point given to the wrong start would show
    together = fit_map(native, key=key, starts=5, max_iterations=3)  # lockstep: the native default
    apart = fit_map(native, key=key, starts=5, max_iterations=3, lockstep=False)
    assert len({round(s.value, 2) for s in apart.starts}) == 5
    # a batch rounds the chain rule a little differently from one point (XLA), and L-BFGS-B carries it
    for a, b in zip(together.starts, apart.starts, strict=True):
        np.testing.assert_array_equal(a.start, b.start)
        np.testing.assert_allclose(a.theta, b.theta, rtol=1e-5)
        assert a.value == pytest.approx(b.value, rel=1e-7)
        assert a.evaluations == b.evaluations
    full, xla = fit_map(native, key=key, starts=5), fit_map(objective, key=key, starts=5)
    assert full.at_best == xla.at_best >= 2
    np.testing.assert_allclose(full.theta, xla.theta, rtol=1e-4)  # both stop at ftol 1e-9
    assert full.objective == pytest.approx(xla.objective, rel=1e-7)  # the engines agree to ~rtol


def test_lockstep_failure_reaches_every_start(objective):
    from immunetwin.inference import fit as fit_module

    def broken(points):
        raise RuntimeError("solver exploded")

    def run(x0, evaluate):
        return evaluate(x0)

    with pytest.raises(RuntimeError, match="solver exploded"):
        fit_module._run_lockstep(run, [np.zeros(2), np.ones(2), np.full(2, 2.0)], broken)


def test_fides_reaches_the_least_squares_optimum_lbfgsb_reaches(objective, decay_data):
    """The trust-region strategy (fides) and L-BFGS-B end at the same maximum likelihood."""
    key = jax.random.PRNGKey(0)
    lbfgsb = fit_map(objective, key=key, starts=4, prior=False)
    trust = fit_map(objective, key=key, starts=4, prior=False, optimizer="fides")
    assert trust.converged and trust.at_best == 4
    # fides's exit flags; a trust region shrunk to nothing (rounding at the optimum) is not convergence
    assert {s.message for s in trust.starts} <= {"FTOL", "XTOL", "GTOL", "DELTA_TOO_SMALL"}
    assert all(s.success == (s.message != "DELTA_TOO_SMALL") for s in trust.starts)
    np.testing.assert_allclose(trust.theta, lbfgsb.theta, rtol=1e-4, atol=1e-6)
    assert trust.objective == pytest.approx(lbfgsb.objective, abs=1e-6)
    for a, b in zip(trust.starts, lbfgsb.starts, strict=True):
        assert a.evaluations >= 2 and b.evaluations >= 2
    with pytest.raises(InputError, match="unknown optimizer 'newton'"):
        fit_map(objective, key=key, starts=1, optimizer="newton")


def _bowl(failed: float) -> object:
    """``-(x - 1)^2 - (y - 2)^2`` and its gradient, not solvable (``-inf``) where ``x > failed``."""

    def evaluate(x: np.ndarray) -> tuple[float, np.ndarray]:
        if x[0] > failed:
            return -math.inf, np.full(2, math.nan)
        return -((x[0] - 1.0) ** 2) - (x[1] - 2.0) ** 2, np.array([-2 * (x[0] - 1.0), -2 * (x[1] - 2.0)])

    return evaluate


@pytest.mark.parametrize("optimizer", ["fides", "L-BFGS-B"])
def test_each_optimizer_backs_off_from_points_that_do_not_solve(optimizer):
    from immunetwin.inference import fit as fit_module

    local = {"fides": fit_module._fides, "L-BFGS-B": fit_module._lbfgsb}[optimizer]
    lo, hi = np.array([-5.0, -5.0]), np.array([5.0, 5.0])
    # the first step from (-4, -4) overshoots into x > 1.5, where nothing solves: fides shrinks its
    # trust region and goes on; scipy's L-BFGS-B takes the failed line search for convergence and
    # stops where it began (with a failed point as 1e30, or as inf, with any gradient)
    out = local(np.array([-4.0, -4.0]), _bowl(1.5), lo, hi, 200, 1e-12)
    if optimizer == "fides":
        np.testing.assert_allclose(out.theta, [1.0, 2.0], atol=1e-5)
        assert out.value == pytest.approx(0.0, abs=1e-9) and out.success
    else:
        np.testing.assert_array_equal(out.theta, [-4.0, -4.0])
        assert out.value == -61.0 and out.evaluations == 3
    # where the first step stays solvable, both reach the optimum
    near = local(np.array([1.0, -4.0]), _bowl(1.5), lo, hi, 200, 1e-12)
    np.testing.assert_allclose(near.theta, [1.0, 2.0], atol=1e-5)
    # a start that does not solve ends at once, at -inf, where it began
    bad = local(np.array([3.0, 0.0]), _bowl(1.5), lo, hi, 200, 1e-12)
    assert bad.value == -math.inf and not bad.success
    np.testing.assert_array_equal(bad.theta, [3.0, 0.0])
    # an optimum outside the box: the bound
    edge = local(np.array([-4.0, -4.0]), _bowl(10.0), lo, np.array([0.5, 5.0]), 200, 1e-12)
    np.testing.assert_allclose(edge.theta, [0.5, 2.0], atol=1e-5)
    assert np.all(edge.theta <= [0.5, 5.0])
