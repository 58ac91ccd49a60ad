"""Analysis of calibrated models: identifiability, sensitivity, predictive checks, uncertainty.

Verbs, each returning a frozen result with ``to_frame()``:

- :func:`profile` (:mod:`.identifiability`): profile likelihoods and confidence intervals.
- :func:`sensitivity` (:mod:`.sensitivity`): Sobol / Morris indices of outcomes with SALib.
- :func:`posterior_predictive` and :func:`compare_models` (:mod:`.predictive`): predictive checks
  (PIT coverage, p-value) and PSIS-LOO comparison of alternative templates.
- :func:`tolerance_check` (:mod:`.uncertainty`): the algorithmic uncertainty of a likelihood.
- :func:`score_forecast` and baselines (:mod:`.validation`): coverage, CRPS, RMSE and PIT of
  forecasts against later observations; population-mean and last-value baselines.
"""

from immunetwin.analysis.identifiability import Profile, Profiles, profile
from immunetwin.analysis.predictive import Comparison, PredictiveCheck, compare_models, posterior_predictive
from immunetwin.analysis.sensitivity import Output, Sensitivity, sensitivity
from immunetwin.analysis.uncertainty import ToleranceCheck, tolerance_check
from immunetwin.analysis.validation import (
    Coverage,
    ForecastScores,
    NormalForecast,
    crps,
    interval_coverage,
    last_value_forecast,
    pit,
    pool_scores,
    population_mean_forecast,
    rmse,
    score_forecast,
    split_at_cutoff,
)

__all__ = [
    "Comparison",
    "Coverage",
    "ForecastScores",
    "NormalForecast",
    "Output",
    "PredictiveCheck",
    "Profile",
    "Profiles",
    "Sensitivity",
    "ToleranceCheck",
    "compare_models",
    "crps",
    "interval_coverage",
    "last_value_forecast",
    "pit",
    "pool_scores",
    "population_mean_forecast",
    "posterior_predictive",
    "profile",
    "rmse",
    "score_forecast",
    "sensitivity",
    "split_at_cutoff",
    "tolerance_check",
]
