"""Bad input to any verb is refused with one clear error naming the row; the twin is untouched."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

from immunetwin.errors import InputError, UnknownIdError
from immunetwin.templates import load_template
from immunetwin.twin import assimilate, forecast, personalise, read_observations

KEY = jax.random.PRNGKey(0)


def _table(**columns) -> pd.DataFrame:
    base = {"observable": ["viral_load", "viral_load"], "time": [1.0, 2.0], "value": [3.0, 4.0]}
    return pd.DataFrame(base | columns)


@pytest.fixture(scope="module")
def immune():
    return load_template("viral_immune")


def test_good_rows_are_sorted_censored_and_frozen(immune):
    obs = read_observations(immune, pd.DataFrame({
        "observable": ["il6", "viral_load", "viral_load"], "time": [3.0, 1.0, 2.0], "value": [20.0, 5.0, 1.5],
    }))  # fmt: skip
    assert list(obs.time) == [1.0, 2.0, 3.0]
    assert list(obs.observable) == ["viral_load", "viral_load", "il6"]
    assert list(obs.censored) == [False, True, False]  # 1.5 is below the limit of detection (2)
    assert obs.value[1] == 2.0
    assert obs.to_frame().columns.tolist() == ["observable", "time", "value", "censored"]


@pytest.mark.parametrize(
    ("unit", "value", "expected"),
    [
        ("log10 copy/mL", 5.0, 5.0),
        ("log10 copy/L", 5.0, 2.0),  # 1e5 per litre = 1e2 per mL
        ("copy/mL", 1e6, 6.0),  # linear -> the observable's log10 scale
        ("copies/uL", 10.0, 4.0),
    ],
)
def test_compatible_units_are_converted(immune, unit, value, expected):
    obs = read_observations(immune, pd.DataFrame({"observable": ["viral_load"], "time": [1.0], "value": [value], "unit": [unit]}))  # fmt: skip
    assert obs.value[0] == pytest.approx(expected)


def test_linear_units_convert(immune):
    obs = read_observations(immune, pd.DataFrame({"observable": ["crp", "lymphocytes"], "time": [1.0, 2.0],
                                                  "value": [2.0, 1500.0], "unit": ["mg/dL", "cell/uL"]}))  # fmt: skip
    assert obs.value[0] == pytest.approx(20.0)  # mg/L
    assert obs.value[1] == pytest.approx(1.5)  # cell/nL (10^9/L)


@pytest.mark.parametrize(
    ("table", "error", "message"),
    [
        (pd.DataFrame({"observable": ["viral_load", "ferritin"], "time": [1.0, 2.0], "value": [3.0, 4.0]}),
         UnknownIdError, "unknown observable in measurement row 2 'ferritin'"),
        (_table(value=[3.0, np.nan]), InputError, "measurement row 2: value is nan"),
        (_table(time=[1.0, np.inf]), InputError, "measurement row 2: time is inf"),
        (_table(time=[-1.0, 2.0]), InputError, "measurement row 1: time -1 is negative"),
        (_table(value=["3", "high"]), InputError, "measurement row 2: value 'high' is not a number"),
        (_table(unit=["log10 copy/mL", "mg/L"]), InputError, "row 2: unit 'mg/L' does not match observable 'viral_load'"),
        (_table(unit=["log10 copy/mL", "parsec of fog"]), InputError, "row 2: unit 'parsec of fog' is not a unit"),
        (_table(unit=["copy/mL", "copy/mL"], value=[1e3, 0.0]), InputError, "row 2: viral_load = 0 copy/mL cannot be put on the log10 scale"),
        (pd.DataFrame({"observable": ["il6"], "time": [1.0], "value": [-3.0]}), InputError, "row 1: il6 = -3 pg/mL is impossible"),
        (pd.DataFrame({"observable": ["lymphocytes"], "time": [1.0], "value": [1500.0], "unit": ["1/uL"]}), InputError, "does not match observable 'lymphocytes'"),
        (_table(censored=["yes", "no"]), InputError, "row 1: censored 'yes' is not true/false"),
        (pd.DataFrame({"time": [1.0], "value": [2.0]}), InputError, "missing column 'observable'"),
        (pd.DataFrame({"observable": [], "time": [], "value": []}), InputError, "no rows"),
    ],
)  # fmt: skip
def test_bad_rows_are_refused_naming_the_row(immune, table, error, message):
    with pytest.raises(error) as info:
        read_observations(immune, table)
    assert message in str(info.value)


def test_unknown_template_and_parameter(data):
    with pytest.raises(UnknownIdError, match=r"unknown template .viral_nope.*viral_tiv"):
        personalise("viral_nope", data, patient="x", key=KEY)
    with pytest.raises(UnknownIdError, match="gamma"):
        personalise("viral_tiv", data, patient="x", key=KEY, estimate=["gamma"])
    with pytest.raises(InputError, match="draws must be at least 2"):
        personalise("viral_tiv", data, patient="x", key=KEY, draws=1)
    with pytest.raises(InputError, match="reference_time 1 is before the last measurement"):
        personalise("viral_tiv", data, patient="x", key=KEY, reference_time=1.0)


@pytest.mark.parametrize(
    ("rows", "error", "message"),
    [
        ({"observable": ["viral_load"], "time": [1.0], "value": [3.0]}, InputError, "before the twin's reference time 6"),
        ({"observable": ["viral_load", "bogus"], "time": [7.0, 7.0], "value": [3.0, 1.0]}, UnknownIdError, "row 2"),
        ({"observable": ["viral_load"], "time": [7.0], "value": [np.nan]}, InputError, "row 1: value is nan"),
        ({"observable": ["viral_load"], "time": [7.0], "value": [3.0], "unit": ["mg/L"]}, InputError, "does not match"),
    ],
)  # fmt: skip
def test_assimilate_refuses_bad_rows_and_leaves_the_twin_untouched(sequential_twin, rows, error, message):
    before = [(t.provenance, t.version, len(t.observations)) for t in sequential_twin.history]
    with pytest.raises(error, match=message):
        assimilate(sequential_twin, pd.DataFrame(rows), key=KEY)
    assert [(t.provenance, t.version, len(t.observations)) for t in sequential_twin.history] == before
    assert sequential_twin.verify()


def test_forecast_refuses_bad_arguments(early_twin):
    for kwargs, message in [
        ({"horizon": 0.0}, "horizon must be a positive"),
        ({"horizon": 5.0, "levels": (0.5, 0.25)}, "levels must increase"),
        ({"horizon": 5.0, "levels": (0.0, 0.5)}, "levels must increase"),
        ({"times": [1.0, 4.0]}, "before the twin's reference time"),
        ({"times": [4.0, 3.5]}, "strictly increasing"),
    ]:
        with pytest.raises(InputError, match=message):
            forecast(early_twin, **kwargs)
    with pytest.raises(InputError, match="unknown forecast kind"):
        forecast(early_twin, 2.0).quantiles("viral_load", "posterior")
    with pytest.raises(InputError, match="needs a Twin"):
        assimilate("twin.zip", pd.DataFrame(), key=KEY)  # type: ignore[arg-type]
