"""Analysis of calibrated models: identifiability, sensitivity, predictive checks, uncertainty.

Five verbs, each returning a frozen result with ``to_frame()``:

- :func:`profile` (:mod:`.identifiability`): profile likelihoods and confidence intervals.
- :func:`sensitivity` (:mod:`.sensitivity`): Sobol / Morris indices of outcomes with SALib.
- :func:`posterior_predictive` and :func:`compare_models` (:mod:`.predictive`): predictive checks
  (PIT coverage, p-value) and PSIS-LOO comparison of alternative templates.
- :func:`tolerance_check` (:mod:`.uncertainty`): the algorithmic uncertainty of a likelihood.
"""

from immunetwin.analysis.identifiability import Profile, Profiles, profile
from immunetwin.analysis.predictive import Comparison, PredictiveCheck, compare_models, posterior_predictive
from immunetwin.analysis.sensitivity import Output, Sensitivity, sensitivity
from immunetwin.analysis.uncertainty import ToleranceCheck, tolerance_check

__all__ = [
    "Comparison",
    "Output",
    "PredictiveCheck",
    "Profile",
    "Profiles",
    "Sensitivity",
    "ToleranceCheck",
    "compare_models",
    "posterior_predictive",
    "profile",
    "sensitivity",
    "tolerance_check",
]
