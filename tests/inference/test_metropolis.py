"""Adaptive random-walk Metropolis (``immunetwin.inference.metropolis``) on Gaussian targets.

The scale check reproduces the optimal-scaling result of Roberts, Gelman & Gilks (1997, Ann Appl
Probab 7:110): with a proposal whose covariance matches the target's, the acceptance rate of a
random walk with step ``s`` on a Gaussian target is ``E[min(1, exp(-s x'z - s^2 |z|^2 / 2))]`` with
``x, z ~ N(0, I_d)``, which tends to 0.234 at ``s = 2.38 / sqrt(d)`` as ``d`` grows. The test finds the
``s`` that gives 0.234 at ``d = 10`` from that formula by Monte Carlo, independently of the sampler,
and checks that the sampler adapts to it.

Monte Carlo tolerances are 4 standard errors from ArviZ's ESS, as in ``test_posterior.py``.
"""

from __future__ import annotations

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from immunetwin.errors import InputError
from immunetwin.inference.metropolis import Window, metropolis, warmup_windows

DIM, CHAINS = 10, 16


def _target(dim: int = DIM) -> tuple[np.ndarray, np.ndarray]:
    """A mean and a correlated covariance whose sds run from 0.01 to 10 (badly scaled on purpose)."""
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    inner = q @ np.diag(np.linspace(0.2, 3.0, dim)) @ q.T
    d = np.sqrt(np.diag(inner))
    sd = np.logspace(-2, 1, dim)
    return rng.normal(size=dim), inner / np.outer(d, d) * np.outer(sd, sd)


def _gaussian(mean: np.ndarray, cov: np.ndarray):
    precision = np.linalg.inv(cov)

    def log_density(x):
        r = x - mean
        return -0.5 * r @ precision @ r, jnp.stack([r[0], r[-1]])  # aux: two residuals

    return log_density


def _starts(mean: np.ndarray, cov: np.ndarray, chains: int = CHAINS) -> np.ndarray:
    """Over-dispersed starts: 2 posterior sds around the mean."""
    rng = np.random.default_rng(5)
    return mean + 2.0 * np.sqrt(np.diag(cov)) * rng.normal(size=(chains, len(mean)))


def _run(density, init, *, groups: int = 2, warmup: int = 2000, draws: int = 2000, **kw):
    with jax.enable_x64(True):
        return metropolis(
            density, key=jax.random.PRNGKey(11), init=init, warmup=warmup, draws=draws,
            initial_sd=kw.pop("initial_sd", np.ones(init.shape[-1])), groups=groups, **kw,
        )  # fmt: skip


@pytest.fixture(scope="module")
def gauss():
    mean, cov = _target()
    return _run(_gaussian(mean, cov), _starts(mean, cov), draws=4000), mean, cov


def test_warm_up_windows_are_stans() -> None:
    w = warmup_windows(1000)
    assert [x.length for x in w] == [75, 25, 50, 100, 200, 500, 50]
    assert [x.update_shape for x in w] == [False, True, True, True, True, True, False]
    assert warmup_windows(100) == (Window(15, False), Window(75, True), Window(10, False))
    for n in (0, 1, 7, 149, 150, 151, 999, 2500):
        assert sum(x.length for x in warmup_windows(n)) == n
        assert all(x.length > 0 for x in warmup_windows(n))
    with pytest.raises(InputError, match="warmup must be >= 0"):
        warmup_windows(-1)


def test_draws_match_the_target(gauss) -> None:
    out, mean, cov = gauss
    assert out.x.shape == (CHAINS, 4000, DIM)
    ess = az.ess(az.from_dict(posterior={"x": out.x}))["x"].values
    sd = np.sqrt(np.diag(cov))
    assert np.all(ess > 400)
    flat = out.x.reshape(-1, DIM)
    np.testing.assert_array_less(np.abs(flat.mean(0) - mean), 4 * sd / np.sqrt(ess))
    # the sd's standard error from the ESS: sd / sqrt(2 ESS) for a Gaussian
    np.testing.assert_array_less(np.abs(flat.std(0) - sd), 4 * sd / np.sqrt(2 * ess))


def test_warm_up_learns_the_covariance(gauss) -> None:
    out, _, cov = gauss
    # whitened by the target: the identity if learnt exactly; the start (the identity, sds 1) is
    # wrong by a factor of up to 1e4 in variance
    w = np.linalg.cholesky(np.linalg.inv(cov))
    err = np.linalg.norm(w.T @ out.shape @ w - np.eye(DIM), 2)
    assert err < 0.5


def test_scale_adapts_to_the_optimal_acceptance(gauss) -> None:
    out, _, _ = gauss
    rng = np.random.default_rng(0)
    x, z = rng.normal(size=(2, 200_000, DIM))

    def acceptance(s: float) -> float:
        return float(np.mean(np.minimum(1.0, np.exp(-s * np.sum(x * z, 1) - s**2 * np.sum(z * z, 1) / 2))))

    lo, hi = 0.1, 3.0
    for _ in range(50):  # acceptance falls with s
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if acceptance(mid) > 0.234 else (lo, mid)
    optimal = 0.5 * (lo + hi)
    assert abs(optimal - 2.38 / np.sqrt(DIM)) < 0.1 * optimal  # Roberts et al.'s limit, near d = 10
    assert abs(out.scale - optimal) < 0.15 * optimal
    assert abs(float(out.accept_prob.mean()) - 0.234) < 0.03


def test_kept_densities_and_aux_belong_to_the_draws(gauss) -> None:
    out, mean, cov = gauss
    precision = np.linalg.inv(cov)
    r = out.x[:3, ::97] - mean
    np.testing.assert_allclose(
        out.log_density[:3, ::97], -0.5 * np.einsum("cdi,ij,cdj->cd", r, precision, r), rtol=1e-9
    )
    np.testing.assert_array_equal(out.aux[..., 0], out.x[..., 0] - mean[0])
    np.testing.assert_array_equal(out.aux[..., 1], out.x[..., -1] - mean[-1])


def test_draws_do_not_depend_on_the_grouping() -> None:
    mean, cov = _target(3)
    density, init = _gaussian(mean, cov), _starts(mean, cov, 7)
    one = _run(density, init, groups=1, warmup=300, draws=200)
    three = _run(density, init, groups=3, warmup=300, draws=200, workers=2)  # 3 + 3 + 1 padded
    np.testing.assert_allclose(three.x, one.x, rtol=1e-12, atol=1e-12)
    assert three.scale == pytest.approx(one.scale, rel=1e-12)


def test_a_typed_key_gives_the_draws_of_its_raw_key() -> None:
    mean, cov = _target(2)
    density, init = _gaussian(mean, cov), _starts(mean, cov, 3)
    with jax.enable_x64(True):
        raw, typed = (
            metropolis(density, key=k, init=init, warmup=50, draws=20, initial_sd=np.ones(2))
            for k in (jax.random.PRNGKey(5), jax.random.key(5))
        )
    np.testing.assert_array_equal(typed.x, raw.x)


def test_the_walk_stays_in_the_support() -> None:
    def box(x):
        inside = jnp.all((x >= 0.0) & (x <= 1.0))
        return jnp.where(inside, 0.0, -jnp.inf), jnp.zeros(0)

    out = _run(box, np.full((8, 2), 0.5), warmup=500, draws=1000, initial_sd=np.full(2, 0.1))
    assert out.x.min() >= 0.0 and out.x.max() <= 1.0
    assert np.all(out.log_density == 0.0)
    ess = az.ess(az.from_dict(posterior={"x": out.x}))["x"].values
    np.testing.assert_array_less(np.abs(out.x.reshape(-1, 2).mean(0) - 0.5), 4 * np.sqrt(1 / 12 / ess))


def test_a_chain_that_finds_no_finite_density_stays_where_it_started() -> None:
    def nowhere(x):
        return -jnp.inf * jnp.ones(()), jnp.zeros(1)

    init = np.array([[0.1, 0.2], [0.3, 0.4]])
    out = _run(nowhere, init, warmup=50, draws=20)
    assert np.all(np.isneginf(out.log_density))
    np.testing.assert_array_equal(out.x, np.broadcast_to(init[:, None, :], out.x.shape))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"init": np.zeros(3)}, "init must have shape"),
        ({"draws": 0}, "draws must be >= 1"),
        ({"target_accept": 1.0}, "target_accept must lie in"),
        ({"initial_sd": np.array([1.0, -1.0, 1.0])}, "initial_sd must be 3 positive"),
        ({"initial_sd": np.ones(2)}, "initial_sd must be 3 positive"),
        ({"groups": 0}, "groups and workers must be >= 1"),
        ({"warmup": -5}, "warmup must be >= 0"),
    ],
)
def test_bad_arguments_are_refused(kw, message) -> None:
    mean, cov = _target(3)
    args = {"init": _starts(mean, cov, 2), "warmup": 10, "draws": 10} | kw
    with pytest.raises(InputError, match=message):
        _run(_gaussian(mean, cov), args.pop("init"), **args)
