"""immunetwin: immune digital twins - templates, personalisation, forecasts, decisions.

The flat public namespace (see ``__all__``): read a model, simulate one patient or a cohort.
"""

from __future__ import annotations

from immunetwin.engines.integrate import Controls
from immunetwin.engines.ode import CohortTrajectory, Model, Trajectory, simulate, simulate_cohort
from immunetwin.engines.solvers import Dopri5, Rodas5, Rodas5P
from immunetwin.errors import (
    ImmunetwinError,
    InputError,
    MalformedModelError,
    ModelError,
    SolverError,
    TemplateError,
    UnknownIdError,
    UnsupportedConstructError,
)
from immunetwin.io import load_model
from immunetwin.spec.schedule import Bolus, Input, Schedule

__version__ = "0.1.0"

__all__ = [
    "Bolus",
    "CohortTrajectory",
    "Controls",
    "Dopri5",
    "ImmunetwinError",
    "Input",
    "InputError",
    "MalformedModelError",
    "Model",
    "ModelError",
    "Rodas5",
    "Rodas5P",
    "Schedule",
    "SolverError",
    "TemplateError",
    "Trajectory",
    "UnknownIdError",
    "UnsupportedConstructError",
    "__version__",
    "load_model",
    "simulate",
    "simulate_cohort",
]
