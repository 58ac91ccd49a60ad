"""The REST API: ``create_app(settings)`` returns the FastAPI app (serve it with uvicorn).

Routes (OpenAPI at ``/openapi.json``, interactive docs at ``/docs``):

==========================================  ==========================================================
``POST /api/token``                          log in (OAuth2 password flow) -> bearer token
``GET /api/me``, ``POST /api/me/tokens``     who am I; an API token for a machine client
``GET|POST /api/users``, ``/api/sites``      users and sites (admins)
``GET /api/templates[/{name}]``              the template library
``GET|POST /api/patients``                   patients of my sites; add one
``GET|PATCH /api/patients/{id}``             one patient; set its day 0
``GET /api/patients/{id}/measurements``      its measurements
``POST /api/measurements``                   FHIR Observation/Bundle or CSV (idempotent; 422 names the field)
``GET|POST /api/patients/{id}/twins``        its twins; create one (a personalise job)
``GET /api/twins/{id}[/history]``            a twin; its stored versions
``POST /api/twins/{id}/assimilate``          absorb new measurements (a job)
``GET /api/twins/{id}/forecast``             predictive bands (optionally under treatment)
``POST /api/twins/{id}/decide``              scenario comparison and decision
``POST /api/twins/{id}/report``              HTML report (a job) -> ``GET /api/jobs/{id}/report``
``GET /api/jobs[/{id}]``, ``POST .../cancel`` jobs: state, progress, cancel
``GET /api/alerts``, ``POST .../acknowledge`` alerts of my patients
==========================================  ==========================================================
"""

from immunetwin.api.app import create_app

__all__ = ["create_app"]
