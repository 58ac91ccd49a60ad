"""The SMC building blocks: weighted quantiles, resampling, importance weights, Metropolis moves."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from immunetwin.errors import InputError
from immunetwin.twin.belief import normalise, weighted_quantiles
from immunetwin.twin.particles import bucket
from immunetwin.twin.smc import importance_weights, systematic_resample


def test_weighted_quantiles_equal_numpy_hazen_for_equal_weights():
    x = np.random.default_rng(0).normal(size=(101, 3))
    levels = np.array([0.05, 0.5, 0.95])
    got = weighted_quantiles(x, np.full(101, 1 / 101), levels)
    np.testing.assert_allclose(got, np.quantile(x, levels, axis=0, method="hazen"))


def test_weighted_quantiles_follow_the_weights():
    x = np.array([0.0, 1.0, 2.0])
    assert weighted_quantiles(x, np.array([0.0, 0.0, 1.0]), np.array([0.5]))[0] == 2.0


def test_systematic_resampling_keeps_expected_counts():
    w = np.array([0.5, 0.25, 0.125, 0.125])
    idx = systematic_resample(jax.random.PRNGKey(3), w, 800)
    np.testing.assert_array_equal(np.bincount(idx, minlength=4), [400, 200, 100, 100])


def test_importance_weights_recover_a_target_mean_and_leave_out_impossible_draws():
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 2.0, 20_000)  # proposal N(0, 2^2); target N(1, 1)
    log_q = -0.5 * (x / 2.0) ** 2
    log_p = np.where(x > 5.0, -np.inf, -0.5 * (x - 1.0) ** 2)
    lw, k = importance_weights(log_p, log_q)
    w = np.exp(lw)
    assert np.sum(w) == pytest.approx(1.0) and np.all(w[x > 5.0] == 0)
    assert np.sum(w * x) == pytest.approx(1.0, abs=0.03) and k < 0.7


def test_normalise_refuses_all_zero_weights():
    with pytest.raises(InputError, match="zero weight"):
        normalise(np.full(3, -np.inf))


def test_buckets_are_few():
    assert [bucket(n) for n in (1, 2, 8, 9, 32, 33, 100)] == [8, 8, 8, 32, 32, 128, 128]


def test_prior_draws_follow_the_template_prior(tiv, data):
    from immunetwin.inference import patient_problem
    from immunetwin.twin.tempering import sample_prior

    problem = patient_problem(tiv, data, estimate=["beta", "c"])
    theta = sample_prior(problem, jax.random.PRNGKey(5), 20_000)
    assert np.all((theta >= problem.lower) & (theta <= problem.upper))
    # beta: lognormal(median 3.2e-5, sigma 1) -> log10 beta ~ N(log10 3.2e-5, 1/ln 10), bounds 3.5 sd away
    assert theta[:, 0].mean() == pytest.approx(np.log10(3.2e-5), abs=0.01)
    assert theta[:, 0].std() == pytest.approx(1 / np.log(10), rel=0.03)
    # c: lognormal(median 5.2, sigma 0.5), bounds [1, 20]: truncated above at 2.7 sd
    assert np.median(theta[:, 1]) == pytest.approx(np.log10(5.2), abs=0.01)


def test_next_temperature_keeps_the_ess_fraction():
    from immunetwin.twin.tempering import next_temperature

    ll = np.random.default_rng(4).normal(-50.0, 10.0, 1000)
    phi = next_temperature(ll, 0.0, 0.5)
    w = np.exp(phi * (ll - ll.max()))
    assert 0 < phi < 1 and np.sum(w) ** 2 / np.sum(w**2) == pytest.approx(500, rel=1e-3)
    assert next_temperature(np.zeros(10), 0.3, 0.5) == 1.0  # a flat likelihood: straight to the posterior
