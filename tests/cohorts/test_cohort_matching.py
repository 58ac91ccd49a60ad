"""Prevalence selection (Allen et al. 2016) on plausible pools with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from immunetwin.cohorts import NormalTarget, SampleTarget, prevalence_select
from immunetwin.errors import InputError


def test_selection_from_a_uniform_pool_reproduces_a_normal_target() -> None:
    rng = np.random.default_rng(11)
    pool = rng.uniform(0.0, 10.0, (20000, 1))
    target = NormalTarget(("x",), (5.0,), (1.0,))
    res = prevalence_select(pool, target, rng, minimum=1000)
    chosen = pool[res.selected, 0]
    assert len(chosen) >= 1000
    assert res.acceptance_rate == pytest.approx(len(chosen) / 20000)
    # the selected values follow N(5, 1): mean and sd within Monte Carlo error, KS does not reject
    assert abs(chosen.mean() - 5.0) < 4 / np.sqrt(len(chosen))
    assert abs(chosen.std() - 1.0) < 0.05
    assert stats.kstest(chosen, stats.norm(5.0, 1.0).cdf).pvalue > 0.01
    assert res.ks_pvalues["x"] > 0.01
    # the untouched pool would be rejected out of hand
    assert stats.kstest(pool[:2000, 0], stats.norm(5.0, 1.0).cdf).pvalue < 1e-10


def test_two_quantities_and_sample_targets() -> None:
    rng = np.random.default_rng(5)
    pool = rng.uniform(-4.0, 4.0, (30000, 2))
    observed = rng.multivariate_normal([0.5, -0.5], [[1.0, 0.0], [0.0, 0.5]], 400)
    res = prevalence_select(pool, SampleTarget(("a", "b"), observed), rng, minimum=500)
    chosen = pool[res.selected]
    assert np.allclose(chosen.mean(axis=0), [0.5, -0.5], atol=0.15)
    assert min(res.ks_pvalues.values()) > 0.01


def test_selection_is_reproducible_and_refuses_impossible_requests() -> None:
    pool = np.random.default_rng(1).uniform(0.0, 10.0, (3000, 1))
    target = NormalTarget(("x",), (5.0,), (1.0,))
    a = prevalence_select(pool, target, np.random.default_rng(9), minimum=200)
    b = prevalence_select(pool, target, np.random.default_rng(9), minimum=200)
    assert np.array_equal(a.selected, b.selected) and a.beta == b.beta
    with pytest.raises(InputError, match="enlarge the pool"):
        prevalence_select(pool, target, np.random.default_rng(9), minimum=2900)
    with pytest.raises(InputError, match="NaN"):
        prevalence_select(np.array([[1.0], [np.nan]] * 10), target, np.random.default_rng(9), minimum=2)
    with pytest.raises(InputError, match="sds positive"):
        NormalTarget(("x",), (5.0,), (0.0,))
