"""Chains run in parallel (immunetwin.inference.chains): a chain's draws do not depend on how many
devices or threads share the chains, they are NumPyro's transitions, and the methods are checked by
name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from immunetwin.errors import InputError
from immunetwin.inference.chains import check_chain_method

CHILD = """
import json, sys, warnings
from immunetwin.runtime import use_all_cpu_cores
use_all_cpu_cores({devices})
sys.path.insert(0, {here!r})
import jax
import test_posterior as tp
from immunetwin.inference.likelihood import compile_objective
from immunetwin.inference.posterior import sample_posterior
objective = compile_objective(tp.problem.__wrapped__(), backend="{backend}")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    fit = sample_posterior(objective, key=jax.random.PRNGKey(11), chains=3, draws=40, warmup=40,
                           chain_method="{method}")
post = fit.idata.posterior["theta"].values
print(json.dumps({{"devices": jax.local_device_count(), "theta": post.tolist(),
                  "steps": fit.idata.sample_stats["n_steps"].values.tolist()}}))
"""


def _run(devices: int, method: str, backend: str = "xla") -> dict:
    here = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(devices=devices, here=here, method=method, backend=backend)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# the native backend: its solves are FFI calls that two devices' programs make at once
@pytest.mark.parametrize("backend", ["xla", "native"])
def test_parallel_chains_are_the_same_on_one_or_two_devices(backend: str) -> None:
    one, two = _run(1, "parallel", backend), _run(2, "parallel", backend)
    assert (one["devices"], two["devices"]) == (1, 2)
    theta = np.asarray(one["theta"])
    assert theta.shape == (3, 40, 2) and np.isfinite(theta).all()
    np.testing.assert_array_equal(theta, np.asarray(two["theta"]))
    np.testing.assert_array_equal(np.asarray(one["steps"]), np.asarray(two["steps"]))
    # three chains from three keys: not copies of one another
    assert not np.array_equal(theta[0], theta[1]) and not np.array_equal(theta[1], theta[2])


def _gaussian_kernel(dense: bool):
    import jax.numpy as jnp

    from immunetwin.inference.chains import CompiledInitNUTS

    scale = jnp.array([0.01, 0.003, 0.04])

    def potential(u):  # a correlated Gaussian
        return 0.5 * jnp.sum((u / scale) ** 2) + 40.0 * u[0] * u[1]

    return lambda: CompiledInitNUTS(potential_fn=potential, dense_mass=dense)


@pytest.mark.parametrize("dense", [False, True])
def test_parallel_chains_do_not_depend_on_threads_and_are_numpyros_transitions(dense: bool) -> None:
    import jax
    from numpyro.infer import MCMC

    from immunetwin.inference.chains import run_chains

    make = _gaussian_kernel(dense)
    key = jax.random.PRNGKey(3)
    init = np.array([[0.003, -0.001, 0.02], [0.01, 0.001, -0.005], [0.0, 0.0, 0.01]])
    fields = ("num_steps", "adapt_state.step_size")
    with jax.enable_x64(True):
        runs = [
            run_chains(
                make,
                key=key,
                init=init,
                chains=3,
                warmup=10,
                draws=20,
                chain_method="parallel",
                progress=False,
                extra_fields=fields,
                workers=w,
            )
            for w in (1, 3)
        ]
        keys = jax.random.split(key, 3)
        alone = []
        for c in range(3):
            mcmc = MCMC(make(), num_warmup=10, num_samples=20, num_chains=1, progress_bar=False)
            mcmc.run(keys[c], init_params=init[c], extra_fields=fields)
            alone.append((np.asarray(mcmc.get_samples()), mcmc.get_extra_fields()))
    (z1, e1), (z3, e3) = runs
    assert z1.shape == (3, 20, 3) and set(e1) == {"diverging", *fields}
    np.testing.assert_array_equal(z1, z3)
    for f in e1:
        np.testing.assert_array_equal(e1[f], e3[f])
    assert not np.array_equal(z1[0], z1[1])
    for c, (z, extra) in enumerate(alone):
        # the same transitions as NumPyro's MCMC from the same key: equal to rounding, which XLA
        # places differently in two programs and which grows through the warm-up's adaptation
        np.testing.assert_allclose(z1[c], z, rtol=0, atol=1e-10)
        np.testing.assert_array_equal(e1["num_steps"][c], np.asarray(extra["num_steps"]))
        np.testing.assert_array_equal(e1["diverging"][c], np.asarray(extra["diverging"]))


def test_parallel_chains_refuse_a_model_kernel() -> None:
    import jax
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import NUTS

    from immunetwin.inference.chains import run_chains

    def model():
        numpyro.sample("x", dist.Normal())

    with pytest.raises(InputError, match="needs a kernel of a potential_fn"):
        run_chains(
            lambda: NUTS(model),
            key=jax.random.PRNGKey(0),
            init=np.zeros((2, 1)),
            chains=2,
            warmup=2,
            draws=2,
            chain_method="parallel",
            progress=False,
            extra_fields=(),
        )


def test_unknown_chain_methods_are_refused_by_name() -> None:
    for method in ("vectorized", "sequential", "parallel"):
        check_chain_method(method)
    with pytest.raises(
        InputError, match="chain_method must be one of 'vectorized', 'sequential', 'parallel', got 'pmap'"
    ):
        check_chain_method("pmap")


@pytest.mark.parametrize("dense", [False, True])
def test_compiled_init_equals_numpyro_eager_init(dense: bool) -> None:
    import jax
    import jax.numpy as jnp
    from numpyro.infer import NUTS

    from immunetwin.inference.chains import CompiledInitNUTS

    scale = jnp.array([0.01, 0.003, 0.04])

    def potential(u):  # a correlated Gaussian
        return 0.5 * jnp.sum((u / scale) ** 2) + 40.0 * u[0] * u[1]

    with jax.enable_x64(True):
        key, start = jax.random.PRNGKey(5), jnp.array([[0.003, -0.001, 0.02], [0.01, 0.001, -0.005]])
        keys = jax.random.split(key, 2)
        states = [
            kind(potential_fn=potential, dense_mass=dense).init(keys, 200, init_params=start)
            for kind in (NUTS, CompiledInitNUTS)
        ]
    eager, compiled = (jax.tree.leaves(s) for s in states)
    assert len(eager) == len(compiled)
    for a, b in zip(eager, compiled, strict=True):
        np.testing.assert_allclose(
            np.asarray(b, dtype=float), np.asarray(a, dtype=float), rtol=1e-12, atol=1e-14
        )
    with jax.enable_x64(True):
        expected = jax.vmap(potential)(start)
    np.testing.assert_allclose(np.asarray(states[1].potential_energy), np.asarray(expected), rtol=1e-14)
