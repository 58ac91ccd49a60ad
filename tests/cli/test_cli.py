"""The `immunetwin` command line through its real entry point: outputs, and one error line for bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from immunetwin.cli import main

MODEL = """
model growth
  compartment c = 1
  species X in c = 1
  J1: -> X; r*X*(1 - X/K)
  r = 1; K = 10
end
"""


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["immunetwin", *args])
    monkeypatch.setenv("IMMUNETWIN_CACHE", "off")
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "growth.ant"
    path.write_text(MODEL)
    return path


def test_help_explains_the_tool(monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "--help")
    assert code == 0
    assert "simulate" in out and "templates" in out and "digital twins" in out


def test_simulate_with_the_native_backend(monkeypatch, capsys, model_file, tmp_path):
    csv = tmp_path / "native.csv"
    code, _, err = run(
        monkeypatch, capsys, "simulate", str(model_file), "--days", "10", "--points", "11", "--set", "r=2",
        "--backend", "native", "--out", str(csv),
    )  # fmt: skip
    assert code == 0, err
    frame = pd.read_csv(csv)
    assert frame["X"].iloc[2] == pytest.approx(10 / (1 + 9 * 2.718281828459045**-4), rel=1e-5)
    code, _, err = run(monkeypatch, capsys, "simulate", str(model_file), "--backend", "cuda")
    assert code != 0 and "unknown backend 'cuda'; choose one of xla, native" in err
    assert "Traceback" not in err


def test_simulate_writes_csv_and_html(monkeypatch, capsys, model_file, tmp_path):
    csv, html = tmp_path / "traj.csv", tmp_path / "traj.html"
    code, _, err = run(
        monkeypatch,
        capsys,
        "simulate",
        str(model_file),
        "--days",
        "10",
        "--points",
        "11",
        "--set",
        "r=2",
        "--out",
        str(csv),
        "--plot",
        str(html),
    )
    assert code == 0, err
    frame = pd.read_csv(csv)
    assert list(frame.columns) == ["time", "X"]
    assert frame["time"].tolist() == pytest.approx(list(range(11)))
    # logistic growth with r = 2: X(t) = K / (1 + (K/X0 - 1) exp(-r t))
    assert frame["X"].iloc[2] == pytest.approx(10 / (1 + 9 * 2.718281828459045**-4), rel=1e-5)
    page = html.read_text()
    assert "<html>" in page and "plotly" in page.lower() and '"name":"X"' in page.replace(" ", "")


def test_cohort_from_csv_with_progress(monkeypatch, capsys, model_file, tmp_path):
    cohort = tmp_path / "cohort.csv"
    cohort.write_text("r,K\n1,10\n2,20\n0.5,5\n")
    out = tmp_path / "cohort_traj.csv"
    code, _, err = run(
        monkeypatch,
        capsys,
        "simulate",
        str(model_file),
        "--days",
        "5",
        "--cohort",
        str(cohort),
        "--out",
        str(out),
    )
    assert code == 0, err
    frame = pd.read_csv(out)
    assert sorted(frame["patient"].unique()) == [0, 1, 2]
    assert (frame["status"] == "success").all()
    final = frame[frame["time"] == 5.0].set_index("patient")["X"]
    assert final[1] > final[0] > final[2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "r=abc"], "--set r=abc: 'abc' is not a number"),
        (["--set", "nope=1"], "unknown parameter 'nope'"),
        (["--set", "r"], "expected ID=VALUE"),
        (["--days", "-1"], "--days -1.0: must be a positive"),
        (["--dose", "X:1"], "expected TARGET:TIME:AMOUNT"),
    ],
)
def test_bad_options_give_one_error_line(monkeypatch, capsys, model_file, args, message):
    code, _, err = run(monkeypatch, capsys, "simulate", str(model_file), *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("<sbml><model id='m'></sbml>", "line"),
        ("model broken\n  X' = = 2\nend\n", "broken.ant"),
    ],
)
def test_bad_model_files_give_one_error_line(monkeypatch, capsys, tmp_path, content, message):
    suffix = ".xml" if content.startswith("<") else ".ant"
    path = tmp_path / f"broken{suffix}"
    path.write_text(content)
    code, _, err = run(monkeypatch, capsys, "simulate", str(path))
    assert code == 2
    assert message in err
    assert "Traceback" not in err


ALGEBRAIC_SBML = """<?xml version="1.0" encoding="UTF-8"?>
<sbml xmlns="http://www.sbml.org/sbml/level3/version2/core" level="3" version="2">
  <model id="m">
    <listOfParameters><parameter id="k" value="1" constant="false"/></listOfParameters>
    <listOfRules><algebraicRule metaid="alg1"><math xmlns="http://www.w3.org/1998/Math/MathML">
      <apply><minus/><ci>k</ci><cn>1</cn></apply></math></algebraicRule></listOfRules>
  </model>
</sbml>"""


def test_unsupported_construct_is_one_error_line(monkeypatch, capsys, tmp_path):
    path = tmp_path / "algebraic.xml"
    path.write_text(ALGEBRAIC_SBML)
    code, _, err = run(monkeypatch, capsys, "simulate", str(path))
    assert code == 2
    assert "unsupported SBML construct 'algebraic rule' in element 'alg1'" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_model_file(monkeypatch, capsys, tmp_path):
    code, _, err = run(monkeypatch, capsys, "simulate", str(tmp_path / "nothing.xml"))
    assert code == 2
    assert "no such model file" in err
