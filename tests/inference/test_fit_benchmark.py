"""MAP on PEtab benchmark problems reaches the collection's reported optimum from random starts.

The collection's nominal parameters are the published best fits, so their log-likelihood (which
matches AMICI's reference, see CONFORMANCE.md) is the optimum to reach. Starts are drawn uniformly on
the parameter scales within the bounds; the nominal point is *not* used as a start. Slow (minutes on
2 cores): runs in `make conformance`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from immunetwin.inference import compile_objective, fit_map
from immunetwin.io.petab import read_petab


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize(
    ("name", "starts"), [("Boehm_JProteomeRes2014", 20), ("Crauste_CellSystems2017", 20)]
)
def test_random_starts_reach_the_published_optimum(shared_dir, name, starts):
    folder = shared_dir / "conformance" / "petab-benchmark" / "Benchmark-Models" / name
    problem = read_petab(folder / f"{name}.yaml")
    objective = compile_objective(problem)
    with jax.enable_x64(True):
        published = float(jax.jit(objective.log_likelihood)(jnp.asarray(problem.nominal)))
    fit = fit_map(objective, key=jax.random.PRNGKey(2024), starts=starts, prior=False, include_nominal=False)
    assert fit.log_likelihood >= published - 1e-2, (
        fit.log_likelihood,
        published,
        [s.value for s in fit.starts],
    )
