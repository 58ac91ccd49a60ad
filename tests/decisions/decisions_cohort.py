"""The test cohort of the decision tests: plausible ``viral_immune`` patients and the settings shared by
the test modules (imported by name, like ``tests/inference/decay.py``, not through ``conftest``).

Patients: every parameter the template marks ``estimate: true`` is drawn from its log-normal prior with
half the prior's log-scale spread ("around the nominal values"), clipped to the parameter's plausible
range, from a fixed seed. With the full spread a few percent of patients never clear within 40 days and
the early-antiviral effect on clearance is lost in the spread; half the spread keeps the cohort in the
mild-to-moderate range the template's published checks describe.
"""

from __future__ import annotations

import numpy as np

#: Patients per test cohort (~250 keeps Monte Carlo errors a few percent and a cohort solve ~4 s).
PATIENTS = 250
#: Days simulated: long enough that >= 97% of these patients clear (time_to_clearance is censored here).
HORIZON = 40.0
#: Antiviral start days compared; a best_start_day over the same days reuses the compiled program.
DAYS = (3.0, 5.0, 7.0, 9.0)


def plausible_patients(template, size: int, seed: int, spread: float = 0.5) -> dict[str, np.ndarray]:
    """Estimated parameters drawn from the template's log-normal priors (``spread`` x sigma), clipped."""
    rng = np.random.default_rng(seed)
    out = {}
    for pid, info in template.metadata.parameters.items():
        if info.estimate and info.prior.distribution == "lognormal":
            prior = info.prior.parameters
            draw = prior["median"] * np.exp(spread * prior["sigma"] * rng.standard_normal(size))
            out[pid] = np.clip(draw, *info.range)
    return out
