"""``immunetwin fit`` end to end on a real person's data (shipped in the package), and its refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from immunetwin.datasets import ke2022_nasal, viral_load_table


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from immunetwin.cli import main; main()", *args],
        capture_output=True, text=True, cwd=cwd, timeout=1800,
    )  # fmt: skip


def _ke01_csv(folder: Path) -> Path:
    """ke01's viral loads (shipped in the package) as the CSV that ``fit --data`` reads."""
    data = folder / "ke01.csv"
    viral_load_table(ke2022_nasal(), "ke01").to_csv(data, index=False)
    return data


@pytest.mark.parametrize(
    ("backend", "optimizer"), [("xla", "L-BFGS-B"), ("native", "L-BFGS-B"), ("native", "fides")]
)
def test_fit_map_of_a_template_to_one_persons_viral_loads(tmp_path, backend, optimizer):
    data = _ke01_csv(tmp_path)
    out = tmp_path / "fit"
    res = _run(
        "fit", "viral_tiv", "--data", str(data), "--starts", "3", "--out", str(out), "--backend", backend,
        "--optimizer", optimizer,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "map.json").read_text())
    assert result["optimizer"] == optimizer
    assert set(result["map"]) == {"beta", "delta", "p", "c", "V0"}
    assert result["starts_at_best"] >= 1
    assert result["log_likelihood"] > -40  # 14 points, sd 0.5: a fit, not a failure (-inf)


@pytest.mark.parametrize("metric", ["laplace", "laplace_adapt"])
def test_fit_nuts_with_a_laplace_metric_and_parallel_chains_writes_its_posterior(tmp_path, metric):
    import arviz as az

    data = _ke01_csv(tmp_path)
    out = tmp_path / "fit"
    res = _run(
        "fit", "viral_tiv", "--data", str(data), "--starts", "2", "--method", "nuts", "--metric", metric,
        "--chains", "2", "--draws", "6", "--warmup", "4", "--chain-method", "parallel", "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "map.json").read_text())
    assert result["nuts"]["converged"] is False  # 6 draws: flagged, not hidden
    post = az.from_netcdf(out / "posterior.nc").posterior
    assert post["theta"].shape == (2, 6, 5)
    assert "warning:" in res.stdout


def test_fit_nuts_with_the_dense_metric_at_looser_tolerances(tmp_path):
    data = _ke01_csv(tmp_path)
    out = tmp_path / "fit"
    res = _run(
        "fit", "viral_tiv", "--data", str(data), "--starts", "2", "--method", "nuts", "--metric", "dense",
        "--chains", "2", "--draws", "6", "--warmup", "4", "--rtol", "1e-6", "--atol", "1e-8",
        "--backend", "native", "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "map.json").read_text())
    assert result["tolerances"] == {"rtol": 1e-6, "atol": 1e-8}
    assert result["nuts"]["converged"] is False  # 6 draws
    assert (out / "posterior.nc").is_file()


def test_fit_metropolis_writes_its_posterior(tmp_path):
    data = _ke01_csv(tmp_path)
    out = tmp_path / "fit"
    res = _run(
        "fit", "viral_tiv", "--data", str(data), "--starts", "2", "--method", "metropolis", "--backend", "native",
        "--chains", "4", "--draws", "50", "--warmup", "100", "--chain-method", "parallel", "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "map.json").read_text())
    assert result["metropolis"]["converged"] is False  # 4 x 50 draws: flagged, not hidden
    assert set(result["metropolis"]["rhat"]) == {"beta", "delta", "p", "c", "V0"}
    import arviz as az

    idata = az.from_netcdf(out / "posterior.nc")
    assert idata.posterior["theta"].shape == (4, 50, 5)
    assert set(idata.sample_stats.data_vars) == {"lp", "acceptance_rate"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("fit", "viral_tiv"), "needs --data"),
        (("fit", "viral_tiv", "--data", "nope.csv"), "file not found"),
        (("fit", "nope.yaml"), "file not found"),
        (("fit", "viral_tiv", "--data", "x.csv", "--method", "mcmc"), "--method 'mcmc'"),
        (("fit", "viral_tiv", "--data", "x.csv", "--method", "nuts", "--metric", "unit"), "--metric 'unit'"),
        (("fit", "viral_tiv", "--data", "x.csv", "--chain-method", "pmap"), "--chain-method 'pmap'"),
        (
            ("fit", "viral_tiv", "--data", "x.csv", "--method", "metropolis", "--metric", "laplace"),
            "--metric 'laplace' is for NUTS",
        ),
        (("fit", "viral_tiv", "--data", "x.csv", "--chains", "0"), "--chains must be at least 1, got 0"),
        (("fit", "viral_tiv", "--data", "x.csv", "--backend", "gpu"), "--backend 'gpu'"),
        (("fit", "viral_tiv", "--data", "x.csv", "--optimizer", "newton"), "--optimizer 'newton'"),
        (("fit", "viral_tiv", "--data", "x.csv", "--rtol", "0"), "--rtol must be between 0 and 1, got 0.0"),
        (("fit", "viral_tiv", "--data", "x.csv", "--rtol", "1.5"), "--rtol must be between 0 and 1"),
        (
            ("fit", "viral_tiv", "--data", "x.csv", "--atol", "nan"),
            "--atol must be positive and finite, got nan",
        ),
    ],
)
def test_fit_refusals_are_one_line(args, message, tmp_path):
    res = _run(*args, cwd=tmp_path)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
