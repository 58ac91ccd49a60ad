"""A fixed sample of the SBML Test Suite (the full run is `make conformance` -> CONFORMANCE.md).

Every sampled case must pass by the suite's own rule or be refused with the construct named:
a case that runs and gives a wrong answer fails this test.
"""

from __future__ import annotations

import pytest

from immunetwin.conformance.sbml_suite import read_index, run_case, select_cases


def _sample(suite, subset: str, every: int) -> list[str]:
    return select_cases(read_index(suite), subset)[::every]


@pytest.mark.shared
@pytest.mark.parametrize(("subset", "every"), [("core", 31), ("events", 9)])
def test_sampled_cases_pass_or_are_refused_by_name(sbml_suite, subset, every):
    results = [run_case(sbml_suite, case) for case in _sample(sbml_suite, subset, every)]
    wrong = [f"{r.case}: {r.outcome} {r.detail}" for r in results if r.outcome not in ("pass", "refused")]
    assert not wrong, "\n".join(wrong)
    refused = [r for r in results if r.outcome == "refused"]
    assert all("unsupported SBML construct" in r.detail for r in refused)
    assert sum(r.outcome == "pass" for r in results) >= 0.9 * len(results)


@pytest.mark.shared
@pytest.mark.parametrize(
    ("case", "construct"),
    [("00040", "algebraic rule"), ("00953", "non-persistent event among several events")],
)
def test_a_refused_case_names_its_construct(sbml_suite, case, construct):
    result = run_case(sbml_suite, case)
    assert result.outcome == "refused"
    assert construct in result.detail


@pytest.mark.shared
@pytest.mark.parametrize("case", ["00388", "01505", "01556", "01784", "01282"])
def test_semantics_fixed_by_conformance_runs(sbml_suite, case):
    # stoichiometryMath (L2), rate rule on a concentration in a resizing compartment, a rule without
    # maths, the graphical layout package, numbers in boolean contexts
    assert run_case(sbml_suite, case).outcome == "pass"


@pytest.mark.shared
def test_a_wrong_answer_is_detected_as_fail(sbml_suite, tmp_path):
    # the judge itself must be able to fail: corrupt the expected results of a passing case
    import shutil

    src = sbml_suite / "cases" / "semantic" / "00001"
    dst = tmp_path / "cases" / "semantic" / "00001"
    shutil.copytree(src, dst)
    results = dst / "00001-results.csv"
    lines = results.read_text().splitlines()
    head, first, *rest = lines
    values = first.split(",")
    values[1] = str(float(values[1]) * 1.01)
    results.write_text("\n".join([head, ",".join(values), *rest]) + "\n")
    assert run_case(sbml_suite, "00001").outcome == "pass"
    assert run_case(tmp_path, "00001").outcome == "fail"
