"""The Laplace start of population fits: curvature, Levenberg-Marquardt and empirical Bayes on
problems whose answers are known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from immunetwin.inference.population_start import (
    Layout,
    data_curvature,
    empirical_bayes_start,
    laplace_start,
)


def test_layout_splits_and_joins_in_numpyro_site_order() -> None:
    layout = Layout(n_patients=3, n_random=2, sigma=True, patient_site="log_theta")
    u = np.arange(layout.size, dtype=float)
    parts = layout.split(u)
    assert layout.sites() == ("mu", "omega", "sigma", "log_theta")
    np.testing.assert_array_equal(parts["log_theta"], np.arange(5.0, 11.0).reshape(3, 2))
    assert parts["sigma"] == 4.0
    np.testing.assert_array_equal(layout.join(parts), u)
    np.testing.assert_array_equal(layout.log_theta(u), parts["log_theta"])
    nc = Layout(2, 1, False)
    un = np.array([1.0, math.log(2.0), 0.5, -1.0])  # mu, log omega, z
    np.testing.assert_allclose(nc.log_theta(un), [[2.0], [-1.0]])


def _finite_difference_hessian(f, u: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    n = u.size
    hess = np.zeros((n, n))
    for a in range(n):
        for b in range(n):
            ea, eb = np.eye(n)[a] * eps, np.eye(n)[b] * eps
            hess[a, b] = (f(u + ea + eb) - f(u + ea - eb) - f(u - ea + eb) + f(u - ea - eb)) / (4 * eps**2)
    return hess


def test_data_curvature_equals_the_exact_hessian_of_a_linear_censored_model() -> None:
    """h = A log theta (linear), so Gauss-Newton with the censored weights is the exact Hessian of
    minus the log likelihood, uncensored and censored alike."""
    rng = np.random.default_rng(0)
    layout = Layout(n_patients=2, n_random=2, sigma=False)  # non-centred: mu, log omega, z
    sigma = 0.7
    a = rng.normal(size=(2, 4, 2))
    observed = np.array([[True, True, True, False], [True, True, True, True]])
    censored = np.array([[False, True, False, False], [True, False, False, True]])
    y = rng.normal(size=(2, 4))
    limit = y + 0.3

    def h_of(u: np.ndarray) -> np.ndarray:
        return np.einsum("ptk,pk->pt", a, layout.log_theta(u))

    def nll(u: np.ndarray) -> float:
        h = h_of(u)
        dens = stats.norm.logpdf(y, h, sigma)
        cens = special.log_ndtr((limit - h) / sigma)
        return -float(np.sum(np.where(observed, np.where(censored, cens, dens), 0.0)))

    u = rng.normal(size=layout.size) * 0.5
    got = data_curvature(layout, u, h_of(u), a, observed, censored, limit, sigma)
    # The non-centred map is not linear in (mu, log omega, z): compare in the patients' block, where it is
    # linear given mu and omega, and check the mu block (linear too).
    exact = _finite_difference_hessian(nll, u)
    k = layout.n_random
    np.testing.assert_allclose(
        got[layout.z0 :, layout.z0 :], exact[layout.z0 :, layout.z0 :], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(got[:k, :k], exact[:k, :k], rtol=1e-5, atol=1e-6)
    assert np.all(np.linalg.eigvalsh(got) >= -1e-12)  # Gauss-Newton: positive semi-definite everywhere


def test_data_curvature_adds_the_fisher_information_of_log_sigma() -> None:
    layout = Layout(n_patients=1, n_random=1, sigma=True, patient_site="log_theta")
    u = np.array([0.0, 0.0, math.log(0.5), 0.3])
    observed = np.array([[True, True, True]])
    censored = np.array([[False, True, False]])
    hess = data_curvature(
        layout, u, np.zeros((1, 3)), np.ones((1, 3, 1)), observed, censored, np.zeros((1, 3)), 0.5
    )
    assert hess[2, 2] == 4.0  # 2 per uncensored value
    assert hess[2, 3] == 0.0


def test_laplace_start_finds_the_mode_and_covariance_of_a_gaussian() -> None:
    rng = np.random.default_rng(1)
    m = rng.normal(size=(4, 4))
    precision = m @ m.T + 4 * np.eye(4)
    mode = rng.normal(size=4)

    def potential(u: np.ndarray) -> tuple[float, np.ndarray]:
        d = u - mode
        return 0.5 * float(d @ precision @ d), precision @ d

    start = laplace_start(potential, lambda u: precision, np.zeros(4))
    assert start.converged
    np.testing.assert_allclose(start.mode, mode, atol=1e-8)
    np.testing.assert_allclose(start.covariance, np.linalg.inv(precision), rtol=1e-12)


def test_laplace_start_refuses_steps_into_failed_solves_and_a_bad_start() -> None:
    """A potential that is infinite beyond u = 1 (a solver failure there): the damped steps stay inside."""

    def potential(u: np.ndarray) -> tuple[float, np.ndarray]:
        if u[0] >= 1.0:
            return math.inf, np.full(1, math.nan)
        return float((u[0] - 0.9) ** 2 * 50 - math.log(1.0 - u[0])), np.array(
            [100 * (u[0] - 0.9) + 1 / (1 - u[0])]
        )

    start = laplace_start(potential, lambda u: np.array([[100.0 + 1 / (1 - u[0]) ** 2]]), np.array([-3.0]))
    assert start.mode[0] < 1.0 and abs(potential(start.mode)[1][0]) < 1e-3
    with pytest.raises(ValueError, match="not finite at the starting point"):
        laplace_start(potential, lambda u: np.eye(1), np.array([2.0]))


def test_empirical_bayes_recovers_a_linear_gaussian_population() -> None:
    """Centred linear-Gaussian hierarchy with direct, precise measurements: the start's mu and omega
    are the sample mean and sd of the (nearly unshrunk) patient modes."""
    rng = np.random.default_rng(2)
    p, sigma = 40, 0.05
    truth = 1.5 + 0.4 * rng.standard_normal(p)
    y = truth[:, None] + sigma * rng.standard_normal((p, 3))
    layout = Layout(n_patients=p, n_random=1, sigma=False, patient_site="log_theta")

    def potential(u: np.ndarray) -> tuple[float, np.ndarray]:
        s = layout.split(u)
        mu, v, lt = s["mu"][0], s["omega"][0], s["log_theta"][:, 0]
        om = math.exp(v)
        f = np.sum((y - lt[:, None]) ** 2) / (2 * sigma**2) + np.sum((lt - mu) ** 2) / (2 * om**2) + p * v
        g = np.zeros_like(u)
        g[0] = -np.sum(lt - mu) / om**2
        g[1] = -np.sum((lt - mu) ** 2) / om**2 + p
        g[2:] = -np.sum(y - lt[:, None], axis=1) / sigma**2 + (lt - mu) / om**2
        return float(f), g

    def curvature(u: np.ndarray) -> np.ndarray:
        om = math.exp(u[1])
        hess = np.zeros((layout.size, layout.size))
        hess[2:, 2:] = np.eye(p) * (3 / sigma**2 + 1 / om**2)
        hess[0, 0] = p / om**2
        hess[1, 1] = 2 * p
        hess[0, 2:] = hess[2:, 0] = -1 / om**2
        return hess

    u0 = np.concatenate([[0.0, math.log(0.5)], np.zeros(p)])
    start = empirical_bayes_start(potential, curvature, layout, u0)
    modes = y.mean(axis=1)
    assert abs(start.mode[0] - modes.mean()) < 0.01
    assert abs(math.exp(start.mode[1]) - modes.std()) < 0.01
    assert np.all(np.linalg.eigvalsh(start.covariance) > 0)
    with pytest.raises(ValueError, match="centred form"):
        empirical_bayes_start(potential, curvature, Layout(p, 1, False), u0)
