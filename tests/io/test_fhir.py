"""FHIR R4 Observations and Bundles: good ones convert to the template's units, bad ones name the field."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from immunetwin.errors import IngestError, InputError
from immunetwin.io.clinical import (
    ObservableCatalogue,
    observable_catalogue,
    reading,
    to_observable_scale,
    ucum_to_pint,
)
from immunetwin.io.fhir import read_fhir
from immunetwin.templates import NoiseModel, ObservableInfo

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
VIRAL, IL6, CRP, LYMPH = "94819-0", "26881-3", "1988-5", "731-0"


@pytest.fixture(scope="module")
def catalogue() -> ObservableCatalogue:
    return observable_catalogue("viral_immune")


def obs(
    loinc: str = VIRAL, value: Any = 1.0e6, unit: str = "[copies]/mL", *, hours: float = 0, **extra: Any
) -> dict:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": "Patient/P001"},
        "effectiveDateTime": (T0 + timedelta(hours=hours)).isoformat(),
        "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": unit},
    }
    resource.update(extra)
    return resource


def bundle(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def good_bundle() -> dict:
    """Three viral loads, IL-6, CRP and a lymphocyte count, in the units labs send."""
    return bundle(
        obs(VIRAL, 1.0e7, "[copies]/mL", hours=0),
        obs(VIRAL, 3.2e5, "[copies]/mL", hours=48),
        obs(VIRAL, 50, "[copies]/mL", hours=96),
        obs(IL6, 12.5, "pg/mL", hours=0),
        obs(CRP, 4.2, "mg/dL", hours=0),
        obs(LYMPH, 0.9, "10*3/uL", hours=0),
    )


def test_a_bundle_converts_to_the_template_units(catalogue: ObservableCatalogue) -> None:
    rows = read_fhir(json.dumps(good_bundle()), catalogue)
    assert [r.observable for r in rows] == ["viral_load"] * 3 + ["il6", "crp", "lymphocytes"]
    assert rows[0].observable_value == pytest.approx(7.0) and rows[0].observable_unit == "log10 copy/mL"
    assert rows[1].observable_value == pytest.approx(math.log10(3.2e5))
    assert rows[2].censored and rows[2].observable_value == 2.0  # 50 copies/mL is below the LOD of 2 log10
    assert rows[3].observable_value == pytest.approx(12.5) and not rows[3].censored
    assert rows[4].observable_value == pytest.approx(42.0)  # 4.2 mg/dL = 42 mg/L
    assert rows[5].observable_value == pytest.approx(0.9)  # 0.9e3/uL = 0.9 cell/nL
    assert rows[0].value == 1.0e7 and rows[0].unit == "[copies]/mL" and rows[0].loinc == VIRAL
    assert rows[1].time == T0 + timedelta(hours=48) and rows[1].time.tzinfo is not None
    assert all(r.patient == "P001" and r.source == "fhir" for r in rows)
    assert len({r.payload_sha256 for r in rows}) == 6 and len({r.key for r in rows}) == 6


def test_a_single_observation_bytes_and_mapping_read_the_same(catalogue: ObservableCatalogue) -> None:
    one = obs(CRP, 15, "mg/L")
    rows = [read_fhir(x, catalogue) for x in (one, json.dumps(one), json.dumps(one).encode())]
    assert rows[0] == rows[1] == rows[2] and len(rows[0]) == 1
    assert rows[0][0].observable_value == 15.0 and rows[0][0].origin == ""


def test_identifier_and_other_effective_forms(catalogue: ObservableCatalogue) -> None:
    one = obs(IL6, 3.0, "ng/L", identifier=[{"system": "urn:lab", "value": "A-17"}])
    del one["effectiveDateTime"]
    one["effectivePeriod"] = {"start": "2024-03-01T09:00:00+01:00"}
    (row,) = read_fhir(one, catalogue)
    assert row.external_id == "urn:lab|A-17" and row.time == T0
    assert row.observable_value == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("change", "censored_at"),
    [
        ({"valueQuantity": {"value": 100, "comparator": "<", "code": "[copies]/mL"}}, 2.0),
        ({"valueQuantity": {"value": 1000, "comparator": "<", "code": "[copies]/mL"}}, 3.0),
        ({"valueQuantity": None, "valueString": "Not detected"}, 2.0),
        ({"valueQuantity": None, "valueString": "< 500 [copies]/mL"}, math.log10(500)),
        (
            {
                "valueQuantity": None,
                "valueCodeableConcept": {
                    "coding": [{"system": "http://snomed.info/sct", "code": "260415000"}]
                },
            },
            2.0,
        ),
        (
            {
                "valueQuantity": None,
                "dataAbsentReason": {"coding": [{"code": "not-performed"}]},
                "interpretation": [{"coding": [{"code": "ND"}]}],
            },
            2.0,
        ),
        ({"valueQuantity": {"value": 0, "code": "[copies]/mL"}}, 2.0),
    ],
)
def test_below_the_limit_of_detection_is_censored(catalogue: ObservableCatalogue, change: dict, censored_at: float) -> None:  # fmt: skip
    resource = obs()
    for key, value in change.items():
        if value is None:
            resource.pop(key)
        else:
            resource[key] = value
    (row,) = read_fhir(resource, catalogue)
    assert row.censored and row.observable_value == pytest.approx(censored_at)


def _mutated(path: str, value: Any) -> dict:
    resource = obs()
    *parents, last = path.split(".")
    target: Any = resource
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return resource


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        ("resourceType", "Patient", "resourceType", "expected 'Observation'"),
        ("valueQuantity", _DELETE, "valueQuantity", "needs valueQuantity"),
        ("code.coding.0.code", "2345-7", "code.coding[0].code", "not observed by template"),
        ("code.coding.0.system", "http://snomed.info/sct", "code.coding", "no coding with system"),
        ("valueQuantity.code", "mg/L", "valueQuantity.code", "does not convert"),
        ("valueQuantity.code", "xyzzy{beans}", "valueQuantity.code", "not a UCUM unit"),
        ("valueQuantity.value", float("nan"), "valueQuantity.value", "Decimal"),
        ("valueQuantity.value", "abc", "valueQuantity.value", "Decimal"),
        ("valueQuantity.value", -5, "valueQuantity.value", "no log10"),
        ("valueQuantity.comparator", ">", "valueQuantity.comparator", "not supported"),
        ("status", "cancelled", "status", "carries no result"),
        ("subject.reference", "Group/7", "subject.reference", "Patient/<pseudonym>"),
        ("effectiveDateTime", "2024-03-01", "effectiveDateTime", "a date only"),
        ("effectiveDateTime", "2024-03-01T10:00:00", "effectiveDateTime", "spec regex"),
        ("effectiveDateTime", _DELETE, "effectiveDateTime", "when was it measured"),
        ("valueString", "positive", "value[x]", "got multiple"),  # two values at once
    ],
)
def test_a_bad_observation_names_the_field(catalogue: ObservableCatalogue, path: str, value: Any, field: str, words: str) -> None:  # fmt: skip
    with pytest.raises(IngestError) as caught:
        read_fhir(_mutated(path, value), catalogue)
    assert caught.value.path == field
    assert str(caught.value).startswith(field + ": ") and words in str(caught.value)
    assert isinstance(caught.value, InputError)


def test_a_bad_entry_in_a_bundle_names_its_index(catalogue: ObservableCatalogue) -> None:
    bad = good_bundle()
    bad["entry"][4]["resource"]["valueQuantity"]["code"] = "[copies]/mL"  # CRP in copies
    with pytest.raises(IngestError, match=r"^entry\[4\]\.resource\.valueQuantity\.code: "):
        read_fhir(bad, catalogue)
    bad = good_bundle()
    bad["entry"][2]["resource"] = {"resourceType": "Patient", "id": "P001"}
    with pytest.raises(IngestError, match=r"^entry\[2\]\.resource\.resourceType: expected 'Observation'"):
        read_fhir(bad, catalogue)
    bad = good_bundle()
    bad["entry"][1]["resource"]["valueQuantity"]["value"] = "1e400x"
    with pytest.raises(IngestError, match=r"^entry\[1\]\.resource\.valueQuantity\.value: "):
        read_fhir(bad, catalogue)


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ("{not json", "$"),
        ("[1, 2]", "$"),
        ({"resourceType": "Bundle", "type": "collection"}, "entry"),
        ("NaN", "$"),
    ],
)
def test_a_payload_that_is_not_a_resource(catalogue: ObservableCatalogue, payload: Any, where: str) -> None:
    with pytest.raises(IngestError) as caught:
        read_fhir(payload, catalogue)
    assert caught.value.path == where


def test_nan_in_json_text_is_refused(catalogue: ObservableCatalogue) -> None:
    text = json.dumps(obs(IL6, 1.0, "pg/mL")).replace("1.0", "NaN")
    with pytest.raises(IngestError, match=r"^valueQuantity\.value: "):
        read_fhir(text, catalogue)


@pytest.mark.parametrize(
    ("ucum", "pint"),
    [
        ("[copies]/mL", "copy/mL"),
        ("{copies}/mL", "copy/mL"),
        ("10*3/uL", "10^3/uL"),
        ("10*9/L", "10^9/L"),
        ("/uL", "1/uL"),
        ("[IU]/mL", "IU/mL"),
        ("log10 [copies]/mL", "log10 copy/mL"),
        ("1", "dimensionless"),
    ],
)
def test_ucum_codes_translate_for_pint(ucum: str, pint: str) -> None:
    assert ucum_to_pint(ucum) == pint


def test_unit_conversions_of_each_observable(catalogue: ObservableCatalogue) -> None:
    o = catalogue.observables
    assert to_observable_scale(1e5, "[copies]/mL", o["viral_load"]) == pytest.approx(5.0)
    assert to_observable_scale(1e2, "[copies]/uL", o["viral_load"]) == pytest.approx(5.0)
    assert to_observable_scale(5.0, "log10 [copies]/mL", o["viral_load"]) == pytest.approx(5.0)
    assert to_observable_scale(0.5, "mg/dL", o["crp"]) == pytest.approx(5.0)
    assert to_observable_scale(5.0, "ng/L", o["il6"]) == pytest.approx(5.0)
    assert to_observable_scale(1.2e9, "/L", o["lymphocytes"]) == pytest.approx(1.2)
    assert to_observable_scale(1.2, "10*9/L", o["lymphocytes"]) == pytest.approx(1.2)
    assert to_observable_scale(1200, "/uL", o["lymphocytes"]) == pytest.approx(1.2)


def test_out_of_range_values_are_refused_not_crashed() -> None:
    linear = ObservableInfo(formula="V", unit="copy/mL", loinc=None, noise=NoiseModel("normal", 1.0))
    assert to_observable_scale(3.0, "log10 [copies]/mL", linear) == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="out of range"):
        to_observable_scale(1e6, "log10 [copies]/mL", linear)
    with pytest.raises(ValueError, match="out of range"):
        reading(1e308, "10*9/uL", ObservableInfo("x", "1/L", None, NoiseModel("normal", 1.0)), censored=False)
