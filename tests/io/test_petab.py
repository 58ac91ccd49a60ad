"""PEtab v1 reading and writing: round trip, the petab library's own lint, and refused files."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from decay import decay_problem, decay_truth
from immunetwin.errors import ProblemError
from immunetwin.inference import compile_objective
from immunetwin.io.petab import read_petab, write_petab


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    values = decay_truth() * 1.05
    return write_petab(decay_problem(values), tmp_path_factory.mktemp("petab") / "decay")


def test_export_passes_the_petab_library_lint(exported):
    import petab.v1 as petab

    problem = petab.Problem.from_yaml(exported)
    assert not petab.lint_problem(problem)


def test_round_trip_keeps_the_likelihood(exported):
    original = decay_problem(decay_truth() * 1.05)
    again = read_petab(exported)
    assert again.free_ids == original.free_ids
    np.testing.assert_allclose(again.nominal, original.nominal)
    with jax.enable_x64(True):
        theta = jnp.asarray(original.nominal)
        a = float(jax.jit(compile_objective(original).log_posterior)(theta))
        b = float(jax.jit(compile_objective(again).log_posterior)(theta))
    assert a == pytest.approx(b, rel=1e-12)


def test_template_formulas_are_written_in_petab_math(tmp_path):
    """viral_tiv observes ``log10(max(V, 1e-3))``: sympy would print ``Max``, which PEtab math
    (and so pyPESTO, COPASI) does not know; the export must write ``max`` and read back the same."""
    import petab.v1 as petab

    from immunetwin.inference import patient_problem
    from immunetwin.templates import load_template

    template = load_template("viral_tiv")
    data = pd.DataFrame({"observable": ["viral_load"] * 3, "time": [1.0, 3.0, 5.0], "value": [2.5, 5.0, 4.0]})
    problem = patient_problem(template, data, estimate=("beta", "delta"))
    folder = write_petab(problem, tmp_path / "tiv")
    table = pd.read_csv(folder.parent / "observables.tsv", sep="\t")
    formula = table.loc[0, "observableFormula"]
    assert "max(" in formula and "Max" not in formula, formula
    assert not petab.lint_problem(petab.Problem.from_yaml(folder))
    again = read_petab(folder)
    with jax.enable_x64(True):
        theta = jnp.asarray(problem.nominal)
        a = float(jax.jit(compile_objective(problem).log_posterior)(theta))
        b = float(jax.jit(compile_objective(again).log_posterior)(theta))
    assert a == pytest.approx(b, rel=1e-10)


def test_export_refuses_a_non_empty_folder_and_leaves_it_alone(exported):
    before = sorted(p.name for p in exported.parent.iterdir())
    with pytest.raises(ProblemError, match="not empty"):
        write_petab(decay_problem(decay_truth()), exported.parent)
    assert sorted(p.name for p in exported.parent.iterdir()) == before


def _broken(exported: Path, tmp_path: Path, table: str, edit) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(exported.parent, folder)
    path = folder / table
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    edit(df)
    df.to_csv(path, sep="\t", index=False)
    return folder / "problem.yaml"


@pytest.mark.parametrize(
    ("table", "edit", "pattern"),
    [
        (
            "measurements.tsv",
            lambda df: df.pop("time"),
            r"measurements.tsv, column 'time'.*missing required column",
        ),
        (
            "measurements.tsv",
            lambda df: df.loc.__setitem__((2, "measurement"), "nan"),
            r"measurements.tsv, row 4, column 'measurement'.*not a finite",
        ),
        (
            "measurements.tsv",
            lambda df: df.loc.__setitem__((0, "measurement"), "abc"),
            r"row 2, column 'measurement'.*'abc' is not a number",
        ),
        (
            "measurements.tsv",
            lambda df: df.loc.__setitem__((1, "observableId"), "obs_B"),
            r"row 3, column 'observableId'.*unknown observable 'obs_B'",
        ),
        (
            "measurements.tsv",
            lambda df: df.loc.__setitem__((1, "time"), "-1"),
            r"row 3, column 'time'.*non-negative",
        ),
        (
            "parameters.tsv",
            lambda df: df.loc.__setitem__((0, "lowerBound"), "-1"),
            r"parameters.tsv, row 2, column 'lowerBound'.*not positive.*log10",
        ),
        (
            "observables.tsv",
            lambda df: df.loc.__setitem__((0, "observableFormula"), "scale * (A"),
            r"observables.tsv, row 2, column 'observableFormula'.*cannot parse",
        ),
    ],
    ids=[
        "missing-column",
        "nan-data",
        "not-a-number",
        "unknown-observable",
        "negative-time",
        "log-scale-negative",
        "bad-formula",
    ],
)
def test_bad_files_are_refused_naming_file_row_and_column(exported, tmp_path, table, edit, pattern):
    with pytest.raises(ProblemError, match=pattern):
        read_petab(_broken(exported, tmp_path, table, edit))


def test_an_unknown_condition_is_refused(exported, tmp_path):
    path = _broken(
        exported,
        tmp_path,
        "measurements.tsv",
        lambda df: df.loc.__setitem__((0, "simulationConditionId"), "c99"),
    )
    with pytest.raises(ProblemError, match=r"unknown condition in measurement row 2 'c99'"):
        read_petab(path)


def test_a_missing_yaml_is_refused(tmp_path):
    with pytest.raises(ProblemError, match="file not found"):
        read_petab(tmp_path / "nope.yaml")
