"""Sequential updates agree with personalising from scratch; implausible measurements raise alerts."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

from conftest import EARLY
from immunetwin.twin import Twin, assimilate


def _ess(twin: Twin) -> float:
    """A conservative effective sample size: the smallest of the weights' ESS and the ESS of the last
    importance step (resampled and moved particles are correlated, so N overstates it)."""
    d = twin.belief.diagnostics
    steps = [d[k] for k in ("ess_importance", "ess_after_reweighting", "min_stage_ess") if k in d]
    return float(min([twin.belief.ess, *steps]))


def _moments_agree(
    a: Twin, b: Twin, sigmas: float = 4.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Differences of the weighted means and sds of theta, and their Monte Carlo tolerances
    (``sigmas`` standard errors: se(mean) = sd / sqrt(ESS), se(sd) = sd / sqrt(2 ESS))."""
    ea, eb = _ess(a), _ess(b)
    sa, sb = a.belief.sd(), b.belief.sd()
    d_mean = np.abs(a.belief.mean() - b.belief.mean())
    tol_mean = sigmas * np.sqrt(sa**2 / ea + sb**2 / eb)
    d_sd = np.abs(sa - sb)
    tol_sd = sigmas * np.sqrt(sa**2 / (2 * ea) + sb**2 / (2 * eb))
    return d_mean, tol_mean, d_sd, tol_sd


def test_one_by_one_agrees_with_personalising_on_all_rows(early_twin, sequential_twin, full_twin):
    assert sequential_twin.version == 1 + (len(full_twin.observations) - len(early_twin.observations))
    assert len(sequential_twin.observations) == len(full_twin.observations)
    d_mean, tol_mean, d_sd, tol_sd = _moments_agree(sequential_twin, full_twin)
    assert np.all(d_mean <= tol_mean), (d_mean, tol_mean)
    assert np.all(d_sd <= tol_sd), (d_sd, tol_sd)
    # the test has power: the twin before the later rows is distinguishable from the full posterior
    e_mean, e_tol_mean, e_sd, e_tol_sd = _moments_agree(early_twin, full_twin)
    assert np.any(e_mean > e_tol_mean) or np.any(e_sd > e_tol_sd)


def test_all_later_rows_at_once_agree_too(early_twin, full_twin, data):
    batch = assimilate(early_twin, data[data.time > EARLY], key=jax.random.PRNGKey(7))
    assert batch.version == 2
    assert batch.belief.method in ("reweighted", "resample-move", "repersonalised")
    d_mean, tol_mean, d_sd, tol_sd = _moments_agree(batch, full_twin)
    assert np.all(d_mean <= tol_mean), (d_mean, tol_mean)
    assert np.all(d_sd <= tol_sd), (d_sd, tol_sd)


def test_reweighting_keeps_the_log_likelihood_of_all_rows(sequential_twin, full_twin):
    """Each particle's stored log likelihood is that of every row seen, as if simulated from day 0."""
    from immunetwin.inference import patient_problem
    from immunetwin.twin.smc import Target

    twin = sequential_twin
    problem = patient_problem(twin.template, twin.observations.to_frame(), estimate=twin.belief.parameter_ids)
    target = Target(twin.template, problem, twin.observations, twin.reference_time, twin.settings.controls)
    fresh = target.evaluate(np.array(twin.belief.theta))
    np.testing.assert_allclose(fresh.log_likelihood, twin.belief.log_likelihood, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(fresh.states, twin.belief.states, rtol=1e-3, atol=1e-6)


def _row(time: float, value: float) -> pd.DataFrame:
    return pd.DataFrame({"observable": ["viral_load"], "time": [time], "value": [value]})


def test_implausible_rebound_raises_an_alert_and_a_plausible_value_does_not(sequential_twin):
    twin = sequential_twin  # has seen the fall to the floor (day 6)
    day = twin.reference_time + 2.0
    expected = float(np.median(_predicted(twin, day)))
    calm = assimilate(twin, _row(day, expected), key=jax.random.PRNGKey(11))
    assert calm.alerts == twin.alerts
    assert calm.scores[-1].time == day and 0.025 < calm.scores[-1].percentile < 0.975

    rebound = assimilate(twin, _row(day, expected + 4.0), key=jax.random.PRNGKey(12))
    new = rebound.alerts[len(twin.alerts) :]
    assert len(new) == 1
    alert = new[0]
    assert alert.observable == "viral_load" and alert.time == day and alert.percentile > 0.975
    assert "above the 97.5th percentile" in alert.message
    assert alert.version == twin.version  # scored against the forecast made before seeing it
    # the belief cannot absorb it by reweighting: the twin says it re-personalised (or moved) and why
    assert rebound.belief.method in ("repersonalised", "resample-move")
    if rebound.belief.method == "repersonalised":
        assert (
            "collapsed" in rebound.belief.diagnostics["update_reason"]
            or "accepted" in rebound.belief.diagnostics["update_reason"]
        )
    assert twin.version == rebound.version - 1 and len(twin.history) == twin.version  # untouched


def _predicted(twin: Twin, day: float) -> np.ndarray:
    from immunetwin.twin import forecast

    f = forecast(twin, times=[twin.reference_time, day], levels=(0.5,))
    return f.quantiles("viral_load", "predictive")[-1]


def test_censored_row_below_an_expected_high_value_alerts(tiv, early_twin):
    """A 'not detected' swab when the twin expects a peak is surprising: P(below limit) is tiny."""
    from immunetwin.twin.observations import read_observations
    from immunetwin.twin.scores import score_rows

    obs = read_observations(
        tiv, pd.DataFrame({"observable": ["viral_load"], "time": [3.0], "value": [-2.0], "censored": [True]})
    )
    h = np.full((early_twin.belief.size, 1), 6.0)
    scores, alerts = score_rows(tiv, obs, h, early_twin.belief.weights, band=0.95, version=1)
    assert scores[0].censored and scores[0].percentile < 1e-6
    assert len(alerts) == 1 and "below the detection limit" in alerts[0].message


@pytest.mark.parametrize("band", [0.5, 0.9])
def test_narrower_band_alerts_more(sequential_twin, band):
    from immunetwin.twin.observations import read_observations
    from immunetwin.twin.scores import score_rows

    day = sequential_twin.reference_time + 1.0
    mid = float(np.median(_predicted(sequential_twin, day)))
    obs = read_observations(sequential_twin.template, _row(day, mid + 0.6))
    h = np.full((sequential_twin.belief.size, 1), mid)
    _, alerts = score_rows(
        sequential_twin.template, obs, h, sequential_twin.belief.weights, band=band, version=1
    )
    assert len(alerts) == (1 if band == 0.5 else 0)


@pytest.mark.slow
def test_laplace_importance_and_tempering_agree(tiv, data, full_twin):
    """The second personalisation method targets the same posterior (compiles a MAP objective: slow)."""
    from conftest import DRAWS, ESTIMATE
    from immunetwin.twin import LaplaceImportance, TwinSettings, personalise

    settings = TwinSettings(personalisation=LaplaceImportance(starts=3))
    laplace = personalise(tiv, data, patient="p01", key=jax.random.PRNGKey(3), estimate=ESTIMATE, draws=DRAWS, settings=settings)  # fmt: skip
    assert laplace.belief.method == "laplace-is+mh" and laplace.belief.diagnostics["pareto_k"] < 0.7
    d_mean, tol_mean, d_sd, tol_sd = _moments_agree(laplace, full_twin)
    assert np.all(d_mean <= tol_mean), (d_mean, tol_mean)
    assert np.all(d_sd <= tol_sd), (d_sd, tol_sd)
