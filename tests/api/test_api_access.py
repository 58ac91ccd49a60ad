"""The access matrix: every role and site against every endpoint (401 without a token, 403 for a role
that lacks the permission or a patient of another site, 2xx otherwise), and an audit entry for every
successful read or write of a patient's data."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from api_support import Api

from immunetwin import storage
from immunetwin.service import PERMISSIONS
from service.fixtures import T0, USERS, csv_text

SITES = ("north", "south")


@dataclass(frozen=True)
class Endpoint:
    """One call: method, path (may name ``{patient}``, ``{twin}``, ``{job}``, ``{alert}``, ``{site}``),
    a body factory, the permission it needs, and its success code."""

    method: str
    path: str
    permission: str | None  # None: any logged-in user
    ok: int = 200
    body: Callable[[str, str], dict[str, Any]] | None = None  # (user, site) -> request kwargs
    patient_data: bool = True


def _csv(user: str, site: str) -> dict[str, Any]:
    import pandas as pd

    row = pd.DataFrame({"observable": ["viral_load"], "time": [0.25 + len(user) / 100], "value": [2.0]})
    pseudonym = "N1" if site == "north" else "S1"
    return {"content": csv_text(pseudonym, row), "headers": {"content-type": "text/csv"}}


ENDPOINTS = (
    Endpoint("GET", "/api/patients/{patient}", "patients:read"),
    Endpoint(
        "PATCH",
        "/api/patients/{patient}",
        "patients:write",
        body=lambda u, s: {"json": {"reference_time": T0.isoformat()}},
    ),
    Endpoint("GET", "/api/patients/{patient}/measurements", "patients:read"),
    Endpoint("GET", "/api/patients?site={site}", "patients:read", patient_data=False),
    Endpoint(
        "POST",
        "/api/patients",
        "patients:write",
        201,
        lambda u, s: {"json": {"site": s, "pseudonym": f"new-{u}"}},
    ),
    Endpoint("POST", "/api/measurements?site={site}&template=viral_tiv", "measurements:write", body=_csv),
    Endpoint("GET", "/api/patients/{patient}/twins", "twins:read"),
    Endpoint(
        "POST",
        "/api/patients/{patient}/twins",
        "twins:write",
        202,
        lambda u, s: {"json": {"template": "viral_tiv", "name": u}},
    ),
    Endpoint("GET", "/api/twins/{twin}", "twins:read"),
    Endpoint("GET", "/api/twins/{twin}/history", "twins:read"),
    Endpoint("GET", "/api/twins/{twin}/forecast?horizon=5", "twins:read"),
    Endpoint("POST", "/api/twins/{twin}/assimilate", "twins:write", 202),
    Endpoint("POST", "/api/twins/{twin}/report", "twins:read", 202, lambda u, s: {"json": {}}),
    Endpoint("GET", "/api/jobs/{job}", "twins:read"),
    Endpoint("POST", "/api/jobs/{job}/cancel", "twins:write"),
    Endpoint("GET", "/api/alerts?patient_id={patient}", "patients:read"),
    Endpoint("GET", "/api/alerts/{alert}", "patients:read"),
    Endpoint("POST", "/api/alerts/{alert}/acknowledge", "alerts:acknowledge"),
)
GLOBAL = (  # not about one patient: (method, path, permission, success code, body)
    ("GET", "/api/me", None, 200, None),
    ("GET", "/api/templates", None, 200, None),
    ("GET", "/api/templates/viral_tiv", None, 200, None),
    ("GET", "/api/sites", None, 200, None),
    ("GET", "/api/users", "users:manage", 200, None),
    (
        "POST",
        "/api/users",
        "users:manage",
        201,
        lambda u: {"json": {"username": f"made-by-{u}", "password": "long-enough-1"}},
    ),
    ("POST", "/api/sites", "users:manage", 201, lambda u: {"json": {"code": f"site-{u}"}}),
    ("GET", "/api/jobs", "twins:read", 200, None),
    ("GET", "/api/alerts", "patients:read", 200, None),
    ("POST", "/api/me/tokens", None, 201, lambda u: {"json": {"name": "robot"}}),
)


def _allowed(user: str, permission: str | None, site: str | None) -> bool:
    roles, sites = USERS[user]
    if permission is not None and not PERMISSIONS[permission] & set(roles):
        return False
    return site is None or "admin" in roles or site in sites


def _resources(api: Api, site: str, twin_ids: dict[str, int]) -> dict[str, Any]:
    """Fresh ids for one call: the site's patient, its twin, a new queued job and a new alert."""
    patient = api.world.north if site == "north" else api.world.south
    with api.db.transaction() as session:
        job = storage.create_job(
            session, "assimilate", params={"twin_id": twin_ids[site]}, patient_id=patient.id
        )
        alert = storage.add_alert(session, patient.id, "test alert")
    return {"patient": patient.id, "twin": twin_ids[site], "job": job.id, "alert": alert.id, "site": site}


def _stored_twins(api: Api, twin: Any) -> dict[str, int]:
    from immunetwin.service import twin_to_bytes

    ids = {}
    blob = twin_to_bytes(twin)
    with api.db.transaction() as session:
        for site, patient in (("north", api.world.north), ("south", api.world.south)):
            record = storage.create_twin(session, patient.id, "viral_tiv", name="matrix")
            storage.save_twin_version(
                session, record.id, blob, reason="personalise", provenance_sha256=twin.provenance
            )
            ids[site] = record.id
    return ids


def _audited(api: Api, after: int, user: str, patient_id: int) -> bool:
    with api.db.transaction() as session:
        entries = storage.list_audit(session, patient_id=patient_id, actor=user)
    return any(e.id > after for e in entries)


def _last_audit_id(api: Api) -> int:
    with api.db.transaction() as session:
        entries = storage.list_audit(session, limit=1_000_000)
    return entries[-1].id if entries else 0


def test_access_matrix_and_audit(api: Api, tiv_twin: Any) -> None:
    twins, problems = _stored_twins(api, tiv_twin), []
    for endpoint, site, user in itertools.product(ENDPOINTS, SITES, (None, *USERS)):
        ids = _resources(api, site, twins)
        path = endpoint.path.format(**ids)
        kwargs = endpoint.body(user or "anon", site) if endpoint.body else {}
        headers = {**kwargs.pop("headers", {}), **api.as_(user)}
        before = _last_audit_id(api)
        response = api.client.request(endpoint.method, path, headers=headers, **kwargs)
        expected = 401 if user is None else endpoint.ok if _allowed(user, endpoint.permission, site) else 403
        if response.status_code != expected:
            problems.append(f"{endpoint.method} {path} as {user}: {response.status_code} != {expected} ({response.text[:120]})")  # fmt: skip
        elif expected < 300 and endpoint.patient_data:
            about = response.json()["id"] if path == "/api/patients" else ids["patient"]  # a new patient
            if not _audited(api, before, user, about):
                problems.append(f"{endpoint.method} {path} as {user}: no audit entry for patient {about}")
    for (method, path, permission, ok, body), user in itertools.product(GLOBAL, (None, *USERS)):
        kwargs = body(user or "anon") if body else {}
        response = api.client.request(method, path, headers=api.as_(user), **kwargs)
        expected = 401 if user is None else ok if _allowed(user, permission, None) else 403
        if response.status_code != expected:
            problems.append(
                f"{method} {path} as {user}: {response.status_code} != {expected} ({response.text[:120]})"
            )
    assert not problems, "\n".join(problems)


def test_lists_show_only_the_users_sites(api: Api) -> None:
    for user, (roles, sites) in USERS.items():
        response = api.client.get("/api/patients", headers=api.as_(user))
        if not roles:
            assert response.status_code == 403
            continue
        shown = {p["site"] for p in response.json()}
        assert shown == ({"north", "south"} if "admin" in roles else set(sites)), user


def test_unknown_ids_are_404_and_bad_tokens_401(api: Api) -> None:
    admin = api.as_("admin")
    for path in (
        "/api/patients/999",
        "/api/twins/999",
        "/api/jobs/999",
        "/api/alerts/999",
        "/api/templates/nope",
    ):
        assert api.client.get(path, headers=admin).status_code == 404, path
    assert api.client.post("/api/alerts/999/acknowledge", headers=admin).status_code == 404
    response = api.client.get("/api/me", headers={"Authorization": "Bearer itw_forged"})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    wrong = api.client.post("/api/token", data={"username": "admin", "password": "wrong-password"})
    assert wrong.status_code == 401
