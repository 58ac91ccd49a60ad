"""Personalisation: calibration problems (PEtab), likelihoods, MAP, posteriors, population models.

Analysis of the results (profiles, sensitivity, predictive checks) is in :mod:`immunetwin.analysis`.

```python
from immunetwin.inference import compile_objective, fit_map, laplace, patient_problem, sample_posterior
from immunetwin.io.petab import read_petab

objective = compile_objective(read_petab("problem.yaml"))
fit = fit_map(objective, key=jax.random.PRNGKey(0), starts=10)
posterior = sample_posterior(objective, key=jax.random.PRNGKey(1), init=fit.theta)
```
"""

from immunetwin.inference.fit import MapFit, StartResult, fit_map, hessian
from immunetwin.inference.likelihood import CALIBRATION_CONTROLS, Objective, SteadyState, compile_objective
from immunetwin.inference.patient import patient_problem
from immunetwin.inference.population import PopulationData, PopulationFit, fit_population, load_population_fit
from immunetwin.inference.posterior import (
    ConvergenceWarning,
    LaplaceFit,
    PosteriorFit,
    laplace,
    sample_posterior,
)
from immunetwin.inference.problem import Condition, Measurements, Observable, Parameter, Prior, Problem

__all__ = [
    "CALIBRATION_CONTROLS",
    "Condition",
    "ConvergenceWarning",
    "LaplaceFit",
    "MapFit",
    "Measurements",
    "Objective",
    "Observable",
    "Parameter",
    "PopulationData",
    "PopulationFit",
    "PosteriorFit",
    "Prior",
    "Problem",
    "StartResult",
    "SteadyState",
    "compile_objective",
    "fit_map",
    "fit_population",
    "hessian",
    "laplace",
    "load_population_fit",
    "patient_problem",
    "sample_posterior",
]
