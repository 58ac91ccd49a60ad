"""The HTML report of a twin: every section present, checks run and passed, input escaped, written
atomically; and the `immunetwin report` command on a saved twin.

The twin is the viral_tiv template (Baccam et al. 2006, J Virol 80:7590) personalised on noise-free
synthetic titres of its nominal patient, then updated with one more measurement.
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import immunetwin as it
from immunetwin.cli import app
from immunetwin.decisions import ExpectedUtility, compare_scenarios, decide, scenario
from immunetwin.errors import InputError
from immunetwin.templates import Template, load_template
from immunetwin.twin import Twin, TwinSettings, assimilate, personalise, save_twin
from immunetwin.web import build_report, write_report

TIMES = np.arange(0.5, 4.01, 0.5)


@pytest.fixture(scope="module")
def tiv() -> Template:
    return load_template("viral_tiv")


@pytest.fixture(scope="module")
def twin(tiv: Template) -> Twin:
    traj = it.simulate(tiv.model, TIMES)
    data = pd.DataFrame({"observable": "viral_load", "time": TIMES, "value": tiv.observe(traj)["viral_load"]})
    first = personalise(tiv, data.iloc[:-1], patient="<script>alert(1)</script>", key=jax.random.PRNGKey(0),
                        estimate=("beta", "delta"), draws=200, settings=TwinSettings())  # fmt: skip
    return assimilate(first, data.iloc[[-1]], key=jax.random.PRNGKey(1))


@pytest.fixture(scope="module")
def decided(tiv: Template, twin: Twin):
    now = twin.reference_time
    specs = ["none", f"antiviral(start={now:g})"]
    comparison = compare_scenarios(tiv, twin.belief.values, [scenario(tiv, s) for s in specs], horizon=now + 12.0,
                                   log_weights=twin.belief.log_weights)  # fmt: skip
    return comparison, decide(
        comparison, ExpectedUtility({"time_to_clearance": 1.0}, treatment_costs={"antiviral": 0.1})
    )


@pytest.fixture(scope="module")
def report(twin: Twin, decided):
    comparison, decision = decided
    return build_report(twin, horizon=6.0, comparison=comparison, decision=decision,
                        decision_note="Taken by version 1 <before the last swab>")  # fmt: skip


def test_every_section_and_figure_is_there_with_plotly_inlined_once(report, twin: Twin) -> None:
    page = report.html
    for anchor in (
        "data",
        "states",
        "scenarios",
        "decision",
        "alerts",
        "diagnostics",
        "credibility",
        "provenance",
    ):
        assert f'id="{anchor}"' in page, anchor
    for heading in ("Context of use", "Verification checks", "Validation metrics", "Uncertainty"):
        assert heading in page, heading
    assert len(re.findall(r"<script>/\*\*\n\* plotly.js v", page)) == 1  # one inline copy of plotly.js
    assert page.count('class="plotly-graph-div"') == 4  # viral_load, states, parameters, scenarios
    assert twin.provenance in page and twin.history[0].provenance[:16] in page
    assert str(report.decision.action) in page
    assert "Taken by version 1 &lt;before the last swab&gt;" in page  # shown, and escaped


def test_the_patient_id_is_escaped(report) -> None:
    assert "<script>alert(1)</script>" not in report.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report.html


def test_verification_checks_ran_and_pass_on_a_well_posed_twin(report, twin: Twin) -> None:
    names = [c.name for c in report.checks]
    assert names == ["provenance chain", "solver tolerance (algorithmic uncertainty)", "particle solves",
                     "effective sample size", "non-negative states"]  # fmt: skip
    assert all(c.passed for c in report.checks), report.checks
    tolerance = report.checks[1].detail
    assert float(re.search(r"largest difference (\S+) noise sd", tolerance).group(1)) < 0.1
    assert report.validation["scored measurements"] == len(twin.scores) == 1
    assert report.forecast.twin_version == twin.version == 2


def test_forecast_bands_start_where_the_data_stop(report, twin: Twin) -> None:
    fc = report.forecast
    assert fc.times[0] == pytest.approx(twin.reference_time)
    q = fc.quantiles("viral_load")
    assert np.all(np.diff(q, axis=1) >= -1e-9)  # quantiles ordered at every time


def test_write_is_atomic_and_readable(report, tmp_path) -> None:
    path = write_report(report, tmp_path / "sub" / "r.html")
    assert path.read_text(encoding="utf-8") == report.html
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["r.html"]  # no temporary file left


def test_bad_horizon_is_refused(twin: Twin) -> None:
    with pytest.raises(InputError, match="horizon"):
        build_report(twin, horizon=0.0)


def test_cli_report_of_a_saved_twin_decides_and_writes(twin: Twin, tmp_path) -> None:
    saved = tmp_path / "twin.zip"
    save_twin(twin, saved)
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(saved), "--out", str(out), "--horizon", "5",
                                      "--weights", "time_to_clearance=1", "--costs", "antiviral=0.1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "decision:" in result.output and out.exists()
    assert 'id="credibility"' in out.read_text(encoding="utf-8")


def test_cli_report_refuses_a_bad_weight_and_a_missing_file(twin: Twin, tmp_path) -> None:
    saved = tmp_path / "twin.zip"
    save_twin(twin, saved)
    bad = CliRunner().invoke(app, ["report", str(saved), "--weights", "severe"])
    assert bad.exit_code != 0 and "NAME=NUMBER" in str(bad.exception)
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nope.zip")])
    assert missing.exit_code != 0
