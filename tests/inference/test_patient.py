"""A patient's problem from a template and measurements (real data: Ke et al. 2022, shipped)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from immunetwin.datasets import ke2022_nasal, viral_load_table
from immunetwin.errors import ProblemError, UnknownIdError
from immunetwin.inference.patient import patient_problem
from immunetwin.templates import load_template


@pytest.fixture(scope="module")
def tiv():
    return load_template("viral_tiv")


def test_ke2022_table_is_the_published_series_with_negatives_censored():
    raw = ke2022_nasal()
    assert raw["participant"].nunique() == 60
    table = viral_load_table(raw, "ke01")
    first = raw[raw.participant == "ke01"].iloc[0]
    assert table["time"].iloc[0] == first["days_since_onset"] + 5.0
    assert table["value"].iloc[0] == pytest.approx(math.log10(first["copies_per_ml"]))
    negatives = raw[(raw.participant == "ke01") & (raw.detected == 0)]
    assert table["censored"].sum() == len(negatives)
    assert np.all(table.loc[table.censored, "value"] == 2.0)
    with pytest.raises(UnknownIdError, match="participant 'ke99'"):
        viral_load_table(raw, "ke99")


def test_problem_takes_priors_bounds_and_censoring_from_the_template():
    tpl = load_template("viral_immune")
    data = pd.DataFrame({"observable": "viral_load", "time": [1.0, 2.0, 3.0], "value": [3.0, 5.0, 1.0]})
    prob = patient_problem(tpl, data, estimate=["beta", "delta"])
    assert prob.free_ids == ("beta", "delta")
    beta = tpl.metadata.parameters["beta"]
    assert (prob.free[0].lower, prob.free[0].upper) == tuple(beta.range)
    assert prob.free[0].scale == "log10" and prob.free[0].prior.kind == "logNormal"
    lod = tpl.metadata.observables["viral_load"].lloq  # 2.0 log10 copies/mL
    assert list(prob.measurements.censoring) == ["", "", "left"]
    assert prob.measurements.value[2] == lod


@pytest.mark.parametrize(
    ("frame", "pattern"),
    [
        (pd.DataFrame({"observable": ["viral_load"], "time": [1.0]}), "missing column 'value'"),
        (
            pd.DataFrame({"observable": ["il6"], "time": [1.0], "value": [1.0]}),
            r"row 1, column 'observable'.*unknown observable 'il6'",
        ),
        (
            pd.DataFrame({"observable": ["viral_load"], "time": [1.0], "value": [float("nan")]}),
            r"row 1, column 'value'",
        ),
        (
            pd.DataFrame({"observable": ["viral_load"], "time": [-2.0], "value": [3.0]}),
            r"row 1, column 'time'",
        ),
    ],
    ids=["missing-column", "unknown-observable", "nan", "negative-time"],
)
def test_bad_patient_data_is_refused_naming_row_and_column(tiv, frame, pattern):
    with pytest.raises(ProblemError, match=pattern):
        patient_problem(tiv, frame)


def test_unknown_parameter_to_estimate_is_refused(tiv):
    data = pd.DataFrame({"observable": "viral_load", "time": [1.0], "value": [3.0]})
    with pytest.raises(UnknownIdError, match="nope"):
        patient_problem(tiv, data, estimate=["nope"])
