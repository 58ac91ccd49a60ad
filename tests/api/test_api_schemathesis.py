"""Schemathesis against the app's own OpenAPI document: no request, however odd, gets a 5xx.

Every operation is called as the admin (so requests get past authentication into validation and the
service) with a bounded number of generated examples, on SQLite and PostgreSQL. Twins exist but have
no version (no personalisation runs here), so twin operations exercise validation and access paths.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from api_support import log_in
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from immunetwin import storage
from immunetwin.api import create_app
from immunetwin.service import ManualRunner, ServiceSettings
from immunetwin.storage import Database
from service.fixtures import make_world

EXAMPLES = 25  # per operation: under a minute per backend on a loaded 2-core machine


@pytest.fixture
def app(db: Database, settings: ServiceSettings) -> Iterator[tuple[FastAPI, dict[str, str]]]:
    world = make_world(db)
    with db.transaction() as session:
        storage.create_twin(session, world.north.id, "viral_tiv")
        storage.add_alert(session, world.north.id, "an alert")
    application = create_app(settings, database=db, runner=ManualRunner())
    with TestClient(application) as client:
        headers = log_in(client, "admin")
        client.post(
            "/api/patients/1/twins", json={"template": "viral_tiv", "name": "queued"}, headers=headers
        )
        yield application, headers


def test_no_server_errors(app: tuple[FastAPI, dict[str, str]]) -> None:
    application, headers = app
    schema = schemathesis.openapi.from_asgi("/openapi.json", application)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)  # fmt: skip
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=dict(headers), checks=[not_a_server_error])

        try:
            call()
        except Exception as err:  # one line per failing operation, all of them reported together
            failures.append(
                f"{operation.label}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
            )
    assert not failures, "\n".join(failures)
