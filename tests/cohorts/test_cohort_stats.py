"""Interval estimates against published worked examples (Newcombe 1998)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from immunetwin.cohorts.stats import diff_means, diff_paired, diff_proportions, mean_interval, wilson


def test_wilson_reproduces_newcombe_1998_example() -> None:
    # Newcombe 1998, Stat Med 17:857, Table II: 81/263, Wilson score interval (method 3) 0.2553 to 0.3662
    iv = wilson(81, 263, 0.95)
    assert iv.lower == pytest.approx(0.2553, abs=1e-4)
    assert iv.upper == pytest.approx(0.3662, abs=1e-4)
    zero = wilson(0, 10, 0.95)  # method 3 for 0/10: 0 to 0.2775
    assert zero.lower == 0.0 and zero.upper == pytest.approx(0.2775, abs=1e-4)


def test_newcombe_hybrid_score_reproduces_newcombe_1998_example() -> None:
    # Newcombe 1998, Stat Med 17:873, Table II example (a): 56/70 - 48/80, method 10: 0.0524 to 0.3339
    x = np.r_[np.ones(56), np.zeros(14)]
    y = np.r_[np.ones(48), np.zeros(32)]
    iv = diff_proportions(x, y, 0.95)
    assert iv.estimate == pytest.approx(0.8 - 0.6)
    assert iv.lower == pytest.approx(0.0524, abs=1e-4)
    assert iv.upper == pytest.approx(0.3339, abs=1e-4)


def test_welch_interval_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(1.0, 1.0, 40), rng.normal(0.0, 3.0, 25)
    iv = diff_means(x, y, 0.9)
    ref = stats.ttest_ind(x, y, equal_var=False).confidence_interval(0.9)
    assert (iv.lower, iv.upper) == pytest.approx((ref.low, ref.high), rel=1e-10)


def test_paired_and_mean_intervals() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 1.0, 30)
    y = x + 0.5 + rng.normal(0.0, 0.1, 30)
    iv = diff_paired(y, x, 0.95)
    ref = stats.ttest_1samp(y - x, 0.0).confidence_interval(0.95)
    assert (iv.lower, iv.upper) == pytest.approx((ref.low, ref.high), rel=1e-10)
    assert iv.contains(0.5) and not iv.contains(0.0)
    same = diff_paired(x, x, 0.95)
    assert (same.estimate, same.lower, same.upper) == (0.0, 0.0, 0.0)
    assert np.isnan(mean_interval(np.array([1.0]), 0.95).lower)
