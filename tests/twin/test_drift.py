"""drift_signal pools the scores of a template's twins and flags systematic deviation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.special import ndtr

from immunetwin.errors import InputError
from immunetwin.twin import Score, Twin, drift_signal


def _twin_with(base: Twin, patient: str, probits: np.ndarray) -> Twin:
    scores = tuple(
        Score(float(k), "viral_load", 0.0, False, float(ndtr(z)), float(z), 1) for k, z in enumerate(probits)
    )
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(Twin)} | {
        "patient": patient,
        "scores": scores,
    }
    return Twin.create(**fields)


def test_calibrated_twins_are_not_flagged(early_twin):
    rng = np.random.default_rng(0)
    twins = [_twin_with(early_twin, f"p{i}", rng.standard_normal(10)) for i in range(6)]
    report = drift_signal(twins)
    assert not report.flagged and report.twins == 6 and "no systematic deviation" in report.message
    (vl,) = report.observables
    assert vl.observable == "viral_load" and vl.n == 60 and vl.patients == 6
    assert abs(vl.mean_probit) < 0.5 and 0.6 < vl.sd_probit < 1.4


@pytest.mark.parametrize(("shift", "scale"), [(1.0, 1.0), (0.0, 3.0)])
def test_a_shifted_or_overdispersed_template_is_flagged(early_twin, shift, scale):
    rng = np.random.default_rng(1)
    twins = [_twin_with(early_twin, f"p{i}", shift + scale * rng.standard_normal(10)) for i in range(6)]
    report = drift_signal(twins)
    assert report.flagged and report.observables[0].flagged
    assert "deviates systematically" in report.message and "improve the model" in report.message


def test_versions_of_one_patient_count_once(early_twin, sequential_twin):
    report = drift_signal([early_twin, sequential_twin])
    assert report.twins == 1 and report.observables[0].n == len(sequential_twin.scores)


def test_refusals(early_twin):
    with pytest.raises(InputError, match="at least one twin"):
        drift_signal([])
    with pytest.raises(InputError, match="nothing to score"):
        drift_signal([early_twin])
    other = dataclasses.replace(early_twin, template_name="viral_immune", template_hash="0" * 64)
    with pytest.raises(InputError, match="one template"):
        drift_signal([early_twin, other])
    with pytest.raises(InputError, match="alpha"):
        drift_signal([early_twin], alpha=2.0)
