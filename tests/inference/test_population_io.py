"""Saved population fits: one NetCDF file back to the same fit, clear errors for bad files, atomic writes.

The fits are built from synthetic draws (no sampling): the posterior groups ``fit_population`` makes
(``mu``, ``omega``, ``z``, ``log_theta``, ``theta``, ``sigma``; NUTS ``sample_stats``) with their dims.
"""

from __future__ import annotations

from pathlib import Path

import arviz as az
import numpy as np
import pytest
import xarray as xr

from immunetwin.errors import InputError
from immunetwin.inference import PopulationFit, load_population_fit

RANDOM = ("beta", "p")
PATIENTS = ("ke-01", "ke-02", "ke-03")


def _fit(sigma: float | None = None) -> PopulationFit:
    """A two-chain, 50-draw fit on two parameters and three patients; ``sigma=None`` samples it."""
    rng = np.random.default_rng(3)
    c, d, n_p, n_k = 2, 50, len(PATIENTS), len(RANDOM)
    mu = np.log([8e-6, 3.3e4]) + 0.1 * rng.standard_normal((c, d, n_k))
    omega = 0.3 * np.exp(0.1 * rng.standard_normal((c, d, n_k)))
    z = rng.standard_normal((c, d, n_p, n_k))
    log_theta = mu[:, :, None, :] + omega[:, :, None, :] * z
    post = {"mu": mu, "omega": omega, "z": z, "log_theta": log_theta, "theta": np.exp(log_theta)}
    if sigma is None:
        post["sigma"] = 0.5 + 0.02 * rng.standard_normal((c, d))
    stats = {"diverging": rng.uniform(size=(c, d)) < 0.02, "n_steps": rng.integers(3, 16, (c, d))}
    pk = ["patient", "parameter"]
    dims = {"mu": ["parameter"], "omega": ["parameter"], "z": pk, "log_theta": pk, "theta": pk}
    coords = {"parameter": list(RANDOM), "patient": list(PATIENTS)}
    idata = az.from_dict(posterior=post, sample_stats=stats, coords=coords, dims=dims)
    idata = az.InferenceData(attrs={"cohort": "synthetic"}, **{g: getattr(idata, g) for g in idata.groups()})
    divergences = int(stats["diverging"].sum())
    return PopulationFit(
        RANDOM, PATIENTS, idata, sigma, {"mu": 1.004, "omega": 1.07, "log_theta": 1.01},
        {"mu": 812.0, "omega": 61.5, "log_theta": 240.0}, divergences, False,
        ("R-hat of 'omega' is 1.07 (> 1.05): the chains disagree", f"{divergences} divergent transitions"),
    )  # fmt: skip


@pytest.mark.parametrize("sigma", [0.5, None])
def test_saved_fit_loads_back_equal(tmp_path: Path, sigma: float | None) -> None:
    fit = _fit(sigma)
    path = fit.save(tmp_path / "sub" / "fit.nc")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["fit.nc"]
    back = load_population_fit(path)
    for name in ("random", "patients", "sigma", "rhat", "ess", "divergences", "converged", "warnings"):
        assert getattr(back, name) == getattr(fit, name), name
    assert isinstance(back.random, tuple) and isinstance(back.warnings, tuple)
    assert back.posterior.groups() == fit.posterior.groups()
    for group in fit.posterior.groups():
        xr.testing.assert_identical(getattr(back.posterior, group), getattr(fit.posterior, group))
    np.testing.assert_array_equal(back.draws("mu"), fit.draws("mu"))
    assert back.mu() == fit.mu() and back.shrinkage() == fit.shrinkage() and back.noise() == fit.noise()
    assert back.individual("ke-02") == fit.individual("ke-02")
    assert back.posterior.attrs == {"cohort": "synthetic"}  # the fit's own record is not left there


def test_saving_again_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "fit.nc"
    _fit(0.5).save(path)
    _fit(None).save(path)
    assert load_population_fit(path).sigma is None


def test_missing_foreign_plain_and_damaged_files_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"absent\.nc: no such file"):
        load_population_fit(tmp_path / "absent.nc")
    text = tmp_path / "notes.nc"
    text.write_text("mu, omega\n1, 2\n")
    with pytest.raises(InputError, match=r"notes\.nc: not a NetCDF-4 file"):
        load_population_fit(text)
    plain = tmp_path / "plain.nc"
    az.from_dict(posterior={"mu": np.zeros((1, 4, 2))}).to_netcdf(str(plain))
    with pytest.raises(InputError, match=r"plain\.nc: a NetCDF file without a population fit"):
        load_population_fit(plain)
    damaged = tmp_path / "damaged.nc"
    posterior = az.from_dict(posterior={"mu": np.zeros((1, 4, 2)), "omega": np.ones((1, 4, 2))}).posterior
    az.InferenceData(attrs={"immunetwin_population_fit": '{"format": 1}'}, posterior=posterior).to_netcdf(
        str(damaged)
    )
    with pytest.raises(InputError, match=r"damaged\.nc: damaged 'immunetwin_population_fit' attribute"):
        load_population_fit(damaged)


def test_a_failed_save_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(
        InputError, match=r"taken/fit\.nc: cannot write the population fit \(.*taken is not a folder\)"
    ):
        _fit().save(blocker / "fit.nc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]

    def half_written(self: az.InferenceData, filename: str, **kwargs: object) -> str:
        Path(filename).write_bytes(b"\x89HDF\r\n\x1a\n partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(az.InferenceData, "to_netcdf", half_written)
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(InputError, match=r"fit\.nc: cannot write the population fit \(No space left"):
        _fit().save(folder / "fit.nc")
    assert list(folder.iterdir()) == []
