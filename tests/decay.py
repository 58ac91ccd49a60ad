"""A small calibration problem for the calibrate tests: exponential decay observed in two conditions."""

from __future__ import annotations

import numpy as np
import sympy as sp

from immunetwin import load_model
from immunetwin.inference import Condition, Measurements, Observable, Parameter, Prior, Problem

DECAY = """
model decay
  A' = -k * A
  A = A0
  A0 = 10; k = 0.5; scale = 1
end
"""


def decay_problem(
    values: np.ndarray, *, censoring: np.ndarray | None = None, transformation: str = "lin"
) -> Problem:
    """Observable ``scale * A`` at t = 0.5, 1, 2, 4 in conditions A0=10 and A0=5, noise sd 0.2 (lin)."""
    model = load_model(DECAY)
    times = np.array([0.5, 1.0, 2.0, 4.0] * 2)
    conds = np.array(["c10"] * 4 + ["c5"] * 4)
    n = len(times)
    return Problem(
        model=model,
        parameters=(
            Parameter("k", "log10", 0.01, 10.0, 0.5, True, Prior("parameterScaleNormal", (-0.3, 1.0))),
            Parameter("scale", "lin", 0.1, 10.0, 1.0, True),
            Parameter("sd", "lin", 0.01, 1.0, 0.2, False),
        ),
        observables=(
            Observable(
                "obs_A",
                sp.Symbol("scale") * sp.Symbol("A"),
                sp.Symbol("noiseParameter1_obs_A"),
                transformation,
            ),
        ),
        conditions=(Condition("c10", (("A0", 10.0),)), Condition("c5", (("A0", 5.0),))),
        measurements=Measurements(
            observable=np.full(n, "obs_A"),
            condition=conds,
            preequilibration=np.full(n, ""),
            time=times,
            value=values,
            observable_parameters=((),) * n,
            noise_parameters=(("sd",),) * n,
            censoring=np.full(n, "") if censoring is None else censoring,
        ),
        name="decay",
    )


def decay_truth(k: float = 0.5, scale: float = 1.0) -> np.ndarray:
    t = np.array([0.5, 1.0, 2.0, 4.0])
    return scale * np.concatenate([10 * np.exp(-k * t), 5 * np.exp(-k * t)])
