"""``immunetwin twin``: personalise -> assimilate -> forecast -> show, through typer's CliRunner."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import DRAWS, EARLY, ESTIMATE
from immunetwin.cli import app
from immunetwin.cli.twin import forecast_cmd
from immunetwin.errors import InputError, UnknownIdError
from immunetwin.twin import load_twin

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, ["twin", *args])


@pytest.fixture(scope="module")
def files(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("cli")
    data[data.time <= EARLY].to_csv(folder / "early.csv", index=False)
    data[data.time > EARLY].to_csv(folder / "later.csv", index=False)
    estimate = [x for p in ESTIMATE for x in ("--estimate", p)]
    res = _invoke("personalise", str(folder / "early.csv"), "--template", "viral_tiv", "--patient", "p01",
                  "--out", str(folder / "twin.zip"), *estimate, "--draws", str(DRAWS))  # fmt: skip
    assert res.exit_code == 0, res.output
    return folder


def test_personalise_writes_version_1(files):
    twin = load_twin(files / "twin.zip")
    assert twin.version == 1 and twin.patient == "p01" and twin.belief.parameter_ids == ESTIMATE
    assert twin.reference_time == EARLY


def test_assimilate_forecast_and_show(files):
    res = _invoke(
        "assimilate", str(files / "twin.zip"), str(files / "later.csv"), "--out", str(files / "v2.zip")
    )
    assert res.exit_code == 0, res.output
    twin = load_twin(files / "v2.zip")
    assert twin.version == 1 + 6 and len(twin.history) == 7  # one update per measurement day
    assert load_twin(files / "twin.zip").version == 1  # the input file is kept

    res = _invoke("forecast", str(files / "v2.zip"), "--horizon", "4", "--out", str(files / "f.csv"))
    assert res.exit_code == 0, res.output
    frame = pd.read_csv(files / "f.csv")
    assert (
        set(frame["kind"]) == {"predictive", "model", "state"}
        and frame["time"].max() == twin.reference_time + 4
    )
    # the command function itself (the app's ``twin forecast`` may be a wrapper that also takes stored ids)
    forecast_cmd(files / "v2.zip", horizon=4.0, out=files / "g.csv", treatment=["antiviral(efficacy=0.99)"],
                 arg=[f"start={twin.reference_time}"])  # fmt: skip
    treated = pd.read_csv(files / "g.csv")
    pick = lambda f: f[(f.quantity == "viral_load") & (f.kind == "model")]["q50"].to_numpy()  # noqa: E731
    assert np.all(pick(treated) <= pick(frame) + 1e-9) and pick(treated)[1] < pick(frame)[1] - 0.3

    res = _invoke("show", str(files / "v2.zip"))
    assert res.exit_code == 0, res.output
    assert "history" in res.output and ("reweighted" in res.output or "resample-move" in res.output)
    assert "p01" in res.output


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("forecast", "nope.zip"), InputError, "not found"),
        (("personalise", "nope.csv", "--template", "viral_tiv", "--patient", "x", "--out", "t.zip"), InputError, "file not found"),
        (("personalise", "{early}", "--template", "viral_tiv", "--patient", "x", "--out", "t.zip", "--method", "mcmc"), InputError, "--method 'mcmc'"),
        (("assimilate", "{twin}", "{early}"), InputError, "before the twin's reference time"),
    ],
)  # fmt: skip
def test_refusals_raise_our_errors(files, args, error, message):
    args = [a.format(twin=files / "twin.zip", early=files / "early.csv") for a in args]
    res = _invoke(*args)
    assert res.exit_code != 0
    assert isinstance(res.exception, error) and message in str(res.exception)


def test_treatment_refusals(files):
    with pytest.raises(InputError, match="--arg needs a --treatment"):
        forecast_cmd(files / "twin.zip", horizon=2.0, out=None, treatment=None, arg=["start=3"])
    with pytest.raises(InputError, match="expected ID=VALUE"):
        forecast_cmd(files / "twin.zip", horizon=2.0, out=None, treatment=["antiviral(start)"], arg=None)
    with pytest.raises(InputError, match="expected NAME or NAME"):
        forecast_cmd(files / "twin.zip", horizon=2.0, out=None, treatment=["anti viral"], arg=None)


def test_unknown_template_is_named(files):
    res = _invoke(
        "personalise",
        str(files / "early.csv"),
        "--template",
        "nope",
        "--patient",
        "x",
        "--out",
        str(files / "x.zip"),
    )
    assert isinstance(res.exception, UnknownIdError) and "unknown template 'nope'" in str(res.exception)
