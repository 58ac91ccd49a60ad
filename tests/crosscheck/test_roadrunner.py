"""Cross-check against libroadrunner (Welsh et al. 2023, Bioinformatics 39:btac770), an independent
SBML simulator (LLVM-compiled model, CVODE): every shipped template, and a sample of SBML Test Suite
cases, agree with it within solver tolerance. Test-only: libroadrunner is never a runtime dependency.
"""

from __future__ import annotations

import numpy as np
import pytest

import immunetwin as it
from immunetwin.templates import list_templates, load_template

roadrunner = pytest.importorskip("roadrunner")

RTOL = 1e-9
AGREE = 2e-6  # relative to each variable's scale: both solvers run at rtol 1e-9


def _roadrunner(sbml: str, times: np.ndarray, selections: list[str]) -> np.ndarray:
    rr = roadrunner.RoadRunner(sbml)
    rr.integrator.relative_tolerance = RTOL
    rr.integrator.absolute_tolerance = 1e-14
    rr.integrator.setValue("maximum_num_steps", 200_000)
    rr.timeCourseSelections = ["time", *selections]
    return np.asarray(rr.simulate(times=list(times)))[:, 1:]


def _selection(model: it.Model, ident: str) -> str:
    info = model.spec.info(ident)
    return f"[{ident}]" if info.kind == "species" and not info.only_substance_units else ident


def _compare(model: it.Model, sbml: str, times: np.ndarray, ids: list[str]) -> None:
    ours = it.simulate(model, times, controls=it.Controls(rtol=RTOL, atol=1e-14), throw=True)
    theirs = _roadrunner(sbml, times, [_selection(model, i) for i in ids])
    for k, ident in enumerate(ids):
        scale = max(np.max(np.abs(theirs[:, k])), 1e-300)
        np.testing.assert_allclose(ours[ident], theirs[:, k], rtol=AGREE, atol=AGREE * scale, err_msg=ident)


@pytest.mark.parametrize("name", list_templates())
def test_every_template_agrees_with_libroadrunner(name):
    tpl = load_template(name)
    times = np.linspace(0.0, 28.0, 57)
    _compare(tpl.model, tpl.sbml, times, list(tpl.model.state_ids))


CASES = ["00001", "00026", "00100", "00200", "00300", "00450", "00600", "00950", "01100", "01300"]


@pytest.mark.shared
@pytest.mark.parametrize("case", CASES)
def test_conformance_cases_agree_with_libroadrunner(sbml_suite, case):
    from immunetwin.conformance.sbml_suite import read_settings

    folder = sbml_suite / "cases" / "semantic" / case
    settings = read_settings(folder / f"{case}-settings.txt")
    path = folder / f"{case}-sbml-l3v2.xml"
    try:
        model = it.load_model(path)
    except it.UnsupportedConstructError:
        pytest.skip("refused by the engine (reported in CONFORMANCE.md)")
    times = np.linspace(settings.start, settings.start + settings.duration, settings.steps + 1)
    ids = [v for v in settings.variables if v in model.ids]
    _compare(model, path.read_text(), times, ids)
