"""Twins through the API: history, forecast (JSON bands, no NaN), decision, a report job and its page,
an assimilate job after new measurements, job cancellation."""

from __future__ import annotations

import pandas as pd
from api_support import Api

from service.fixtures import EARLY, csv_text, store_twin


def test_twin_endpoints(api: Api, tiv_twin, tiv_data: pd.DataFrame) -> None:  # fmt: skip
    twin_id = store_twin(api.db, api.world, tiv_twin, tiv_data[tiv_data.time <= EARLY])
    me = api.as_("clin_north")
    history = api.client.get(f"/api/twins/{twin_id}/history", headers=me).json()
    assert [v["version"] for v in history["versions"]] == [1]
    assert history["versions"][0]["provenance_sha256"] == tiv_twin.provenance
    fc = api.client.get(f"/api/twins/{twin_id}/forecast", params={"horizon": 4, "treatment": "antiviral(start=3)"}, headers=me)  # fmt: skip
    assert fc.status_code == 200, fc.text
    body = fc.json()
    assert body["times"][0] == 3.0 and len(body["predictive"]["viral_load"][0]) == len(body["levels"]) == 5
    assert body["scenario"] != "none" and "T" in body["states"]
    bad = api.client.get(
        f"/api/twins/{twin_id}/forecast", params={"treatment": "surgery(start=1)"}, headers=me
    )
    assert bad.status_code == 422 and "surgery" in bad.json()["detail"]
    decision = api.client.post(f"/api/twins/{twin_id}/decide", json={"weights": {"viral_load_auc": 1}, "costs": {"antiviral": 0.5}, "horizon": 15}, headers=me)  # fmt: skip
    assert decision.status_code == 200, decision.text
    assert decision.json()["action"] in ("TREAT", "DO NOT TREAT") and decision.json()["reasons"]
    unknown = api.client.post(
        f"/api/twins/{twin_id}/decide", json={"weights": {"no_such_metric": 1}}, headers=me
    )
    assert unknown.status_code == 422
    report = api.client.post(f"/api/twins/{twin_id}/report", json={"horizon": 5}, headers=me).json()
    assert api.client.get(f"/api/jobs/{report['id']}/report", headers=me).status_code == 422  # not run yet
    assert api.runner.run(report["id"]) == "done"
    page = api.client.get(f"/api/jobs/{report['id']}/report", headers=me)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert tiv_twin.provenance[:16] in page.text
    assert (
        api.client.get(f"/api/jobs/{report['id']}/report", headers=api.as_("clin_south")).status_code == 403
    )
    late = csv_text("N1", tiv_data[(tiv_data.time > EARLY) & (tiv_data.time <= 3.5)])
    posted = api.client.post("/api/measurements?site=north&template=viral_tiv&update_twins=true", content=late,
                             headers={**me, "content-type": "text/csv"}).json()  # fmt: skip
    (job,) = posted["jobs"]
    assert api.runner.run(job["id"]) == "done"
    assert api.client.get(f"/api/twins/{twin_id}", headers=me).json()["latest_version"] == 2
    queued = api.client.post(f"/api/twins/{twin_id}/assimilate", headers=me).json()
    cancelled = api.client.post(f"/api/jobs/{queued['id']}/cancel", headers=me)
    assert cancelled.json()["state"] == "cancelled"
    assert api.client.post(f"/api/jobs/{queued['id']}/cancel", headers=me).status_code == 409
