"""Shared fixtures of the decision tests: the ``viral_immune`` template, the test cohort
(:mod:`decisions_cohort`), and one scenario comparison that several tests reuse (one compiled cohort
program)."""

from __future__ import annotations

import numpy as np
import pytest
from decisions_cohort import DAYS, HORIZON, PATIENTS, plausible_patients

from immunetwin.decisions import compare_scenarios
from immunetwin.templates import load_template


@pytest.fixture(scope="session")
def viral_immune():
    return load_template("viral_immune")


@pytest.fixture(scope="session")
def patients(viral_immune) -> dict[str, np.ndarray]:
    return plausible_patients(viral_immune, PATIENTS, seed=20240605)


@pytest.fixture(scope="session")
def antiviral_comparison(viral_immune, patients):
    """No treatment and the default antiviral course (5 days, 90% efficacy) started on each of DAYS."""
    specs = ["none", *(f"antiviral(start={d:g})" for d in DAYS)]
    return compare_scenarios(viral_immune, patients, specs, horizon=HORIZON)
