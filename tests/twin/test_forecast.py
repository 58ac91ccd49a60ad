"""Forecast quantiles: ordered, wider with measurement noise, and close to the truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from conftest import EARLY
from immunetwin.twin import forecast
from immunetwin.twin.forecast import mixture_quantiles


@pytest.fixture(scope="module")
def early_forecast(early_twin):
    return forecast(early_twin, horizon=6.0)


def test_every_quantity_has_ordered_quantiles(early_forecast, early_twin):
    f = early_forecast
    assert f.times[0] == EARLY and f.times[-1] == EARLY + 6.0 and len(f.times) == 7
    assert f.levels == (0.05, 0.25, 0.5, 0.75, 0.95)
    assert set(f.predictive) == set(f.model) == {"viral_load"}
    assert set(f.states) == set(early_twin.template.model.state_ids)
    for kind in ("predictive", "model", "state"):
        for name in {"predictive": f.predictive, "model": f.model, "state": f.states}[kind]:
            q = f.quantiles(name, kind)
            assert q.shape == (7, 5) and np.all(np.isfinite(q))
            assert np.all(np.diff(q, axis=1) >= -1e-9), (name, kind)
    assert f.failed == 0 and f.particles == early_twin.belief.size
    # noise widens the band
    width = lambda q: q[:, -1] - q[:, 0]  # noqa: E731
    assert np.all(width(f.quantiles("viral_load", "predictive")) > width(f.quantiles("viral_load", "model")))


def test_median_of_a_twin_fitted_to_noise_free_data_is_close_to_the_truth(
    full_twin, early_forecast, tiv, truth
):
    f = forecast(full_twin, horizon=3.0)  # has seen the rise, peak and fall to day 6
    true_vl = np.interp(f.times, truth.times, tiv.observe(truth)["viral_load"])
    median = f.quantiles("viral_load", "model")[:, 2]
    assert np.max(np.abs(median - true_vl)) < 0.3  # log10 units; measurement noise sd is 0.5
    true_t = np.interp(f.times, truth.times, truth["T"])
    t_median = f.quantiles("T", "state")[:, 2]
    assert np.max(np.abs(t_median - true_t)) < 0.05 * truth["T"][0]  # target cells, 5% of the start
    # the early twin (data to day 3) is less sure about the fall, but the truth lies in its 90% band
    true_early = np.interp(early_forecast.times, truth.times, tiv.observe(truth)["viral_load"])
    q = early_forecast.quantiles("viral_load", "predictive")
    assert np.all((q[:, 0] <= true_early) & (true_early <= q[:, -1]))
    assert abs(early_forecast.quantiles("viral_load", "model")[1, 2] - true_early[1]) < 0.3  # one day ahead


def test_to_frame_is_one_row_per_quantity_kind_and_time(early_forecast):
    frame = early_forecast.to_frame()
    assert list(frame.columns) == ["quantity", "kind", "unit", "time", "q5", "q25", "q50", "q75", "q95"]
    n_states = len(early_forecast.states)
    assert len(frame) == 7 * (2 + n_states)
    vl = frame[(frame.quantity == "viral_load") & (frame.kind == "predictive")]
    assert vl.unit.iloc[0] == "log10 TCID50/mL"


def test_an_antiviral_lowers_the_forecast(early_twin, tiv):
    none = forecast(early_twin, horizon=4.0)
    treated = forecast(
        early_twin, horizon=4.0, schedule=tiv.intervention("antiviral", start=EARLY, efficacy=0.99)
    )
    assert "eps_av" in treated.scenario and none.scenario == "none"
    after = slice(2, None)
    assert np.all(
        treated.quantiles("viral_load", "model")[after, 2]
        < none.quantiles("viral_load", "model")[after, 2] - 0.5
    )
    # a schedule that began before the reference time is simulated from the origin (counterfactual)
    earlier = forecast(
        early_twin,
        horizon=4.0,
        schedule=tiv.intervention("antiviral", start=1.0, duration=10.0, efficacy=0.99),
    )
    assert np.all(
        earlier.quantiles("viral_load", "model")[:, 2] < none.quantiles("viral_load", "model")[:, 2] - 1.0
    )


def test_explicit_times_and_levels(early_twin):
    f = forecast(early_twin, times=[EARLY, EARLY + 0.25, EARLY + 2.0], levels=(0.1, 0.9))
    assert list(f.times) == [EARLY, EARLY + 0.25, EARLY + 2.0]
    assert f.quantiles("viral_load").shape == (3, 2)


def test_mixture_quantiles_match_the_normal_and_a_monte_carlo_check():
    levels = np.array([0.05, 0.5, 0.95])
    one = mixture_quantiles(np.array([[1.0, 2.0]]), np.array([1.0]), 0.5, "normal", levels)
    np.testing.assert_allclose(
        one, np.array([1.0, 2.0])[:, None] + 0.5 * norm.ppf(levels)[None, :], atol=1e-8
    )
    rng = np.random.default_rng(3)
    h = rng.normal(0.0, 1.0, (200, 1))
    w = rng.dirichlet(np.ones(200))
    q = mixture_quantiles(h, w, 0.3, "normal", levels)[0]
    draws = h[rng.choice(200, 400_000, p=w), 0] + rng.normal(0, 0.3, 400_000)
    np.testing.assert_allclose(q, np.quantile(draws, levels), atol=0.02)
    lap = mixture_quantiles(np.array([[0.0]]), np.array([1.0]), 1.0, "laplace", levels)[0]
    np.testing.assert_allclose(lap, [np.log(0.1), 0.0, -np.log(0.1)], atol=1e-8)
