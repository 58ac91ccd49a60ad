"""The dashboard through the app (in-process): log in, patient list with alert badges, twin page with
forecast figure and provenance, a decision, and posting a measurement that queues the twin's update.

The same in a real browser (Playwright driving Debian's Chromium against uvicorn): test_dashboard_browser.py.
"""

from __future__ import annotations

import re

import pandas as pd

from api.api_support import Api, api  # noqa: F401 (fixtures of the API tests, used here)
from immunetwin import storage
from service.fixtures import (  # noqa: F401
    EARLY,
    PASSWORD,
    cheap_password_hashing,
    database_url,
    db,
    pg_template,
    postgres_server,
    settings,
    sqlite_template,
    store_twin,
    tiv_data,
    tiv_twin,
)


def _log_in(api: Api, user: str) -> None:  # noqa: F811
    response = api.client.post(
        "/login", data={"username": user, "password": PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 303 and "httponly" in response.headers["set-cookie"].lower()


def test_dashboard_pages_and_posting_a_measurement(api: Api, tiv_twin, tiv_data: pd.DataFrame) -> None:  # noqa: F811
    assert api.client.get("/patients", follow_redirects=False).headers["location"] == "/login"
    bad = api.client.post("/login", data={"username": "clin_north", "password": "nope-nope"})
    assert bad.status_code == 401 and "wrong username or password" in bad.text
    twin_id = store_twin(api.db, api.world, tiv_twin, tiv_data[tiv_data.time <= EARLY])
    with api.db.transaction() as session:
        storage.add_alert(session, api.world.north.id, "viral_load above the band")
    _log_in(api, "clin_north")
    page = api.client.get("/patients").text
    assert "N1" in page and "S1" not in page and 'class="badge"' in page
    twin_page = api.client.get(f"/twins/{twin_id}").text
    assert "Plotly.newPlot" in twin_page and tiv_twin.provenance in twin_page and "verified" in twin_page
    decided = api.client.get(
        f"/twins/{twin_id}", params={"weights": "viral_load_auc=1", "costs": "antiviral=0.5"}
    )
    assert re.search(r'id="decision"><strong>(TREAT|DO NOT TREAT)', decided.text)
    patient_page = api.client.get(f"/patients/{api.world.north.id}").text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', patient_page).group(1)
    form = {"csrf": csrf, "template": "viral_tiv", "observable": "viral_load", "value": "4.2",
            "unit": "log10 TCID50/mL", "time": "2024-03-04T12:00:00+00:00"}  # fmt: skip
    posted = api.client.post(f"/patients/{api.world.north.id}/measurements", data=form)
    assert "1 stored, 0 already there; 1 twin updates queued" in posted.text
    assert len(api.runner.submitted) == 1
    assert api.runner.run(api.runner.submitted[0]) == "done"
    assert f'id="twin-{twin_id}-version">2<' in api.client.get(f"/patients/{api.world.north.id}").text
    forged = api.client.post(f"/patients/{api.world.north.id}/measurements", data={**form, "csrf": "0" * 32})
    assert forged.status_code == 403
    refused = api.client.get(f"/patients/{api.world.south.id}")
    assert refused.status_code == 403 and "text/html" in refused.headers["content-type"]
    assert '<h1 id="status">403 Forbidden</h1>' in refused.text
    assert "clin_north has no access to site &#39;south&#39;" in refused.text  # escaped
    assert api.client.get("/static/plotly.min.js").status_code == 200
