"""Shared twins of the twin tests: viral_tiv, three personalised parameters, noise-free synthetic data.

Personalising compiles the calibration objective of its data set (seconds), so the twins are built
once per session and shared; every test that needs a different twin derives it from these.
"""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

import immunetwin as it
from immunetwin.templates import Template, load_template
from immunetwin.twin import Twin, TwinSettings, assimilate, personalise

ESTIMATE = ("beta", "delta", "c")
TIMES = np.arange(0.5, 6.01, 0.5)  # 12 daily half-day swabs over the rise, peak and fall
EARLY = 3.0  # the first twin sees the rows up to this day
DRAWS = 400
SETTINGS = TwinSettings()  # tempering from the prior


@pytest.fixture(scope="session")
def tiv() -> Template:
    return load_template("viral_tiv")


@pytest.fixture(scope="session")
def truth(tiv: Template) -> it.Trajectory:
    """The nominal patient (the template's parameters) on a fine grid to day 12."""
    return it.simulate(tiv.model, np.linspace(0.0, 12.0, 97))


@pytest.fixture(scope="session")
def data(tiv: Template) -> pd.DataFrame:
    """Noise-free log10 titres of the nominal patient at TIMES."""
    traj = it.simulate(tiv.model, TIMES)
    return pd.DataFrame({"observable": "viral_load", "time": TIMES, "value": tiv.observe(traj)["viral_load"]})


@pytest.fixture(scope="session")
def early_twin(tiv: Template, data: pd.DataFrame) -> Twin:
    """Version 1, personalised on the rows up to day 3."""
    return personalise(
        tiv, data[data.time <= EARLY], patient="p01", key=jax.random.PRNGKey(0), estimate=ESTIMATE,
        draws=DRAWS, settings=SETTINGS,
    )  # fmt: skip


@pytest.fixture(scope="session")
def sequential_twin(early_twin: Twin, data: pd.DataFrame) -> Twin:
    """The early twin after assimilating the later rows one by one (versions 2..7)."""
    twin = early_twin
    for k, (_, row) in enumerate(data[data.time > EARLY].iterrows()):
        twin = assimilate(twin, row.to_frame().T, key=jax.random.PRNGKey(100 + k))
    return twin


@pytest.fixture(scope="session")
def full_twin(tiv: Template, data: pd.DataFrame) -> Twin:
    """Personalised from scratch on every row."""
    return personalise(
        tiv, data, patient="p01", key=jax.random.PRNGKey(1), estimate=ESTIMATE, draws=DRAWS, settings=SETTINGS
    )
