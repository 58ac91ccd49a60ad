"""Shared test fixtures: the ../shared folder (conformance suites, patient data).

Users who clone the repo have no ../shared: tests that need it skip with a reason. Under CI=true
they must run, so a missing ../shared fails instead of skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from immunetwin.runtime import compile_small_loops_whole, enable_compilation_cache

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    """Compiled models are kept in .jax_cache (git-ignored), shared by the xdist workers and runs;
    solver loops are compiled whole, as the command line does."""
    compile_small_loops_whole()
    where = os.environ.get("IMMUNETWIN_CACHE", str(REPO / ".jax_cache"))
    if where.lower() != "off":
        enable_compilation_cache(Path(where))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Path of ../shared, or skip (fail under CI=true) when it is missing."""
    if SHARED.is_dir():
        return SHARED
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {SHARED} is missing: the conformance and data tests must run in CI")
    pytest.skip(f"{SHARED} not present (it ships beside the repo only for the team and CI)")


@pytest.fixture(scope="session")
def sbml_suite(shared_dir: Path) -> Path:
    """The SBML Test Suite semantic cases."""
    path = shared_dir / "conformance" / "sbml-test-suite"
    if not (path / "cases" / "index_semantic_cases.csv").is_file():
        pytest.fail(f"{path} has no cases/index_semantic_cases.csv")
    return path
