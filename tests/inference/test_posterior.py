"""NUTS and Laplace posteriors against an analytic posterior.

Problem: ``A' = -k A``, ``A(0) = A0``, observed as ``ln A`` with normal noise ``s = 0.3``;
``theta = (ln A0, k)`` with normal priors on these scales. Then ``ln h(t) = theta_0 - theta_1 t`` is
linear in ``theta``, so the posterior is exactly Gaussian (the bounds are > 15 posterior sd away):
precision ``X'X/s^2 + diag(1/tau^2)``, mean ``Σ (X'y/s^2 + mu/tau^2)``, rows of ``X`` = ``(1, -t)``.

Tolerances for Monte Carlo estimates are 4 Monte Carlo standard errors as ArviZ computes them from
the effective sample size (``mcse_mean = sd/sqrt(ESS_bulk)``, and the ESS-based error of the sd):
a correct sampler fails such a check with probability ~6e-5 (normal tails), and the key is fixed.
"""

from __future__ import annotations

import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp

from immunetwin.errors import InputError
from immunetwin.inference.likelihood import compile_objective
from immunetwin.inference.posterior import ConvergenceWarning, laplace, sample_posterior
from immunetwin.inference.problem import Condition, Measurements, Observable, Parameter, Prior, Problem
from immunetwin.io import load_model

TIMES = np.array([0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0])
NOISE = 0.3
PRIOR_MEAN = np.array([2.0, 0.3])
PRIOR_SD = np.array([1.0, 0.5])
IDS = ("A0", "k")


@pytest.fixture(scope="module")
def problem() -> Problem:
    model = load_model("model decay\n  A -> ; k*A\n  A = A0\n  A0 = 10; k = 0.5\nend\n")
    rng = np.random.default_rng(7)
    y = 10.0 * np.exp(-0.5 * TIMES + NOISE * rng.normal(size=len(TIMES)))
    n = len(TIMES)
    data = Measurements(
        observable=["logA"] * n,
        condition=["c0"] * n,
        preequilibration=[""] * n,
        time=TIMES,
        value=y,
        observable_parameters=((),) * n,
        noise_parameters=((),) * n,
        censoring=[""] * n,
    )
    parameters = (
        Parameter("A0", "log", 1e-3, 1e5, 10.0, True, Prior("parameterScaleNormal", (2.0, 1.0))),
        Parameter("k", "lin", -5.0, 5.0, 0.5, True, Prior("parameterScaleNormal", (0.3, 0.5))),
    )
    observable = Observable("logA", sp.Symbol("A"), sp.Float(NOISE), transformation="log")
    return Problem(model, parameters, (observable,), (Condition("c0"),), data, name="decay")


@pytest.fixture(scope="module")
def exact(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Analytic posterior mean and covariance of ``theta``."""
    X = np.stack([np.ones_like(TIMES), -TIMES], axis=1)
    y = np.log(problem.measurements.value)
    precision = X.T @ X / NOISE**2 + np.diag(1.0 / PRIOR_SD**2)
    cov = np.linalg.inv(precision)
    return cov @ (X.T @ y / NOISE**2 + PRIOR_MEAN / PRIOR_SD**2), cov


@pytest.fixture(scope="module")
def objective(problem: Problem):
    return compile_objective(problem)


@pytest.fixture(scope="module")
def nuts(objective):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # ln A0 and k are strongly correlated here (the intercept and slope of a line): with a diagonal
        # mass matrix NUTS gets a bulk ESS of only ~0.3 per draw and the split R-hat of 4 x 500 draws
        # scatters around 1.01 from key to key (measured: 1.002-1.012 over keys 0-2); a dense mass
        # matrix gives ~0.6-0.8 per draw and R-hat <= 1.007 (keys 0-4), so the checks below test the
        # sampler rather than the luck of one key
        fit = sample_posterior(
            objective, key=jax.random.PRNGKey(0), chains=4, draws=500, warmup=500, dense_mass=True
        )
    return fit, [w for w in caught if issubclass(w.category, ConvergenceWarning)]


@pytest.fixture(scope="module")
def laplace_fit(objective, exact):
    return laplace(objective, exact[0], key=jax.random.PRNGKey(1), draws=2000)


def test_nuts_mean_and_sd_match_the_analytic_posterior(nuts, exact) -> None:
    fit, _ = nuts
    mean, cov = exact
    theta = fit.idata.posterior["theta"]
    mcse_mean = az.mcse(fit.idata, var_names=["theta"], method="mean")["theta"].values
    mcse_sd = az.mcse(fit.idata, var_names=["theta"], method="sd")["theta"].values
    est_mean = theta.mean(("chain", "draw")).values
    est_sd = theta.std(("chain", "draw")).values
    np.testing.assert_array_less(np.abs(est_mean - mean), 4 * mcse_mean)
    np.testing.assert_array_less(np.abs(est_sd - np.sqrt(np.diag(cov))), 4 * mcse_sd)
    corr = np.corrcoef(fit.theta_draws.T)[0, 1]
    assert corr == pytest.approx(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]), abs=0.1)


def test_nuts_reports_convergence(nuts) -> None:
    fit, caught = nuts
    assert set(fit.rhat) == set(fit.ess_bulk) == set(fit.ess_tail) == set(IDS)
    assert max(fit.rhat.values()) <= 1.01
    assert min(fit.ess_bulk.values()) >= 400 and min(fit.ess_tail.values()) >= 400
    assert fit.divergences == 0 and fit.converged and fit.warnings == () and caught == []
    assert fit.idata.sample_stats["diverging"].shape == (4, 500)
    table = fit.summary()
    assert {"theta[A0]", "value[k]"} <= set(table.index) and "r_hat" in table.columns
    assert table.loc["theta[k]", "r_hat"] == pytest.approx(fit.rhat["k"], abs=0.01)


def test_posterior_holds_parameter_and_linear_scales(nuts) -> None:
    post = nuts[0].idata.posterior
    assert list(post["parameter"].values) == list(IDS)
    assert list(post["scale"].values) == ["log", "lin"]
    np.testing.assert_allclose(post["value"].sel(parameter="A0"), np.exp(post["theta"].sel(parameter="A0")))
    np.testing.assert_array_equal(post["value"].sel(parameter="k"), post["theta"].sel(parameter="k"))


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")  # 8 rows, the last influential
def test_pointwise_log_likelihood_sums_to_the_objective(nuts, objective) -> None:
    idata = nuts[0].idata
    rows = idata.log_likelihood["y"]
    assert rows.dims == ("chain", "draw", "row") and rows.shape[-1] == len(TIMES)
    picks = [(0, 0), (1, 250), (3, 499)]
    with jax.enable_x64(True):
        ll = jax.jit(objective.log_likelihood)
        for c, d in picks:
            theta = idata.posterior["theta"].values[c, d]
            assert float(rows.values[c, d].sum()) == pytest.approx(float(ll(jnp.asarray(theta))), rel=1e-10)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == len(TIMES)


def test_a_short_run_is_flagged_as_not_converged(objective) -> None:
    # 1 chain of 20 draws: ArviZ caps the ESS at n log10(n) = 26 < 400, so this run cannot pass.
    with pytest.warns(ConvergenceWarning, match="effective sample size"):
        fit = sample_posterior(
            objective, key=jax.random.PRNGKey(3), chains=1, draws=20, warmup=10, chain_method="sequential"
        )
    assert fit.idata.posterior["theta"].shape == (1, 20, 2)
    assert not fit.converged
    assert any("effective sample size" in w for w in fit.warnings)
    assert np.isnan(fit.rhat["k"]) and any("R-hat of 'k' could not be computed" in w for w in fit.warnings)
    assert max(fit.ess_bulk.values()) < 400


def test_init_outside_bounds_is_refused(objective) -> None:
    with pytest.raises(InputError, match="'k'"):
        sample_posterior(objective, key=jax.random.PRNGKey(0), init=np.array([2.0, 7.0]))


def test_laplace_matches_the_analytic_posterior(laplace_fit, exact) -> None:
    mean, cov = exact
    assert laplace_fit.warnings == ()
    np.testing.assert_allclose(laplace_fit.covariance, cov, rtol=1e-5)
    np.testing.assert_allclose([laplace_fit.sd[i] for i in IDS], np.sqrt(np.diag(cov)), rtol=1e-5)
    # 2000 independent draws: the sample mean is within 4 standard errors sd/sqrt(2000)
    draws = laplace_fit.theta_draws
    assert draws.shape == (2000, 2)
    np.testing.assert_array_less(np.abs(draws.mean(0) - mean), 4 * np.sqrt(np.diag(cov) / 2000))


def test_laplace_has_the_layout_of_nuts(laplace_fit, nuts) -> None:
    lap, mc = laplace_fit.idata, nuts[0].idata
    assert {"posterior", "log_likelihood", "observed_data"} <= set(lap.groups())
    for group in ("posterior", "log_likelihood"):
        for name, var in mc[group].data_vars.items():
            assert lap[group][name].dims == var.dims
    assert list(lap.posterior["parameter"].values) == list(IDS)
    assert set(laplace_fit.summary().index) >= {"theta[A0]", "theta[k]", "value[A0]", "value[k]"}


def test_laplace_away_from_the_mode_warns(objective, exact) -> None:
    mean, cov = exact
    off = mean + np.array([0.0, 2.0 * np.sqrt(cov[1, 1])])
    with pytest.warns(ConvergenceWarning, match="not at the mode"):
        fit = laplace(objective, off, key=jax.random.PRNGKey(2), draws=10)
    assert any("'k'" in w or "'A0'" in w for w in fit.warnings)


def test_netcdf_round_trip_keeps_the_draws(nuts, tmp_path) -> None:
    fit = nuts[0]
    back = az.from_netcdf(fit.to_netcdf(tmp_path / "posterior.nc"))
    np.testing.assert_array_equal(back.posterior["theta"].values, fit.idata.posterior["theta"].values)
    assert list(back.posterior["parameter"].values) == list(IDS)
    np.testing.assert_array_equal(back.log_likelihood["y"].values, fit.idata.log_likelihood["y"].values)
    np.testing.assert_array_equal(
        back.sample_stats["diverging"].values, fit.idata.sample_stats["diverging"].values
    )


def test_laplace_refuses_a_direction_the_data_do_not_determine(problem) -> None:
    # 'unused' enters neither model nor data and has a flat prior: the Hessian is singular along it
    unused = Parameter("unused", "lin", 0.0, 1.0, 0.5, True)
    flat = Problem(
        problem.model,
        (*problem.parameters, unused),
        problem.observables,
        problem.conditions,
        problem.measurements,
    )
    with pytest.raises(InputError, match=r"not positive definite.*'unused'"):
        laplace(compile_objective(flat), np.array([2.3, 0.5, 0.5]), key=jax.random.PRNGKey(0), draws=10)


def test_laplace_metric_is_the_inverse_hessian_of_the_potential(objective, exact) -> None:
    from immunetwin.inference.posterior import _laplace_metric, _potential

    starts, cov = _laplace_metric(objective, exact[0], jax.random.PRNGKey(4), 2000)
    problem = objective.problem
    frac = (exact[0] - problem.lower) / (problem.upper - problem.lower)
    u = np.log(frac) - np.log1p(-frac)
    # the chain rule in _laplace_metric against central differences of the potential's gradient
    with jax.enable_x64(True):
        grad = jax.jit(jax.grad(_potential(objective)))
        h = 1e-4
        cols = [
            (np.asarray(grad(jnp.asarray(u + h * e))) - np.asarray(grad(jnp.asarray(u - h * e)))) / (2 * h)
            for e in np.eye(len(u))
        ]
    hess = 0.5 * (np.stack(cols, 1) + np.stack(cols, 0))
    np.testing.assert_allclose(np.linalg.inv(cov), hess, rtol=1e-5)
    # starts are draws of N(u, cov): 2000 of them match its moments to Monte Carlo error
    assert starts.shape == (2000, 2)
    np.testing.assert_array_less(np.abs(starts.mean(0) - u), 4 * np.sqrt(np.diag(cov) / 2000))
    np.testing.assert_allclose(np.cov(starts.T), cov, rtol=0.15)


def _assert_matches(fit, mean: np.ndarray, cov: np.ndarray) -> None:
    """Posterior mean and sd within 4 Monte Carlo standard errors of the analytic ones."""
    theta = fit.idata.posterior["theta"]
    mcse_mean = az.mcse(fit.idata, var_names=["theta"], method="mean")["theta"].values
    mcse_sd = az.mcse(fit.idata, var_names=["theta"], method="sd")["theta"].values
    np.testing.assert_array_less(np.abs(theta.mean(("chain", "draw")).values - mean), 4 * mcse_mean)
    np.testing.assert_array_less(
        np.abs(theta.std(("chain", "draw")).values - np.sqrt(np.diag(cov))), 4 * mcse_sd
    )


@pytest.fixture(scope="module")
def laplace_nuts(objective, exact):
    """NUTS with the Laplace metric held fixed and adapted from it: the same key, starts and warm-up."""
    return {
        metric: sample_posterior(
            objective,
            key=jax.random.PRNGKey(5),
            chains=4,
            draws=500,
            warmup=200,
            init=exact[0],
            metric=metric,
            dense_mass=True,
        )
        for metric in ("laplace", "laplace_adapt")
    }


@pytest.mark.parametrize("metric", ["laplace", "laplace_adapt"])
def test_nuts_with_a_laplace_metric_matches_the_analytic_posterior(laplace_nuts, exact, metric) -> None:
    fit = laplace_nuts[metric]
    assert fit.converged and fit.divergences == 0, fit.warnings
    _assert_matches(fit, *exact)


def test_laplace_adapt_learns_the_metric_in_warm_up(laplace_nuts) -> None:
    # the same chains up to the first adaptation window's end: then only laplace_adapt's metric moves
    steps = [
        laplace_nuts[m].idata.sample_stats["step_size"].values[:, 0] for m in ("laplace", "laplace_adapt")
    ]
    assert not np.allclose(*steps)


def test_laplace_metric_needs_one_point_and_a_known_metric(objective, exact) -> None:
    with pytest.raises(InputError, match="needs init to be one point"):
        sample_posterior(
            objective, key=jax.random.PRNGKey(0), chains=2, init=np.stack([exact[0]] * 2), metric="laplace"
        )
    with pytest.raises(InputError, match="metric='laplace_adapt' needs init to be one point"):
        sample_posterior(
            objective,
            key=jax.random.PRNGKey(0),
            chains=2,
            init=np.stack([exact[0]] * 2),
            metric="laplace_adapt",
        )
    with pytest.raises(InputError, match="metric must be 'adapt', 'laplace' or 'laplace_adapt', got 'unit'"):
        sample_posterior(objective, key=jax.random.PRNGKey(0), metric="unit")  # type: ignore[arg-type]


# -- the native backend: the same posterior from the generated C and its sensitivity equations -------


@pytest.fixture(scope="module")
def native_objective(problem: Problem):
    return compile_objective(problem, backend="native")


def test_native_laplace_matches_the_analytic_posterior(native_objective, exact) -> None:
    # the Hessian by central differences of sensitivity gradients
    mean, cov = exact
    fit = laplace(native_objective, mean, key=jax.random.PRNGKey(1), draws=10)
    assert fit.warnings == ()
    np.testing.assert_allclose(fit.covariance, cov, rtol=1e-5)


def test_native_nuts_matches_the_analytic_posterior(native_objective, exact) -> None:
    mean, cov = exact
    fit = sample_posterior(
        native_objective, key=jax.random.PRNGKey(0), chains=4, draws=500, warmup=500, dense_mass=True
    )
    _assert_matches(fit, mean, cov)
    assert fit.converged and fit.divergences == 0


# -- random-walk Metropolis: many chains in lockstep, on theta ----------------------------------------


@pytest.fixture(scope="module")
def metropolis_fit(objective):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = sample_posterior(
            objective, key=jax.random.PRNGKey(0), sampler="metropolis", chain_method="parallel"
        )
    return fit, [w for w in caught if issubclass(w.category, ConvergenceWarning)]


def test_metropolis_matches_the_analytic_posterior(metropolis_fit, exact) -> None:
    fit, caught = metropolis_fit
    _assert_matches(fit, *exact)
    corr = np.corrcoef(fit.theta_draws.T)[0, 1]
    cov = exact[1]
    assert corr == pytest.approx(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]), abs=0.05)
    # the defaults: 16 chains x 4,000 draws
    assert fit.idata.posterior["theta"].shape == (16, 4000, 2)
    assert fit.converged and fit.divergences == 0 and caught == []
    rate = fit.idata.sample_stats["acceptance_rate"].values.mean()
    assert 0.2 < rate < 0.3  # adapted to 0.234 (Roberts, Gelman & Gilks 1997)


def test_metropolis_has_the_layout_of_nuts(metropolis_fit, nuts, objective) -> None:
    fit = metropolis_fit[0]
    for group in ("posterior", "log_likelihood", "observed_data"):
        assert set(fit.idata[group].data_vars) == set(nuts[0].idata[group].data_vars)
    assert set(fit.idata.sample_stats.data_vars) == {"lp", "acceptance_rate"}
    # the pointwise log-likelihood kept from the sampler's own solves sums to the objective's
    rows = fit.idata.log_likelihood["y"].values
    with jax.enable_x64(True):
        ll = jax.jit(objective.log_likelihood)
        lp = jax.jit(objective.log_posterior)
        for c, d in [(0, 0), (7, 1234), (15, 3999)]:
            theta = jnp.asarray(fit.idata.posterior["theta"].values[c, d])
            assert rows[c, d].sum() == pytest.approx(float(ll(theta)), rel=1e-10)
            assert fit.idata.sample_stats["lp"].values[c, d] == pytest.approx(float(lp(theta)), rel=1e-10)


@pytest.mark.filterwarnings("ignore:posterior sampling did not converge")  # 5 x 100 draws
def test_metropolis_draws_do_not_depend_on_the_chain_method(objective) -> None:
    runs = [
        sample_posterior(
            objective, key=jax.random.PRNGKey(4), sampler="metropolis", chains=5, draws=100, warmup=200,
            chain_method=method,
        ).idata.posterior["theta"].values
        for method in ("vectorized", "parallel", "sequential")
    ]  # fmt: skip
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-12)
    np.testing.assert_allclose(runs[2], runs[0], rtol=1e-12)


def test_metropolis_refusals(objective) -> None:
    with pytest.raises(InputError, match="sampler must be one of 'nuts', 'metropolis', got 'hmc'"):
        sample_posterior(objective, key=jax.random.PRNGKey(0), sampler="hmc")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="metric 'laplace' is for NUTS"):
        sample_posterior(objective, key=jax.random.PRNGKey(0), sampler="metropolis", metric="laplace")
    with pytest.raises(InputError, match="'k'"):
        sample_posterior(
            objective, key=jax.random.PRNGKey(0), sampler="metropolis", init=np.array([2.0, 7.0])
        )


def test_native_metropolis_matches_the_analytic_posterior(native_objective, exact) -> None:
    fit = sample_posterior(native_objective, key=jax.random.PRNGKey(0), sampler="metropolis")
    _assert_matches(fit, *exact)
    assert fit.converged
