"""Weighted summaries: they reduce to the ordinary ones for equal weights, and respect weights.

References: Kish L. Survey Sampling. Wiley, 1965 (effective sample size); Hyndman RJ, Fan Y. Sample
quantiles in statistical packages. Am Stat 1996;50:361-365 (definition 5, numpy's "hazen").
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from immunetwin.decisions import (
    kish_ess,
    normalise_log_weights,
    weighted_mcse,
    weighted_mean,
    weighted_quantile,
)
from immunetwin.errors import InputError

X = np.random.default_rng(7).lognormal(0.0, 1.0, size=101)


def test_equal_weights_give_the_ordinary_summaries():
    w = normalise_log_weights(None, X.size)
    q = [0.0, 0.05, 0.25, 0.5, 0.9, 0.975, 1.0]
    np.testing.assert_allclose(weighted_quantile(X, w, q), np.quantile(X, q, method="hazen"), rtol=1e-13)
    assert weighted_mean(X, w) == pytest.approx(X.mean(), rel=1e-14)
    assert weighted_mcse(X, w) == pytest.approx(X.std() / math.sqrt(X.size), rel=1e-12)
    assert kish_ess(w) == pytest.approx(X.size, rel=1e-12)


def test_a_constant_shift_of_the_log_weights_changes_nothing():
    lw = np.random.default_rng(3).normal(size=X.size)
    a, b = normalise_log_weights(lw, X.size), normalise_log_weights(lw - 700.0, X.size)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    assert a.sum() == pytest.approx(1.0, abs=1e-15)


def test_integer_weights_act_like_repeated_particles():
    counts = np.random.default_rng(5).integers(1, 4, size=X.size)
    w = normalise_log_weights(np.log(counts), X.size)
    repeated = np.repeat(X, counts)
    assert weighted_mean(X, w) == pytest.approx(repeated.mean(), rel=1e-13)
    assert weighted_mean(X > 1.0, w) == pytest.approx(np.mean(repeated > 1.0), rel=1e-13)
    assert kish_ess(w) == pytest.approx(counts.sum() ** 2 / np.sum(counts**2), rel=1e-13)


def test_weighted_quantile_follows_the_weight():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    w = np.array([0.0, 0.1, 0.1, 0.8])  # zero-weight particles are ignored
    # mid-points of the weights 0.05, 0.15, 0.6 (of x = 1, 2, 3), linear in between, flat outside
    assert weighted_quantile(x, w, 0.1) == pytest.approx(1.5)
    assert weighted_quantile(x, w, 0.5) == pytest.approx(2.0 + 0.35 / 0.45)
    assert weighted_quantile(x, w, 0.6) == pytest.approx(3.0)
    assert weighted_quantile(x, w, 0.0) == pytest.approx(1.0)


def test_ess_of_one_dominant_particle_is_near_one():
    w = normalise_log_weights(np.array([0.0, -50.0, -50.0, -np.inf]), 4)
    assert kish_ess(w) == pytest.approx(1.0, abs=1e-12)
    assert w[3] == 0.0


@pytest.mark.parametrize(
    ("log_weights", "message"),
    [
        (np.zeros(3), r"shape \(3,\), but there are 4 particles"),
        (np.array([0.0, np.nan, 0.0, 0.0]), "NaN or \\+inf \\(particle 1\\)"),
        (np.array([0.0, np.inf, 0.0, 0.0]), "NaN or \\+inf"),
        (np.full(4, -np.inf), "every weight is zero"),
    ],
)
def test_bad_log_weights_are_refused(log_weights, message):
    with pytest.raises(InputError, match=message):
        normalise_log_weights(log_weights, 4)


def test_no_particles_is_refused():
    with pytest.raises(InputError, match="no particles"):
        normalise_log_weights(None, 0)
