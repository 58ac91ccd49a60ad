"""Forecast scores (coverage, CRPS, RMSE, PIT) and the two baselines of the validation benchmark.

Known answers: draws from the distribution that generated the data cover at the nominal rate
(Binomial(N, level)/N) and give uniform PITs; the ensemble CRPS of normal draws matches the closed
form of Gneiting & Raftery 2007 (eq. 21) within Monte Carlo error; the threshold-weighted CRPS of a
censored row matches the defining integral; the baselines reproduce hand computations.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pandas as pd
import pytest
from scipy import integrate
from scipy.stats import kstest, norm

from immunetwin.analysis import (
    crps,
    interval_coverage,
    last_value_forecast,
    pit,
    pool_scores,
    population_mean_forecast,
    rmse,
    score_forecast,
    split_at_cutoff,
)
from immunetwin.errors import InputError

KEY = jax.random.PRNGKey(0)


def _normal_crps(mu: float, sigma: float, y: float) -> float:
    """Closed form (Gneiting & Raftery 2007, JASA 102:359, eq. 21)."""
    z = (y - mu) / sigma
    return sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))


@pytest.fixture(scope="module")
def calibrated() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N = 4000 observations y_i ~ N(mu_i, 1) and S = 1000 draws of each from the same law."""
    rng = np.random.default_rng(1)
    mu = rng.normal(0.0, 2.0, size=4000)
    y = mu + rng.normal(size=mu.size)
    draws = mu + rng.normal(size=(1000, mu.size))
    return draws, y, mu


# -- coverage ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0.5, 0.9])
def test_coverage_of_the_true_distribution_is_nominal(calibrated, level):
    draws, y, _ = calibrated
    rate = interval_coverage(draws, y, [level]).rate[level]
    se = math.sqrt(level * (1 - level) / y.size)
    assert abs(rate - level) < 4 * se + 2e-3  # 2e-3: quantiles of 1000 draws


def test_coverage_of_an_overconfident_forecast_is_too_low(calibrated):
    draws, y, mu = calibrated
    narrow = mu + 0.5 * (draws - mu)
    rate = interval_coverage(narrow, y, [0.9]).rate[0.9]
    assert abs(rate - (2 * norm.cdf(0.5 * norm.ppf(0.95)) - 1)) < 0.03  # ~0.59, not 0.9


def test_censored_row_is_covered_when_the_lower_end_reaches_the_limit():
    draws = np.linspace(0.0, 10.0, 1001)[:, None] * np.ones((1, 3))  # 90% interval [0.5, 9.5]
    cov = interval_coverage(
        draws, np.array([np.nan, 2.0, 0.2]), [0.9], censored=[True, False, False], lod=[0.6, 2.0, 0.4]
    )
    assert cov.lower[0] == pytest.approx([0.5] * 3)
    assert cov.below.tolist() == [True, True, True]  # 2.0 <= lod 2.0 and 0.2 <= 0.4 are censored too
    assert cov.covered[0].tolist() == [True, True, False]  # lower 0.5 > lod 0.4


# -- CRPS -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mu", "sigma", "y"), [(0.0, 1.0, 0.3), (5.0, 2.0, 1.0), (-1.0, 0.5, -1.0)])
def test_crps_matches_the_normal_closed_form(mu, sigma, y):
    s = 40_000
    draws = np.asarray(mu + sigma * jax.random.normal(jax.random.PRNGKey(7), (s,)))
    assert crps(draws, y) == pytest.approx(_normal_crps(mu, sigma, y), abs=5 * sigma / math.sqrt(s))


def test_crps_of_many_observations_matches_row_by_row(calibrated):
    draws, y, mu = calibrated
    got = crps(draws[:, :5], y[:5])
    expected = [_normal_crps(m, 1.0, v) for m, v in zip(mu[:5], y[:5], strict=True)]
    assert got == pytest.approx(expected, abs=5 / math.sqrt(draws.shape[0]))


def test_threshold_weighted_crps_of_a_censored_row_matches_the_integral():
    mu, sigma, lod, s = 2.5, 1.0, 2.0, 40_000
    draws = np.asarray(mu + sigma * jax.random.normal(jax.random.PRNGKey(3), (s,)))
    exact, _ = integrate.quad(lambda z: (norm.cdf(z, mu, sigma) - 1) ** 2, lod, np.inf)  # y <= lod < z
    for observed in (np.nan, lod, -3.0):  # the value below the limit does not matter
        assert crps(draws, observed, censored=True, lod=lod) == pytest.approx(
            exact, abs=5 * sigma / math.sqrt(s)
        )
    below_y, _ = integrate.quad(lambda z: norm.cdf(z, mu, sigma) ** 2, lod, 3.0)  # y = 3 > lod
    above_y, _ = integrate.quad(lambda z: (norm.cdf(z, mu, sigma) - 1) ** 2, 3.0, np.inf)
    assert crps(draws, 3.0, lod=lod) == pytest.approx(below_y + above_y, abs=5 * sigma / math.sqrt(s))


def test_weights_act_as_repeated_samples():
    y = np.array([0.7, 1.6])
    weighted = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    repeated = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    assert crps(weighted, y, weights=[1, 2, 1]) == pytest.approx(crps(repeated, y))
    a = interval_coverage(weighted, y, [0.5], weights=[1, 2, 1])
    b = interval_coverage(repeated, y, [0.5])
    assert np.array_equal(a.lower, b.lower) and np.array_equal(a.upper, b.upper)


# -- PIT and RMSE -----------------------------------------------------------------------------------


def test_pit_of_the_true_distribution_is_uniform_also_with_censoring(calibrated):
    draws, y, _ = calibrated
    lod = 0.0
    below = y <= lod  # about half the rows censored, exactly when the value is below the limit
    u = pit(draws, np.where(below, np.nan, y), key=KEY, censored=below, lod=lod)
    assert kstest(u, "uniform").pvalue > 1e-3
    biased = pit(draws + 0.5, np.where(below, np.nan, y), key=KEY, censored=below, lod=lod)
    assert kstest(biased, "uniform").pvalue < 1e-6


def test_rmse_uses_the_median_on_quantified_rows_only():
    draws = np.array([[1.0, 5.0, 0.0], [2.0, 6.0, 0.0], [3.0, 7.0, 0.0]])  # medians 2, 6, 0
    assert rmse(draws, np.array([4.0, 6.0, 9.0]), censored=[False, False, True], lod=1.0) == pytest.approx(
        math.sqrt(2.0)
    )
    assert math.isnan(rmse(draws, np.array([0.5, 0.5, 0.5]), lod=1.0))


# -- the result type --------------------------------------------------------------------------------


def test_score_forecast_table_summary_and_pooling(calibrated):
    draws, y, _ = calibrated
    rows = pd.DataFrame({"person": ["a"] * 10})
    a = score_forecast(draws[:, :10], y[:10], key=KEY, rows=rows)
    b = score_forecast(draws[:, 10:30], y[10:30], key=KEY, lod=-1.0)
    both = pool_scores([a, b])
    frame = both.to_frame()
    assert len(frame) == 30 and {"person", "observed", "crps", "pit", "lower_0.9", "covered_0.5"} <= set(
        frame
    )
    summary = both.summary()
    assert summary["n"] == 30 and summary["n_censored"] == np.sum(y[10:30] <= -1.0)
    assert summary["crps"] == pytest.approx(np.mean(np.r_[a.crps, b.crps]))
    assert summary["coverage_0.9"] == pytest.approx(np.mean(frame["covered_0.9"]))
    with pytest.raises(InputError, match="same interval levels"):
        pool_scores([a, score_forecast(draws[:, :3], y[:3], key=KEY, levels=[0.8])])


# -- bad inputs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "observed", "kwargs", "match"),
    [
        (np.full((5, 2), np.nan), np.zeros(2), {}, "observation 0 contain NaN"),
        (np.zeros((5, 2)), np.zeros(3), {}, "samples must be"),
        (np.zeros(5), np.zeros(2), {}, "samples must be"),
        (np.zeros((5, 2, 2)), np.zeros((2, 2)), {}, "samples must be"),
        (np.zeros((1, 2)), np.zeros(2), {}, "at least 2"),
        (np.zeros((5, 2)), np.array([0.0, np.nan]), {}, "observed value 1 is NaN"),
        (np.zeros((5, 2)), np.zeros(2), {"censored": [True, False]}, "need the limit"),
        (np.zeros((5, 2)), np.zeros(2), {"censored": [True]}, "one flag per observation"),
        (np.zeros((5, 2)), np.zeros(2), {"lod": np.nan}, "lod must be"),
        (np.zeros((5, 2)), np.zeros(2), {"weights": [1, 1, 1, 1, -1]}, "weights"),
        (np.zeros((5, 2)), np.zeros(2), {"weights": [1, 1]}, "weights"),
    ],
)
def test_bad_inputs_are_refused(samples, observed, kwargs, match):
    for fn in (crps, rmse, interval_coverage):
        with pytest.raises(InputError, match=match):
            fn(samples, observed, **kwargs)


@pytest.mark.parametrize("levels", [[0.0], [1.0], [1.5], [-0.1], []])
def test_levels_outside_the_unit_interval_are_refused(levels):
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        interval_coverage(np.zeros((5, 2)), np.zeros(2), levels)


# -- baselines --------------------------------------------------------------------------------------


def _people() -> pd.DataFrame:
    """Four people sampled daily; person p's value at time t is 8 - t + p (p = 0..3), c from t = 3."""
    rows = [(f"p{p}", t, 8.0 - t + p) for p in range(4) for t in range(p, p + 5)]
    return pd.DataFrame(rows, columns=["participant", "time", "value"])


def test_split_at_cutoff_counts_days_from_each_persons_first_sample():
    seen, later = split_at_cutoff(_people(), 2)
    assert seen.groupby("participant")["time"].apply(list).to_dict() == {
        f"p{p}": [p, p + 1] for p in range(4)
    }
    assert len(later) == 4 * 3
    with pytest.raises(InputError, match="positive"):
        split_at_cutoff(_people(), 0)


def test_population_mean_pools_neighbouring_days_until_enough_people():
    others = _people()
    f = population_mean_forecast(others, [3.0, 0.0], min_people=3)
    at3 = others[others.time == 3]["value"]  # p0..p3 all sampled on day 3
    assert f.mean[0] == pytest.approx(at3.mean()) and f.sd[0] == pytest.approx(at3.std(ddof=1))
    near0 = others[others.time <= 2]["value"]  # day 0 has only p0: the window grows to +-2 days
    assert f.mean[1] == pytest.approx(near0.mean())
    with pytest.raises(InputError, match="at least 5 other people"):
        population_mean_forecast(others, [3.0], min_people=5)


def test_last_value_carries_forward_with_the_others_errors():
    others = _people()
    seen = pd.DataFrame({"participant": ["x", "x"], "time": [0.0, 1.0], "value": [6.0, 5.0]})
    f = last_value_forecast(seen, [2.0, 4.0], others, cutoff=2, min_people=3)
    assert f.mean.tolist() == [5.0, 5.0]
    # every other person falls by 1 a day, so the error of carrying forward at horizon h is -h exactly
    assert f.sd == pytest.approx([1.0, 3.0])
    np.testing.assert_allclose(f.quantiles([0.5, norm.cdf(1.0)]), [[5.0, 5.0], [6.0, 8.0]])
    draws = f.sample(KEY, 20_000)
    assert draws.shape == (20_000, 2) and draws.std(axis=0) == pytest.approx([1.0, 3.0], rel=0.03)
