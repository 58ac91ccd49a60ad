"""Fixtures of the calibrate tests."""

from __future__ import annotations

import numpy as np
import pytest

from decay import decay_truth


@pytest.fixture(scope="session")
def decay_data() -> np.ndarray:
    rng = np.random.default_rng(7)
    return decay_truth() + rng.normal(0, 0.2, 8)
