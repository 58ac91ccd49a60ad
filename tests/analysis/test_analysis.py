"""Analysis verbs: profiles, global sensitivity, posterior predictive checks, LOO comparison, tolerances.

Problems (small, with known answers):

- ``separable``: three independent sub-models sharing no parameter, observed at t = 1..10:
  ``B' = k1 (A0 - B)`` observed as ``s B`` (only the product ``s A0`` is identifiable: ``s`` and ``A0``
  have flat profiles); ``C' = k2 (1 - C)`` with ``k2 = 5`` (saturated by t = 1: any larger ``k2`` fits,
  so its profile is open above); ``D' = -k3 D`` observed as ``ln D`` (``ln D = ln D0 - k3 t`` is linear in
  ``(ln D0, k3)``, so the profile of ``k3`` is exactly quadratic and its interval is the least-squares
  ``k̂3 ± z se``).
- ``decay``: ``A' = -k A`` observed as ``ln A`` with noise sd ``sd`` (estimated), left-censored at 0.3;
  400 rows, so the coverage of a calibrated 90 % interval is Binomial(400, 0.9)/400 with sd 0.015.
- ``viral_tiv`` (Baccam 2006) for sensitivity: at t = 0 the viral load is ``log10 V0`` exactly.
"""

from __future__ import annotations

import math

import arviz as az
import jax
import numpy as np
import pytest
import sympy as sp
from scipy.stats import chi2, norm

from immunetwin.analysis import (
    compare_models,
    posterior_predictive,
    profile,
    sensitivity,
    tolerance_check,
)
from immunetwin.engines.integrate import Controls
from immunetwin.errors import InputError, UnknownIdError
from immunetwin.inference.fit import fit_map
from immunetwin.inference.likelihood import compile_objective
from immunetwin.inference.problem import Condition, Measurements, Observable, Parameter, Problem
from immunetwin.io import load_model
from immunetwin.templates import load_template

SEP_TIMES = np.arange(1.0, 10.01, 0.5)
SEP_MODEL = """model separable
  J1: -> B; k1*(A0 - B)
  J2: -> C; k2*(1 - C)
  J3: D -> ; k3*D
  B = 0; C = 0; D = D0
  A0 = 10; k1 = 0.3; k2 = 5; k3 = 0.4; D0 = 5
end
"""


def _measurements(obs: list[str], times: np.ndarray, values: np.ndarray, censored: np.ndarray | None = None,
                  noise: tuple = ()) -> Measurements:  # fmt: skip
    n = len(values)
    return Measurements(
        observable=obs, condition=["c0"] * n, preequilibration=[""] * n, time=times, value=values,
        observable_parameters=((),) * n, noise_parameters=(noise,) * n,
        censoring=np.where(censored, "left", "") if censored is not None else [""] * n,
    )  # fmt: skip


@pytest.fixture(scope="module")
def separable() -> Problem:
    rng = np.random.default_rng(11)
    t = SEP_TIMES
    b = 10.0 * (1 - np.exp(-0.3 * t)) + 0.2 * rng.normal(size=t.size)
    c = (1 - np.exp(-5.0 * t)) + 0.05 * rng.normal(size=t.size)
    d = 5.0 * np.exp(-0.4 * t + 0.2 * rng.normal(size=t.size))
    n = t.size
    data = _measurements(["yB"] * n + ["yC"] * n + ["yD"] * n, np.tile(t, 3), np.concatenate([b, c, d]))
    parameters = (
        Parameter("A0", "log10", 0.1, 1000.0, 10.0, True),
        Parameter("s", "log10", 0.01, 100.0, 1.0, True),
        Parameter("k1", "log10", 0.01, 10.0, 0.3, True),
        Parameter("k2", "log10", 0.1, 100.0, 5.0, True),
        Parameter("k3", "lin", 0.0, 2.0, 0.4, True),
        Parameter("D0", "log", 0.01, 1000.0, 5.0, True),
    )
    observables = (
        Observable("yB", sp.Symbol("s") * sp.Symbol("B"), sp.Float(0.2)),
        Observable("yC", sp.Symbol("C"), sp.Float(0.05)),
        Observable("yD", sp.Symbol("D"), sp.Float(0.2), transformation="log"),
    )
    return Problem(load_model(SEP_MODEL), parameters, observables, (Condition("c0"),), data, name="separable")


@pytest.fixture(scope="module")
def profiles(separable: Problem):
    objective = compile_objective(separable)
    fit = fit_map(objective, key=jax.random.PRNGKey(0), starts=4, prior=False)
    return profile(objective, fit, points=15), fit


def test_profile_classifies_identifiability(profiles) -> None:
    result, _ = profiles
    cls = {p.parameter: p.classification for p in result.profiles}
    assert cls == {
        "A0": "flat", "s": "flat", "k1": "identifiable", "k2": "practically non-identifiable",
        "k3": "identifiable", "D0": "identifiable",
    }  # fmt: skip
    k2 = result["k2"]
    assert k2.sides[1] == "bound" and math.isinf(k2.upper) and math.isfinite(k2.lower)
    assert k2.lower < math.log10(5.0)
    assert result.threshold == pytest.approx(0.5 * chi2.ppf(0.95, 1))
    assert not result.improved
    frame = result.to_frame()
    assert list(frame["parameter"]) == ["A0", "s", "k1", "k2", "k3", "D0"]
    assert frame.loc[frame["parameter"] == "k2", "upper_value"].item() == math.inf


def test_profile_interval_matches_least_squares(profiles, separable: Problem) -> None:
    """ln D is linear in (ln D0, k3) with known sd: the 95 % profile interval of k3 is k̂3 ± z se."""
    result, _ = profiles
    y = np.log(separable.measurements.value[separable.measurements.observable == "yD"])
    X = np.stack([np.ones_like(SEP_TIMES), -SEP_TIMES], axis=1)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    se = 0.2 * math.sqrt(np.linalg.inv(X.T @ X)[1, 1])
    z = math.sqrt(chi2.ppf(0.95, 1))
    k3 = result["k3"]
    # the crossing is refined until the drop is within 1e-3 of the threshold: ~5e-4 se in k3
    assert k3.lower == pytest.approx(beta[1] - z * se, abs=0.01 * se)
    assert k3.upper == pytest.approx(beta[1] + z * se, abs=0.01 * se)
    drop = result.reference - k3.value
    assert np.all(drop > -1e-6)  # the fit is the optimum of the profile


def test_profile_rejects_unknown_parameter(profiles, separable: Problem) -> None:
    _, fit = profiles
    with pytest.raises(UnknownIdError, match="nope"):
        profile(compile_objective(separable), fit, parameters=["nope"])


# -- sensitivity ------------------------------------------------------------------------------------

TIV_TIMES = np.linspace(0.0, 10.0, 41)
# Every run uses 41 output times, >= 1024 simulations and these controls: one compiled solver.
# (viral_tiv's outcomes take log10(V); where V decays to ~1e-30 (R0 < 1 over 10 days) it can dip
# below 0 and the template outcome is NaN, so the peak here is log10 of the largest V.)
TIGHT = Controls(rtol=1e-8, atol=1e-16)


def peak_log10_v(traj) -> np.ndarray:
    return np.log10(np.max(traj["V"], axis=1))


@pytest.fixture(scope="module")
def tiv():
    return load_template("viral_tiv")


@pytest.fixture(scope="module")
def sobol_peak(tiv):
    return sensitivity(tiv, peak_log10_v, times=TIV_TIMES, key=jax.random.PRNGKey(1), n=1024, controls=TIGHT)


def test_sobol_ranks_infectivity_and_production_first(sobol_peak) -> None:
    s = sobol_peak
    assert s.output == "peak_log10_v" and s.times is None
    assert s.parameters == ("beta", "delta", "p", "c", "V0")  # the template's estimated parameters
    assert s.scales == ("log10",) * 5
    assert s.evaluations == 1024 * (5 + 2)
    assert s.ranking()[0] in ("beta", "p")
    s1, s1_conf = s.indices["S1"][0], s.indices["S1_conf"][0]
    assert s1.sum() <= 1.0 + np.sqrt(np.sum(s1_conf**2))
    assert np.all(s.indices["ST"][0] >= s1 - s.indices["ST_conf"][0] - s1_conf)  # ST >= S1 up to error
    frame = s.to_frame()
    assert set(frame.columns) == {"parameter", "S1", "S1_conf", "ST", "ST_conf"} and len(frame) == 5


def test_sobol_of_initial_viral_load_only_sees_v0(tiv) -> None:
    """log10 V(0) = log10 V0: every other parameter has ST = 0 exactly at t = 0; V0 has ST = 1."""
    early = np.linspace(0.0, 1.0, 41)  # V stays >> atol over the first day
    s = sensitivity(tiv, "viral_load", times=early, key=jax.random.PRNGKey(2), n=1024, controls=TIGHT)
    assert s.times is not None and s.indices["ST"].shape == (early.size, 5)
    v0 = s.parameters.index("V0")
    at0 = s.indices["ST"][0]
    assert at0[v0] == pytest.approx(1.0, abs=3 * s.indices["ST_conf"][0, v0] + 1e-9)
    assert np.all(np.abs(np.delete(at0, v0)) < 1e-12)
    assert s.ranking(0)[0] == "V0"
    assert s.indices["ST"][-1, v0] < 0.5  # by day 1 the kinetics dominate the dose
    assert s.ranking(early.size - 1)[0] in ("beta", "p")


def test_morris_agrees_on_the_leading_parameter(tiv, sobol_peak) -> None:
    m = sensitivity(tiv, peak_log10_v, times=TIV_TIMES, key=jax.random.PRNGKey(3), method="morris", n=200,
                    controls=TIGHT)  # fmt: skip
    assert m.evaluations == 200 * 6
    assert m.ranking()[0] == sobol_peak.ranking()[0]
    assert np.all(m.indices["mu_star"] >= np.abs(m.indices["mu"]) - 1e-12)


def test_sensitivity_rejects_bad_requests(tiv) -> None:
    key = jax.random.PRNGKey(0)
    with pytest.raises(UnknownIdError, match="severity"):
        sensitivity(tiv, "severity", times=TIV_TIMES, key=key)
    with pytest.raises(InputError, match="power of 2"):
        sensitivity(tiv, "peak_viral_load", times=TIV_TIMES, key=key, n=1000)
    with pytest.raises(UnknownIdError, match="gamma"):
        sensitivity(tiv, "peak_viral_load", times=TIV_TIMES, key=key, parameters=["gamma"])
    with pytest.raises(InputError, match="'nan_output' is not finite for 1792 of 1792"):

        def nan_output(traj) -> np.ndarray:
            return np.full(len(traj), np.nan)

        sensitivity(tiv, nan_output, times=TIV_TIMES, key=key, n=256, controls=TIGHT)


# -- posterior predictive ---------------------------------------------------------------------------

DECAY_TIMES = np.repeat(np.linspace(0.25, 10.0, 40), 10)  # 400 rows
LOD = 0.3
TRUE = np.array([math.log(10.0), 0.5, 0.3])  # ln A0, k, sd


@pytest.fixture(scope="module")
def decay() -> Problem:
    rng = np.random.default_rng(5)
    y = 10.0 * np.exp(-0.5 * DECAY_TIMES + 0.3 * rng.normal(size=DECAY_TIMES.size))
    censored = y <= LOD
    data = _measurements(["logA"] * y.size, DECAY_TIMES, np.where(censored, LOD, y), censored, noise=("sd",))
    parameters = (
        Parameter("A0", "log", 1e-3, 1e5, 10.0, True),
        Parameter("k", "lin", 0.0, 5.0, 0.5, True),
        Parameter("sd", "lin", 0.01, 2.0, 0.3, True),
    )
    observable = Observable("logA", sp.Symbol("A"), sp.Symbol("noiseParameter1_logA"), transformation="log")
    model = load_model("model decay\n  A -> ; k*A\n  A = A0\n  A0 = 10; k = 0.5\nend\n")
    return Problem(model, parameters, (observable,), (Condition("c0"),), data, name="decay")


@pytest.fixture(scope="module")
def decay_objective(decay: Problem):
    return compile_objective(decay)


def test_predictive_coverage_is_nominal_for_the_true_model(decay: Problem, decay_objective) -> None:
    assert 0.15 < np.mean(decay.measurements.censoring == "left") < 0.45  # censoring matters here
    draws = np.tile(TRUE, (2000, 1))
    check = posterior_predictive(decay_objective, draws, key=jax.random.PRNGKey(0))
    # 400 independent rows: coverage ~ Binomial(400, p)/400, sd 0.015 (90 %) and 0.025 (50 %); 4 sd
    assert check.coverage[0.9] == pytest.approx(0.9, abs=4 * math.sqrt(0.9 * 0.1 / 400))
    assert check.coverage[0.5] == pytest.approx(0.5, abs=4 * math.sqrt(0.5 * 0.5 / 400))
    assert 0.01 < check.p_value < 0.99
    assert check.draws_used == 2000 and check.draws_failed == 0
    frame = check.to_frame()
    assert {"median", "lower_0.9", "upper_0.9", "pit"} <= set(frame.columns) and len(frame) == 400
    # the median of ln y_rep is ln h: at t = 2 it is ln 10 - 1
    at2 = np.argmin(np.abs(DECAY_TIMES - 2.0))
    assert math.log(check.median[at2]) == pytest.approx(math.log(10.0) - 0.5 * DECAY_TIMES[at2], abs=0.05)


def test_predictive_check_flags_a_wrong_noise_model(decay_objective) -> None:
    """With sd = 0.1 instead of 0.3 a 90 % interval covers ~P(|Z| < 1.645/3) = 0.42 of observed rows."""
    draws = np.tile(TRUE * np.array([1.0, 1.0, 1.0 / 3.0]), (4, 500, 1))  # as NUTS gives them
    idata = az.from_dict(posterior={"theta": draws}, dims={"theta": ["parameter"]})
    check = posterior_predictive(decay_objective, idata, key=jax.random.PRNGKey(0))
    assert check.draws_used == 2000
    assert check.coverage[0.9] < 0.7
    assert check.p_value < 0.01


def test_predictive_check_rejects_bad_draws(decay_objective) -> None:
    with pytest.raises(InputError, match="draws must have shape"):
        posterior_predictive(decay_objective, np.ones((10, 2)), key=jax.random.PRNGKey(0))


# -- tolerances -------------------------------------------------------------------------------------


def _exact_log_likelihood(problem: Problem, theta: np.ndarray) -> float:
    m = problem.measurements
    lnh = theta[0] - theta[1] * m.time
    cens = m.censoring == "left"
    lny = np.log(m.value)
    dens = norm.logpdf(lny, lnh, theta[2]) - lny
    return float(np.sum(np.where(cens, norm.logcdf((lny - lnh) / theta[2]), dens)))


def test_tolerance_spread_shrinks(decay: Problem) -> None:
    check = tolerance_check(decay, TRUE, rtols=(1e-4, 1e-6, 1e-8))
    assert check.finite
    assert check.changes[1] < check.changes[0]
    errors = np.abs(check.log_likelihoods - _exact_log_likelihood(decay, TRUE))
    assert errors[2] < errors[1] < errors[0]
    assert check.error == check.changes[-1]
    assert check.spread == pytest.approx(np.ptp(check.log_likelihoods))
    with pytest.raises(InputError, match="strictly decreasing"):
        tolerance_check(decay, TRUE, rtols=(1e-8, 1e-6))


# -- LOO comparison ---------------------------------------------------------------------------------


def _normal_model(y: np.ndarray, sd: float, key: int) -> az.InferenceData:
    """Posterior of mu in y ~ N(mu, sd) under a flat prior (mu | y ~ N(ybar, sd/sqrt(n))), 4 x 500 draws."""
    rng = np.random.default_rng(key)
    mu = rng.normal(y.mean(), sd / math.sqrt(y.size), size=(4, 500))
    loglik = norm.logpdf(y[None, None, :], mu[..., None], sd)
    return az.from_dict(posterior={"mu": mu}, log_likelihood={"y": loglik}, observed_data={"y": y})


def test_compare_models_prefers_the_true_model() -> None:
    y = np.random.default_rng(0).normal(1.0, 1.0, size=60)
    result = compare_models({"wide": _normal_model(y, 3.0, 1), "true": _normal_model(y, 1.0, 2)})
    assert result.best == "true"
    table = result.to_frame()
    wide = table.loc["wide"]
    assert wide["elpd_diff"] > 4 * wide["dse"]
    assert table.loc["true", "weight"] > 0.9
    assert result.warnings == ()


def test_compare_models_warns_of_influential_observations() -> None:
    y = np.concatenate([np.random.default_rng(0).normal(0.0, 1.0, size=20), [12.0]])
    result = compare_models({"narrow": _normal_model(y, 0.5, 3), "true": _normal_model(y, 1.0, 4)})
    assert any("narrow" in w for w in result.warnings)
    assert result.pareto_k["narrow"][-1] > result.k_threshold


def test_compare_models_needs_log_likelihoods() -> None:
    posterior_only = az.from_dict(posterior={"mu": np.zeros((2, 10))})
    with pytest.raises(InputError, match="log_likelihood"):
        compare_models({"a": posterior_only, "b": posterior_only})
