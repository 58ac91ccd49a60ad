"""Virtual populations: sources, plausibility constraints, matching, reproducibility."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import stats

import immunetwin as it
from immunetwin.cohorts import (
    Constraint,
    FromPopulation,
    FromPrior,
    FromTwins,
    Match,
    NormalTarget,
    sample_population,
)
from immunetwin.cohorts.sources import truncated_prior_ppf
from immunetwin.errors import InputError, UnknownIdError
from immunetwin.templates import Template


def test_prior_source_follows_the_truncated_prior(tiv: Template) -> None:
    pop = sample_population(tiv, 4000, key=jax.random.key(0), source=FromPrior(("beta", "delta")))
    assert pop.parameter_ids == ("beta", "delta") and len(pop) == 4000 and pop.drawn == 4000
    for pid in pop.parameter_ids:
        info = tiv.metadata.parameters[pid]
        x = pop.parameters[pid]
        assert x.min() >= info.range[0] and x.max() <= info.range[1]
        u = np.linspace(1e-6, 1 - 1e-6, 20001)
        grid = truncated_prior_ppf(info, u)
        assert stats.kstest(x, lambda v, grid=grid, u=u: np.interp(v, grid, u)).pvalue > 0.001


def test_same_key_same_population_other_key_other_population(tiv: Template) -> None:
    a = sample_population(tiv, 50, key=7)
    b = sample_population(tiv, 50, key=7)
    c = sample_population(tiv, 50, key=8)
    assert np.array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values)
    with pytest.raises(ValueError):
        a.values[0, 0] = 1.0  # frozen


def test_constraints_keep_only_plausible_patients(tiv: Template) -> None:
    cons = [Constraint("peak_viral_load", 6.0, 8.0), Constraint("viral_load@1", lower=2.0)]
    pop = sample_population(tiv, 120, key=3, constraints=cons, chunk_size=64, step=0.1, horizon=12.0)
    assert len(pop) == 120 and pop.plausible == 120 and pop.drawn > 120
    assert set(pop.rejected) == {str(c) for c in cons} and sum(pop.rejected.values()) >= pop.drawn - 120
    # re-simulate independently: every kept patient satisfies the constraints
    traj = it.simulate_cohort(tiv.model, np.linspace(0, 12, 121), parameters=pop.parameters)
    peak = tiv.outcomes(traj)["peak_viral_load"]
    assert np.all((peak >= 6.0 - 1e-9) & (peak <= 8.0 + 1e-9))
    assert np.all(tiv.observe(traj)["viral_load"][:, 10] >= 2.0 - 1e-9)
    assert 0 < pop.acceptance_rate < 1


def test_impossible_constraints_and_unknown_quantities_are_refused(tiv: Template) -> None:
    with pytest.raises(InputError, match=r"rejected by constraint: 20 <= peak_viral_load <= 30: \d+"):
        sample_population(tiv, 10, key=1, constraints=[Constraint("peak_viral_load", 20, 30)], max_draws=200)
    with pytest.raises(UnknownIdError, match="peak_damage"):
        sample_population(tiv, 10, key=1, constraints=[Constraint("peak_damage", 0, 1)])
    with pytest.raises(UnknownIdError, match="il6"):
        sample_population(tiv, 10, key=1, constraints=[Constraint("il6@3", 0, 1)])
    with pytest.raises(InputError, match="lower <= upper"):
        Constraint("peak_viral_load", 5, 4)
    with pytest.raises(InputError, match="n >= 1"):
        sample_population(tiv, 0, key=1)


def test_matching_reproduces_a_target_peak_distribution(tiv: Template) -> None:
    # untreated viral_tiv peaks of this pool: 5.5-7.4 log10, median 6.05; the target sits inside
    target = NormalTarget(("peak_viral_load",), (6.3,), (0.25,))
    pop = sample_population(tiv, 150, key=5, constraints=[Constraint("peak_viral_load", 5.5, 9.0)],
                            match=Match(target, pool=1500), chunk_size=512, horizon=12.0, step=0.1)  # fmt: skip
    assert len(pop) == 150 and pop.match is not None and pop.match.pool == 1500
    traj = it.simulate_cohort(tiv.model, np.linspace(0, 12, 121), parameters=pop.parameters)
    peak = tiv.outcomes(traj)["peak_viral_load"]
    assert stats.kstest(peak, stats.norm(6.3, 0.25).cdf).pvalue > 0.01
    assert abs(peak.mean() - 6.3) < 0.1 and abs(peak.std() - 0.25) < 0.08
    assert pop.match.adequate
    # a target the pool cannot reach is reported as such, not hidden
    far = sample_population(tiv, 50, key=5, constraints=[Constraint("peak_viral_load", 5.5, 9.0)],
                            match=Match(NormalTarget(("peak_viral_load",), (7.2,), (0.3,)), pool=500),
                            chunk_size=512, horizon=12.0, step=0.1)  # fmt: skip
    assert far.match is not None and not far.match.adequate


def test_population_fit_source_carries_population_uncertainty(tiv: Template) -> None:
    import arviz as az

    from immunetwin.inference.population import PopulationFit

    rng = np.random.default_rng(0)
    mu = np.log([2.0e-5, 3.0])[None, None, :] + rng.normal(0, 0.05, (2, 500, 2))
    omega = np.full((2, 500, 2), 0.3)
    post = az.from_dict(posterior={"mu": mu, "omega": omega}, coords={"parameter": ["beta", "delta"]},
                        dims={"mu": ["parameter"], "omega": ["parameter"]})  # fmt: skip
    fit = PopulationFit(("beta", "delta"), ("a", "b"), post, 0.5, {}, {}, 0, True)
    pop = sample_population(tiv, 20000, key=2, source=FromPopulation(fit))
    logb = np.log(pop.parameters["beta"])
    assert np.median(logb) == pytest.approx(np.log(2.0e-5), abs=0.02)
    assert np.std(logb) == pytest.approx(np.sqrt(0.3**2 + 0.05**2), abs=0.02)


def test_twin_source_perturbs_personalised_particles(tiv: Template) -> None:
    from immunetwin.twin import personalise

    times = np.arange(0.5, 4.01, 0.5)
    obs = tiv.observe(it.simulate(tiv.model, times))["viral_load"]
    import pandas as pd

    twin = personalise(tiv, pd.DataFrame({"observable": "viral_load", "time": times, "value": obs}),
                       patient="p", key=jax.random.key(1), estimate=("beta", "delta"), draws=200)  # fmt: skip
    pop = sample_population(tiv, 3000, key=4, source=FromTwins((twin,), spread=0.05))
    assert pop.parameter_ids == ("beta", "delta")
    post = twin.belief.values["delta"]
    spread = np.std(np.log(pop.parameters["delta"]))
    assert spread == pytest.approx(np.sqrt(np.var(np.log(post)) + 0.05**2), rel=0.15)
    with pytest.raises(InputError, match="spread"):
        FromTwins((twin,), spread=-1.0)
