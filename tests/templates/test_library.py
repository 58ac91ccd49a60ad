"""Template library: loading, metadata validation, schedules, outcomes, PEtab/SBML export, maps.

Most tests use the ``tiny`` fixture template (see conftest.py: the target-cell-limited model of
Baccam et al. 2006, J Virol 80:7590, doi:10.1128/JVI.01623-05). The last tests run over every real
template folder present and check its metadata, its PEtab export (linted by ``petab.v1``) and its map.

Expected numbers are analytic (outcome metrics of closed-form curves), published (LOINC codes and
their mod-10 check digits, as listed by LOINC), or read back from the files written.
"""

from __future__ import annotations

import dataclasses
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libsbml
import numpy as np
import pandas as pd
import pytest
import sympy

from immunetwin.errors import InputError, MalformedModelError, TemplateError
from immunetwin.spec.schedule import Bolus, Input
from immunetwin.templates import (
    export_template,
    list_templates,
    load_template,
    parse_metadata,
    template_map,
)
from immunetwin.templates.metadata import loinc_is_valid, parse_expression, parse_unit

SVG = "{http://www.w3.org/2000/svg}"
pytestmark = pytest.mark.filterwarnings("ignore::Warning:petab")  # petab 0.8 vs pandas 3 deprecations

# ------------------------------------------------------------------------------------------ loading


def test_list_templates_finds_only_folders_with_metadata(tiny_root: Path) -> None:
    (tiny_root / "not_a_template").mkdir()
    (tiny_root / "_private").mkdir()
    (tiny_root / "_private" / "template.yaml").write_text("name: x\n")
    assert list_templates(root=tiny_root) == ("tiny",)


def test_unknown_template_names_the_known_ones(tiny_root: Path) -> None:
    with pytest.raises(TemplateError, match=r"unknown template 'nope' \(known: tiny\)"):
        load_template("nope", root=tiny_root)
    with pytest.raises(TemplateError, match="not a template name"):
        load_template("../tiny", root=tiny_root)


def test_invalid_yaml_names_the_file_and_line(tiny_root: Path) -> None:
    path = tiny_root / "tiny" / "template.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("title:", "title: [", 1), encoding="utf-8")
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("title:"))
    with pytest.raises(TemplateError, match=rf"tiny/template.yaml: line {line + 1} invalid YAML"):
        load_template("tiny", root=tiny_root)


def test_load_reads_metadata_antimony_and_sbml(tiny_root: Path, tiny_antimony: str) -> None:
    tpl = load_template("tiny", root=tiny_root)
    assert tpl.name == "tiny" and tpl.path == tiny_root / "tiny"
    assert tpl.antimony == tiny_antimony
    assert tpl.metadata.parameters["beta"].value == 2.7e-5
    assert tpl.metadata.parameters["beta"].prior.parameters == {"median": 2.7e-5, "sigma": 1.0}
    model = libsbml.readSBMLFromString(tpl.sbml).getModel()
    assert model.getId() == "tiny"
    assert model.getParameter("beta").getValue() == 2.7e-5
    assert tpl.structure.states == ("T", "I", "V", "D")
    with pytest.raises(dataclasses.FrozenInstanceError):
        tpl.name = "other"  # type: ignore[misc]


def test_first_root_wins(tiny_root: Path, make_template: Callable[..., Path], tiny_metadata: dict) -> None:
    tiny_metadata["title"] = "shadowing copy"
    other = make_template(tiny_metadata)
    assert load_template("tiny", root=[other, tiny_root]).metadata.title == "shadowing copy"
    assert list_templates(root=[other, tiny_root]) == ("tiny",)


# ------------------------------------------------------------------------------------- validation


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[int(key)] if isinstance(doc, list) else doc[key]
        if value is _DELETE:
            del doc[last]
        else:
            doc[last] = value

    return mutate


_DELETE = object()

INVALID = [
    ("parameters.beta.range", [3e-5, 1e-3], r"tiny/template.yaml: parameters\.beta\.range: low 3e-05 above"),
    ("parameters.beta.value", 3e-5, r"parameters\.beta\.value: 3e-05 but model\.ant says 2\.7e-05"),
    ("parameters.r_d", _DELETE, r"parameters: parameter 'r_d' of model\.ant is not described"),
    ("parameters.extra", {"value": 1.0, "unit": "1/day", "source": "assumed", "range": [0.5, 2.0],
                          "prior": {"distribution": "normal", "mean": 1.0, "sd": 0.1}, "estimate": False},
     r"parameters\.extra: not a constant parameter of model\.ant"),
    ("states.D", _DELETE, r"states: state 'D' of model\.ant is not described"),
    ("states.W", {"description": "w", "unit": "cell"}, r"states\.W: not a state"),
    ("states.T.unit", "blargh", r"states\.T\.unit: 'blargh' is not a unit"),
    ("parameters.beta.prior.median", 0.0, r"parameters\.beta\.prior: median must be > 0"),
    ("parameters.beta.prior.sigma", -1.0, r"parameters\.beta\.prior: sigma must be > 0"),
    ("parameters.beta.prior", {"distribution": "lognormal", "median": 1.0}, r"prior: lognormal prior needs"),
    ("parameters.beta.prior", {"distribution": "gamma", "mean": 1.0}, r"unknown prior 'gamma'"),
    ("parameters.eps_av.prior", {"distribution": "uniform", "lower": 0.5, "upper": 1.0},
     r"parameters\.eps_av\.prior: value 0 is outside the support"),
    ("parameters.beta.sorce", "x", r"parameters\.beta: unknown key 'sorce'"),
    ("parameters.beta.estimate", "yes", r"parameters\.beta\.estimate: expected true or false"),
    ("parameters.beta.source", "smith2019, Table 1", r"parameters\.beta\.source: cites 'smith2019'"),
    ("title", _DELETE, r"tiny/template.yaml: <top>: missing key 'title'"),
    ("version", 1.0, r"version: expected a quoted version"),
    ("time_unit", "hour", r"time_unit: templates are in days"),
    ("name", "other", r"name: 'other' differs from the folder name 'tiny'"),
    ("observables.viral_load.loinc", "94309-3", r"observables\.viral_load\.loinc: '94309-3' is not a LOINC"),
    ("observables.viral_load.noise.sigma", 0.0, r"noise\.sigma: must be > 0"),
    ("observables.viral_load.formula", "log10(W)", r"observables\.viral_load\.formula: 'W' is not an id"),
    ("observables.viral_load.formula", "foo(V)", r"observables\.viral_load: .*unknown function"),
    ("outcomes.severe.threshold", _DELETE, r"outcomes\.severe: kind 'exceeds' needs a threshold"),
    ("outcomes.severe.kind", "median", r"outcomes\.severe\.kind: 'median' is not one of"),
    ("outcomes.severe.better", "sideways", r"outcomes\.severe\.better: 'sideways' is not 'lower' or 'higher'"),
    ("interventions.antiviral.inputs.0.target", "V", r"antiviral\.inputs\.0\.target: 'V' is not a constant"),
    ("interventions.antiviral.inputs.0.value", "strength", r"inputs\.0\.value: 'strength' is not an arg"),
    ("interventions.rechallenge.doses.0.target", "beta", r"doses\.0\.target: 'beta' is not a state"),
    ("interventions.rechallenge.doses.0.times", {"start": 0.0, "every": 0.0, "count": 3},
     r"doses\.0\.times\.every: must be > 0"),
    ("limits", [], r"limits: expected a non-empty list"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value", "message"),
    INVALID,
    ids=[f"{p}={'<deleted>' if v is _DELETE else repr(v)}"[:60] for p, v, _ in INVALID],
)
def test_invalid_metadata_names_file_and_key(
    make_template: Callable[..., Path], tiny_metadata: dict, path: str, value: Any, message: str
) -> None:
    _set(path, value)(tiny_metadata)
    root = make_template(tiny_metadata)
    with pytest.raises(TemplateError, match=message):
        load_template("tiny", root=root)


def test_outcome_direction_defaults_to_lower_and_reads_higher(tiny_metadata: dict) -> None:
    tiny_metadata["outcomes"]["severe"]["better"] = "higher"
    outcomes = parse_metadata(tiny_metadata, "x").outcomes
    assert outcomes["severe"].better == "higher"
    assert all(o.better == "lower" for k, o in outcomes.items() if k != "severe")
    assert load_template("viral_immune").metadata.outcomes["lymphocyte_nadir"].better == "higher"


def test_parse_metadata_message_format(tiny_metadata: dict) -> None:
    tiny_metadata["parameters"]["beta"] |= {"value": 2, "range": [3, 4]}
    with pytest.raises(TemplateError) as err:
        parse_metadata(tiny_metadata, "viral_tiv/template.yaml")
    assert str(err.value) == "viral_tiv/template.yaml: parameters.beta.range: low 3 above value 2"


def test_numbers_written_without_a_dot_are_read(tiny_metadata: dict) -> None:
    tiny_metadata["parameters"]["k_d"]["value"] = "1e-8"  # how PyYAML reads an unquoted 1e-8
    assert parse_metadata(tiny_metadata, "x").parameters["k_d"].value == 1e-8


@pytest.mark.parametrize(
    ("old", "new", "error", "message"),
    [
        ("model tiny()", "model small()", TemplateError, "model is named 'small'"),
        ("end\n", "  at (time > 2): V = 0;\nend\n", TemplateError, "event"),
        ("T -> I;", "T -> -> I;", MalformedModelError, r"tiny/model\.ant"),
        ("p*I - c*V", "p*delay(I, 0.5) - c*V", TemplateError, r"'delay' in the math of 'V'"),
    ],
    ids=["model-name", "event", "syntax", "delay"],
)
def test_model_text_is_checked(
    make_template: Callable[..., Path],
    tiny_metadata: dict,
    tiny_antimony: str,
    old: str,
    new: str,
    error: type,
    message: str,
) -> None:
    root = make_template(tiny_metadata, tiny_antimony.replace(old, new))
    with pytest.raises(error, match=message):
        load_template("tiny", root=root)


@pytest.mark.parametrize(
    "text", ["log10 TCID50/mL", "log10(copies/mL)", "cells/uL", "pg/mL", "dimensionless", "1/day", "IU/mL"]
)
def test_units_parse(text: str) -> None:
    parse_unit(text)


def test_counting_units_are_distinct_dimensions() -> None:
    assert parse_unit("cell/mL").dimensionality != parse_unit("TCID50/mL").dimensionality
    with pytest.raises(TemplateError, match="not a unit"):
        parse_unit("log10 blargh")


def test_expressions_treat_sympy_names_as_model_ids() -> None:
    expr = parse_expression("I*E + S^2 + beta + max(V, 1)")
    names = {s.name for s in expr.free_symbols}
    assert names == {"I", "E", "S", "beta", "V"}
    assert sympy.I not in expr.atoms() and sympy.E not in expr.atoms()
    for bad in ("__import__('os')", "V.conjugate()", "lambda x: x", ""):
        with pytest.raises(TemplateError):
            parse_expression(bad)


@pytest.mark.parametrize("code", ["94309-2", "26881-3", "1988-5", "731-0"])
def test_published_loinc_codes_have_valid_check_digits(code: str) -> None:
    # SARS-CoV-2 RNA, IL-6, CRP, lymphocytes: codes as published by LOINC
    assert loinc_is_valid(code)
    number, check = code.split("-")
    assert not loinc_is_valid(f"{number}-{(int(check) + 1) % 10}")


# ------------------------------------------------------------------------------------ interventions


def test_intervention_defaults_and_overrides(tiny_root: Path) -> None:
    tpl = load_template("tiny", root=tiny_root)
    assert tpl.intervention("antiviral").inputs == (Input("eps_av", (2.0, 7.0), (0.9, 0.0)),)
    sched = tpl.intervention("antiviral", start=1.0, efficacy=0.5)
    assert sched.inputs == (Input("eps_av", (1.0, 6.0), (0.5, 0.0)),) and sched.doses == ()
    doses = tpl.intervention("rechallenge", dose=2.0).doses
    assert doses == (Bolus("V", 1.0, 2.0), Bolus("V", 3.0, 2.0))


def test_input_window_switches_back_to_the_model_value(
    make_template: Callable, tiny_metadata: dict, tiny_antimony: str
) -> None:
    tiny_metadata["parameters"]["eps_av"]["value"] = 0.1
    root = make_template(tiny_metadata, tiny_antimony.replace("eps_av = 0;", "eps_av = 0.1;"))
    sched = load_template("tiny", root=root).intervention("antiviral")
    assert sched.inputs[0].values == (0.9, 0.1)


def test_dose_series(make_template: Callable, tiny_metadata: dict) -> None:
    spec = tiny_metadata["interventions"]["rechallenge"]
    spec["arguments"]["n"] = 3
    spec["doses"][0]["times"] = {"start": "first", "every": 0.5, "count": "n"}
    tpl = load_template("tiny", root=make_template(tiny_metadata))
    assert [d.time for d in tpl.intervention("rechallenge").doses] == [1.0, 1.5, 2.0]
    assert len(tpl.intervention("rechallenge", n=5).doses) == 5
    with pytest.raises(InputError, match="whole count"):
        tpl.intervention("rechallenge", n=2.5)


def test_intervention_errors_name_what_is_unknown(tiny_root: Path) -> None:
    tpl = load_template("tiny", root=tiny_root)
    with pytest.raises(
        TemplateError, match=r"unknown intervention 'vaccine' \(known: antiviral, rechallenge\)"
    ):
        tpl.intervention("vaccine")
    with pytest.raises(TemplateError, match=r"no argument 'strength' \(known: start, duration, efficacy\)"):
        tpl.intervention("antiviral", strength=1.0)
    with pytest.raises(InputError, match="must be finite"):
        tpl.intervention("antiviral", start=math.nan)
    with pytest.raises(InputError, match="stop"):
        tpl.intervention("antiviral", duration=-1.0)


# ----------------------------------------------------------------------------------------- outcomes


@dataclasses.dataclass(frozen=True)
class FakeTrajectory:
    """Closed-form curves standing in for a simulation: log10 V = a - (t - 3)^2."""

    times: np.ndarray
    columns: dict[str, np.ndarray]
    status: Any = "success"

    def __getitem__(self, ident: str) -> np.ndarray:
        return self.columns[ident]


def _fake(times: np.ndarray, a: float = 5.0, damage_top: float = 0.6) -> FakeTrajectory:
    log_v = a - (times - 3.0) ** 2
    cols = {
        "V": 10.0**log_v,
        "I": 1e3 * np.exp(-((times - 2.0) ** 2)),
        "T": 4e8 * np.exp(-times),
        "damage": damage_top * np.sin(np.pi * times / times[-1]) ** 2,
    }
    return FakeTrajectory(times, cols)


def test_outcomes_match_closed_forms(tiny_root: Path) -> None:
    tpl = load_template("tiny", root=tiny_root)
    times = np.linspace(0.0, 10.0, 10001)
    out = tpl.outcomes(_fake(times))
    assert out["peak_viral_load"] == pytest.approx(5.0, abs=1e-12)
    assert out["time_of_peak"] == pytest.approx(3.0, abs=1e-12)
    # log10 V = 5 - (t-3)^2 crosses 0 at t = 3 + sqrt(5); linear interpolation on a 1e-3 grid: error < 1e-6
    assert out["clearance_time"] == pytest.approx(3.0 + math.sqrt(5.0), abs=1e-6)
    # int 10^(5 - (t-3)^2) dt = 1e5 sqrt(pi / ln 10); tails beyond [0, 10] are < 1e-9 of it
    assert out["virus_auc"] == pytest.approx(1e5 * math.sqrt(math.pi / math.log(10.0)), rel=1e-8)
    assert out["severe"] == 1.0
    assert out["final_targets"] == pytest.approx(4e8 * math.exp(-10.0))
    assert out["lowest_targets"] == pytest.approx(4e8 * math.exp(-10.0))
    assert tpl.outcomes(_fake(times, damage_top=0.4))["severe"] == 0.0
    assert tpl.outcomes(_fake(times, a=50.0))["clearance_time"] == math.inf


def test_outcomes_of_a_cohort_and_of_failed_solves(tiny_root: Path) -> None:
    tpl = load_template("tiny", root=tiny_root)
    times = np.linspace(0.0, 10.0, 2001)
    one, two = _fake(times, a=5.0), _fake(times, a=4.0)
    cohort = FakeTrajectory(times, {k: np.stack([one[k], two[k]]) for k in one.columns},
                            np.array(["success", "max_steps"]))  # fmt: skip
    out = tpl.outcomes(cohort)
    assert out["peak_viral_load"].shape == (2,)
    for key, value in tpl.outcomes(one).items():
        assert out[key][0] == pytest.approx(value)
        assert math.isnan(out[key][1])


def test_observe_evaluates_formulae(tiny_root: Path) -> None:
    tpl = load_template("tiny", root=tiny_root)
    times = np.linspace(0.0, 6.0, 7)
    obs = tpl.observe(_fake(times))
    np.testing.assert_allclose(obs["viral_load"], 5.0 - (times - 3.0) ** 2, atol=1e-12)


def test_outcomes_of_an_engine_simulation(tiny_root: Path) -> None:
    from immunetwin import simulate

    tpl = load_template("tiny", root=tiny_root)
    times = np.linspace(0.0, 12.0, 1201)
    base = simulate(tpl.model, times)
    assert base.status == "success"
    out = tpl.outcomes(base)
    assert out["peak_viral_load"] == pytest.approx(np.max(np.log10(base["V"])))
    sched = tpl.intervention("antiviral", start=0.5, duration=20.0, efficacy=0.99)
    treated = simulate(tpl.model, times, schedule=sched)
    # blocking 99 % of production from day 0.5 on makes R0 = 10.8 * 0.01 < 1: the titre never peaks
    # (qualitative result of the target-cell-limited model, Baccam 2006)
    assert tpl.outcomes(treated)["peak_viral_load"] < out["peak_viral_load"] - 1.0


# ------------------------------------------------------------------------------------------- export


def _lint(problem_yaml: Path) -> bool:
    """True when petab.v1 finds errors."""
    from petab.v1 import Problem
    from petab.v1.lint import lint_problem

    return bool(lint_problem(Problem.from_yaml(problem_yaml)))


def test_export_sbml_and_antimony(tiny_root: Path, tmp_path: Path, tiny_antimony: str) -> None:
    sbml = export_template("tiny", tmp_path / "s", format="sbml", root=tiny_root)
    assert sbml == tmp_path / "s" / "model.xml"
    doc = libsbml.readSBMLFromString(sbml.read_text())
    assert doc.getNumErrors(libsbml.LIBSBML_SEV_ERROR) == 0
    assert doc.getModel().getParameter("delta").getValue() == 4.0
    ant = export_template("tiny", tmp_path / "a", format="antimony", root=tiny_root)
    assert ant.read_text() == tiny_antimony
    with pytest.raises(InputError, match="unknown export format 'csv'"):
        export_template("tiny", tmp_path / "c", format="csv", root=tiny_root)


def test_export_petab_lints_clean_and_carries_metadata(tiny_root: Path, tmp_path: Path) -> None:
    problem = export_template("tiny", tmp_path / "p", format="petab", root=tiny_root)
    assert problem.name == "problem.yaml"
    assert not _lint(problem)
    params = pd.read_csv(problem.parent / "parameters.tsv", sep="\t").set_index("parameterId")
    beta = params.loc["beta"]
    assert (beta.parameterScale, beta.estimate) == ("log10", 1)
    assert (beta.lowerBound, beta.upperBound, beta.nominalValue) == pytest.approx((2.7e-7, 2.7e-3, 2.7e-5))
    assert beta.objectivePriorType == "logNormal"  # PEtab logNormal: mean and sd of ln(x)
    mu, sigma = map(float, beta.objectivePriorParameters.split(";"))
    assert (mu, sigma) == pytest.approx((math.log(2.7e-5), 1.0))
    assert (params.loc["eps_av"].parameterScale, params.loc["eps_av"].estimate) == ("lin", 0)
    obs = pd.read_csv(problem.parent / "observables.tsv", sep="\t").set_index("observableId")
    assert set(obs.index) == {"viral_load", "obs_I"}  # "I" is a model id, so it is renamed
    assert obs.loc["obs_I"].noiseDistribution == "laplace" and obs.loc["viral_load"].noiseFormula == 0.5
    meas = pd.read_csv(problem.parent / "measurements.tsv", sep="\t")
    assert len(meas) == 0 and {"observableId", "simulationConditionId", "measurement", "time"} <= set(meas)


def test_petab_lint_would_catch_a_broken_table(tiny_root: Path, tmp_path: Path) -> None:
    problem = export_template("tiny", tmp_path / "p", format="petab", root=tiny_root)
    table = problem.parent / "observables.tsv"
    table.write_text(table.read_text().replace("log10(V)", "log10(W)"))
    assert _lint(problem)


def test_export_synthetic_measurements(tiny_root: Path, tmp_path: Path) -> None:
    tpl = load_template("tiny", root=tiny_root)
    times = np.linspace(0.0, 6.0, 7)
    clean = export_template(tpl, tmp_path / "clean", format="petab", synthetic=_fake(times))
    noisy = export_template(tpl, tmp_path / "noisy", format="petab", synthetic=_fake(times), seed=7)
    again = export_template(tpl, tmp_path / "again", format="petab", synthetic=_fake(times), seed=7)
    assert not _lint(clean) and not _lint(noisy)
    meas = pd.read_csv(clean.parent / "measurements.tsv", sep="\t")
    assert len(meas) == 2 * len(times)
    vl = meas[meas.observableId == "viral_load"]
    np.testing.assert_allclose(vl.measurement, 5.0 - (vl.time - 3.0) ** 2, atol=1e-9)
    text = (noisy.parent / "measurements.tsv").read_text()
    assert text == (again.parent / "measurements.tsv").read_text()
    assert text != (clean.parent / "measurements.tsv").read_text()


def test_export_is_atomic(tiny_root: Path, tmp_path: Path) -> None:
    tpl = load_template("tiny", root=tiny_root)
    times = np.linspace(0.0, 6.0, 7)
    one = _fake(times)
    cohort = FakeTrajectory(times, {k: np.stack([v, v]) for k, v in one.columns.items()})
    target = tmp_path / "out" / "problem"
    with pytest.raises(InputError, match="one trajectory"):
        export_template(tpl, target, format="petab", synthetic=cohort)
    assert not (tmp_path / "out").exists()  # nothing, not even the parent, is written on error
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("keep me")
    (target / "model.xml").write_text("stale")
    export_template(tpl, target, format="petab")
    assert (target / "notes.txt").read_text() == "keep me"
    assert (target / "model.xml").read_text() == tpl.sbml
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["problem"]


# ---------------------------------------------------------------------------------------------- map


def _svg_edges(svg: str) -> list[dict[str, str]]:
    root = ET.fromstring(svg)
    return [g.attrib for g in root.iter(f"{SVG}g") if "edge" in g.attrib.get("class", "")]


def test_map_has_every_state_and_the_known_edges(tiny_root: Path) -> None:
    svg = template_map("tiny", root=tiny_root)
    root = ET.fromstring(svg)
    nodes = {g.attrib["data-id"]: g for g in root.iter(f"{SVG}g") if g.attrib.get("class") == "node"}
    assert set(nodes) == {"T", "I", "V", "D"}
    assert "tissue damage" in nodes["D"].find(f"{SVG}title").text
    edges = {(e["data-source"], e["data-target"], e["class"]): e for e in _svg_edges(svg)}
    assert edges[("T", "I", "edge reaction")]["data-reaction"] == "infection"
    assert edges[("I", "sink", "edge reaction")]["data-reaction"] == "death"
    # dT/dt = -beta T V: V lowers T; dV/dt = (1 - eps) p I - c V: I raises V
    assert edges[("V", "T", "edge influence negative")]["data-sign"] == "-"
    assert edges[("I", "V", "edge influence positive")]["data-sign"] == "+"
    assert ("T", "I", "edge influence positive") not in edges  # conversion already drawn as a reaction
    assert svg == template_map("tiny", root=tiny_root)  # deterministic layout


def test_map_html_wraps_the_svg(tiny_root: Path) -> None:
    html = template_map("tiny", format="html", root=tiny_root)
    assert html.startswith("<!DOCTYPE html>") and template_map("tiny", root=tiny_root) in html
    with pytest.raises(InputError, match="unknown map format"):
        template_map("tiny", format="png", root=tiny_root)


# ------------------------------------------------------------------------- every real template folder


REAL = list_templates()


@pytest.mark.parametrize("name", REAL)
def test_real_template_metadata_is_valid(name: str) -> None:
    tpl = load_template(name)  # parses template.yaml and checks it against model.ant
    cited = " ".join(p.source for p in tpl.metadata.parameters.values())
    assert any(key in cited for key in tpl.metadata.citations), "no parameter source names a citation"
    for key in tpl.metadata.interventions:
        tpl.intervention(key)  # the defaults give a valid schedule


@pytest.mark.parametrize("name", REAL)
def test_real_template_has_a_readme(name: str) -> None:
    assert (load_template(name).path / "README.md").is_file()


@pytest.mark.parametrize("name", REAL)
def test_real_template_exports_a_clean_petab_problem_and_a_map(name: str, tmp_path: Path) -> None:
    tpl = load_template(name)
    assert not _lint(export_template(tpl, tmp_path / "petab", format="petab"))
    svg = ET.fromstring(template_map(tpl))
    nodes = {g.attrib["data-id"] for g in svg.iter(f"{SVG}g") if g.attrib.get("class") == "node"}
    assert nodes == set(tpl.metadata.states)
