"""Trials drawing their virtual patients from a saved fit: ``population.source: {population: fit.nc}``.

The fit is synthetic (no sampling): posterior draws of the population means ``mu`` and between-patient
sds ``omega`` of two ``viral_immune`` parameters, saved with ``PopulationFit.save`` beside the YAML.
"""

from __future__ import annotations

import json
from pathlib import Path

import arviz as az
import numpy as np
import pytest
import yaml

from immunetwin.cohorts import load_trial, run_trial, write_trial
from immunetwin.errors import InputError
from immunetwin.inference import PopulationFit

MEDIANS = {"p": 5.0e4, "kappa_E": 0.8}  # template values 3.3e4 and 0.6
OMEGA = 0.3

TRIAL = {
    "name": "population-source", "template": "viral_immune", "seed": 5, "horizon": 14, "step": 0.25,
    "population": {"source": {"population": "fits/fit.nc"}},
    "arms": {"none": "none", "early": "antiviral(start=2)"}, "control": "none",
    "endpoints": ["peak_viral_load"], "sample_size": 40, "execution": {"chunk_size": 40},
}  # fmt: skip


def _save_fit(path: Path, medians: dict[str, float]) -> np.ndarray:
    """Save a one-chain, 400-draw fit of ``medians`` (``mu`` sd 0.05, ``omega`` about 0.3); return ``mu``."""
    rng = np.random.default_rng(1)
    shape = (1, 400, len(medians))
    mu = np.log(list(medians.values())) + 0.05 * rng.standard_normal(shape)
    omega = OMEGA * np.exp(0.05 * rng.standard_normal(shape))
    idata = az.from_dict(
        posterior={"mu": mu, "omega": omega},
        coords={"parameter": list(medians)},
        dims={"mu": ["parameter"], "omega": ["parameter"]},
    )
    fit = PopulationFit(tuple(medians), ("a", "b", "c", "d"), idata, 0.5, {"mu": 1.0}, {"mu": 400.0}, 0, True)
    fit.save(path)
    return mu[0]


def _yaml(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(TRIAL | changes))
    return path


def test_trial_draws_its_patients_from_the_saved_fit(tmp_path: Path) -> None:
    mu = _save_fit(tmp_path / "fits" / "fit.nc", MEDIANS)
    spec = load_trial(_yaml(tmp_path))
    assert spec.source == "population" and spec.population_fit == str(tmp_path / "fits" / "fit.nc")
    result = run_trial(spec)
    pop = result.population
    assert (
        pop.parameter_ids == ("p", "kappa_E") and len(pop) == 40
    )  # the prior would vary every estimated one
    assert "population fit (4 patients)" in pop.source
    log_values = np.log(pop.values)
    for k in range(2):
        mean, sd = log_values[:, k].mean(), log_values[:, k].std(ddof=1)
        # the mean of 40 draws is within two standard errors (0.1) of the posterior's mu range, the sd
        # near omega (0.3); the template prior gives sds of about 0.86 (p) and 0.77 (kappa_E) and p
        # centred on 10.4
        assert mu[:, k].min() - 0.1 <= mean <= mu[:, k].max() + 0.1, (k, mean)
        assert 0.15 < sd < 0.45, (k, sd)
    assert result.patients.ok.all() and set(result.summary.arm) == {"none", "early"}
    meta = json.loads(write_trial(result, tmp_path / "out")["trial"].read_text())
    assert meta["spec"]["source"] == "population" and meta["spec"]["population_fit"].endswith("fit.nc")


def test_fit_parameters_unknown_to_the_template_name_file_and_key(tmp_path: Path) -> None:
    _save_fit(tmp_path / "fits" / "fit.nc", {"p": 5.0e4, "kappa_X": 0.8, "beta_Q": 1e-5})
    with pytest.raises(
        InputError,
        match=r"^trial\.yaml: population\.source\.population: random parameter\(s\) kappa_X, beta_Q "
        r"of the fit are not parameters of viral_immune$",
    ):
        run_trial(load_trial(_yaml(tmp_path)))


def test_missing_fit_names_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(
        InputError, match=r"^trial\.yaml: population\.source\.population: .*fit\.nc: no such file"
    ):
        run_trial(load_trial(_yaml(tmp_path)))


@pytest.mark.parametrize(
    ("population", "message"),
    [
        (
            {"source": {"population": "fit.nc"}, "parameters": ["p"]},
            r"^trial\.yaml: population\.parameters: applies to the prior source only",
        ),
        (
            {"source": {"twins": ["a.zip"]}, "parameters": ["p"]},
            r"^trial\.yaml: population\.parameters: applies to the prior source only; twins perturb",
        ),
        ({"source": {"population": 3}}, r"^trial\.yaml: population\.source\.population: must be the path"),
        (
            {"source": {"population": "fit.nc", "twins": ["a.zip"]}},
            r"^trial\.yaml: population\.source: unknown keys \['twins'\]",
        ),
    ],
)
def test_bad_population_sources_name_file_and_key(tmp_path: Path, population: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_trial(_yaml(tmp_path, population=population))
