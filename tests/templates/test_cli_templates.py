"""``immunetwin templates`` commands, run through typer's CliRunner on the ``tiny`` fixture template.

The fixture (conftest.py) is the target-cell-limited model of Baccam et al. 2006 (J Virol 80:7590,
doi:10.1128/JVI.01623-05); templates are found through ``IMMUNETWIN_TEMPLATES_PATH``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from immunetwin.cli.templates import app, search_path
from immunetwin.errors import InputError, TemplateError
from immunetwin.templates import builtin_root


@pytest.fixture
def run(tiny_root: Path):
    runner = CliRunner()

    def invoke(*args: str):
        env = {"IMMUNETWIN_TEMPLATES_PATH": str(tiny_root), "COLUMNS": "200"}
        return runner.invoke(app, list(args), env=env)

    return invoke


def test_search_path_reads_the_environment_at_call_time(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert search_path({}) == (builtin_root(),)
    assert search_path({"IMMUNETWIN_TEMPLATES_PATH": f"{a}{os.pathsep}{os.pathsep}{b}"}) == (
        a,
        b,
        builtin_root(),
    )


def test_list_shows_the_fixture(run) -> None:
    result = run("list")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if " tiny " in x)
    assert "Tiny target-cell-limited infection" in line
    assert " 4 " in line and " 7 " in line  # 4 states, 7 parameters


def test_list_marks_a_broken_template_without_failing(run, tiny_root: Path) -> None:
    broken = tiny_root / "broken"
    broken.mkdir()
    (broken / "template.yaml").write_text("name: broken\n")
    result = run("list")
    assert result.exit_code == 0, result.output
    assert "invalid" in result.output and "tiny" in result.output


def test_show_prints_what_a_modeller_needs(run) -> None:
    result = run("show", "tiny")
    assert result.exit_code == 0, result.output
    out = result.output
    expected = (
        "Purpose.", "uninfected target cells", "mL/(TCID50*day)", "baccam2006, Table 2",
        "lognormal(median=2.7e-05, sigma=1)", "log10 TCID50/mL", "antiviral", "eps_av = efficacy",
        "bolus dose into V", "time_below", "doi:10.1128/JVI.01623-05", "No immune response.",
    )  # fmt: skip
    for text in expected:
        assert text in out, text


def test_show_unknown_template_raises_for_the_main_cli(run) -> None:
    result = run("show", "nope")
    assert result.exit_code != 0
    assert isinstance(result.exception, TemplateError)
    assert "unknown template 'nope'" in str(result.exception) and "tiny" in str(result.exception)


@pytest.mark.parametrize(
    ("fmt", "main"), [("sbml", "model.xml"), ("antimony", "model.ant"), ("petab", "problem.yaml")]
)
def test_export(run, tmp_path: Path, fmt: str, main: str) -> None:
    out = tmp_path / fmt
    result = run("export", "tiny", "--format", fmt, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (out / main).is_file()
    if fmt == "petab":
        tables = {"parameters.tsv", "observables.tsv", "conditions.tsv", "measurements.tsv"}
        assert {p.name for p in out.iterdir()} == {"problem.yaml", "model.xml", *tables}


def test_export_rejects_an_unknown_format(run, tmp_path: Path) -> None:
    result = run("export", "tiny", "--format", "csv", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and not (tmp_path / "x").exists()


@pytest.mark.parametrize("suffix", [".svg", ".html"])
def test_map(run, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / "maps" / f"tiny{suffix}"
    result = run("map", "tiny", "--out", str(out))
    assert result.exit_code == 0, result.output
    text = out.read_text()
    svg = text if suffix == ".svg" else text[text.index("<svg") : text.index("</svg>") + 6]
    ids = {g.attrib.get("data-id") for g in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}g")}
    assert {"T", "I", "V", "D"} <= ids
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left behind


def test_map_needs_svg_or_html(run, tmp_path: Path) -> None:
    result = run("map", "tiny", "--out", str(tmp_path / "tiny.png"))
    assert isinstance(result.exception, InputError)
    assert not (tmp_path / "tiny.png").exists()
