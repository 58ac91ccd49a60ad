"""Personalisation: calibration problems (PEtab), likelihoods, MAP, posteriors, population models.

```python
from immunetwin.calibrate import compile_objective, fit_map, laplace, patient_problem, sample_posterior
from immunetwin.io.petab import read_petab

objective = compile_objective(read_petab("problem.yaml"))
fit = fit_map(objective, key=jax.random.PRNGKey(0), starts=10)
posterior = sample_posterior(objective, key=jax.random.PRNGKey(1), init=fit.theta)
```
"""

from immunetwin.calibrate.analysis import (
    Comparison,
    PredictiveCheck,
    Profiles,
    Sensitivity,
    ToleranceCheck,
    compare_models,
    posterior_predictive,
    profile,
    sensitivity,
    tolerance_check,
)
from immunetwin.calibrate.fit import MapFit, StartResult, fit_map
from immunetwin.calibrate.likelihood import CALIBRATION_CONTROLS, Objective, SteadyState, compile_objective
from immunetwin.calibrate.patient import patient_problem
from immunetwin.calibrate.posterior import (
    ConvergenceWarning,
    LaplaceFit,
    PosteriorFit,
    laplace,
    sample_posterior,
)
from immunetwin.calibrate.problem import Condition, Measurements, Observable, Parameter, Prior, Problem

__all__ = [
    "CALIBRATION_CONTROLS",
    "Comparison",
    "Condition",
    "ConvergenceWarning",
    "LaplaceFit",
    "MapFit",
    "Measurements",
    "Objective",
    "Observable",
    "Parameter",
    "PosteriorFit",
    "PredictiveCheck",
    "Prior",
    "Problem",
    "Profiles",
    "Sensitivity",
    "StartResult",
    "SteadyState",
    "ToleranceCheck",
    "compare_models",
    "compile_objective",
    "fit_map",
    "laplace",
    "patient_problem",
    "posterior_predictive",
    "profile",
    "sample_posterior",
    "sensitivity",
    "tolerance_check",
]
