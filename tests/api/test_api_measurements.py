"""Posting measurements: FHIR and CSV, idempotent, refused whole with 422 naming the field."""

from __future__ import annotations

import json

from api_support import Api

from immunetwin import storage

FHIR = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "26881-3"}]},
    "subject": {"reference": "Patient/N1"},
    "effectiveDateTime": "2024-03-02T08:00:00+00:00",
    "valueQuantity": {"value": 12.5, "unit": "pg/mL", "system": "http://unitsofmeasure.org", "code": "pg/mL"},
}
URL = "/api/measurements?site=north&template=viral_immune"


def _count(api: Api) -> int:
    with api.db.transaction() as session:
        return storage.count_measurements(session)


def test_fhir_observation_and_bundle_are_stored_once(api: Api) -> None:
    headers = {**api.as_("clin_north"), "content-type": "application/fhir+json"}
    first = api.client.post(URL, content=json.dumps(FHIR), headers=headers)
    assert first.status_code == 200, first.text
    assert (first.json()["inserted"], first.json()["duplicates"]) == (1, 0)
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": FHIR}]}
    again = api.client.post(URL, json=bundle, headers=api.as_("clin_north"))
    assert (again.json()["inserted"], again.json()["duplicates"]) == (0, 1)
    rows = api.client.get(
        f"/api/patients/{api.world.north.id}/measurements", headers=api.as_("mod_north")
    ).json()
    assert [(r["observable"], r["value"], r["unit"]) for r in rows] == [("il6", 12.5, "pg/mL")]


def test_a_bad_payload_is_a_422_naming_the_field_and_nothing_is_stored(api: Api) -> None:
    headers = {**api.as_("clin_north"), "content-type": "application/fhir+json"}
    bad = {**FHIR, "valueQuantity": {**FHIR["valueQuantity"], "code": "furlongs"}}
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": FHIR}, {"resource": bad}],
    }
    response = api.client.post(URL, content=json.dumps(bundle), headers=headers)
    assert response.status_code == 422
    assert response.json()["where"].startswith("entry[1].resource.valueQuantity")
    for body, kind in (
        (b"{not json", "application/json"),
        (b"\xff\xfe", "text/csv"),
        (b"a,b\n1,2\n", "text/csv"),
    ):
        response = api.client.post(URL, content=body, headers={**api.as_("clin_north"), "content-type": kind})
        assert response.status_code == 422 and response.json()["detail"], body
    response = api.client.post(
        URL, content=b"x", headers={**api.as_("clin_north"), "content-type": "text/plain"}
    )
    assert response.status_code == 422 and response.json()["where"] == "Content-Type"
    missing = api.client.post("/api/measurements?site=north", json=FHIR, headers=api.as_("clin_north"))
    assert missing.status_code == 422 and "template" in missing.text
    assert _count(api) == 0


def test_update_twins_queues_an_assimilate_job_per_twin(api: Api) -> None:
    with api.db.transaction() as session:
        twin = storage.create_twin(session, api.world.north.id, "viral_immune")
        storage.save_twin_version(
            session, twin.id, b"not used here", reason="test", provenance_sha256="0" * 64
        )
    response = api.client.post(URL + "&update_twins=true", json=FHIR, headers=api.as_("clin_north"))
    jobs = response.json()["jobs"]
    assert [(j["kind"], j["state"]) for j in jobs] == [("assimilate", "queued")]
    assert api.runner.submitted == [jobs[0]["id"]]
