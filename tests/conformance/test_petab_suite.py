"""A fixed sample of the PEtab benchmark collection (all problems: `make conformance` -> CONFORMANCE.md).

The log-likelihood at the nominal parameters must match AMICI's reference by AMICI's own rule
(numpy.isclose, rtol=1e-3, atol=1e-3). The sample covers log10 observables (Borghans), several
conditions (Fujita), pre-equilibration (Brannmark) and measurement-specific noise parameters (Boehm).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from immunetwin.conformance.petab_suite import references, run_problem


@pytest.fixture(scope="session")
def collection(shared_dir: Path) -> Path:
    path = shared_dir / "conformance" / "petab-benchmark"
    if not (path / "reference_llh_amici.yaml").is_file():
        pytest.fail(f"{path} has no reference_llh_amici.yaml")
    return path


@pytest.mark.shared
@pytest.mark.parametrize(
    "name",
    ["Boehm_JProteomeRes2014", "Borghans_BiophysChem1997", "Brannmark_JBC2010", "Fujita_SciSignal2010"],
)
def test_sampled_problem_matches_amici_reference(collection, name):
    result = run_problem(collection, name)
    assert result.outcome == "match", (
        f"{name}: {result.outcome} {result.detail} llh={result.llh} ref={result.reference}"
    )
    assert result.reference == references(collection)[name]


@pytest.mark.shared
def test_a_missing_model_file_is_refused_with_the_reason(collection):
    result = run_problem(collection, "Froehlich_CellSystems2018")  # model too large for the snapshot
    assert result.outcome == "refused"
    assert "model file" in result.detail and "not found" in result.detail
