"""Patients and ingest through the service: site visibility, roles, idempotency, atomic refusal, audit."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from immunetwin import service, storage
from immunetwin.errors import IngestError
from immunetwin.service import PermissionDeniedError
from immunetwin.storage import Database
from service.fixtures import World

CSV = (
    "patient,observable,value,unit,time\n"
    "N1,viral_load,3.5,log10 TCID50/mL,2024-03-01T12:00:00Z\n"
    "N1,viral_load,1000,TCID50/mL,2024-03-02T12:00:00Z\n"
)


def _audit(db: Database) -> list[storage.AuditRecord]:
    with db.transaction() as session:
        return list(storage.list_audit(session))


def test_users_see_only_their_sites(db: Database, world: World) -> None:
    p = world.principals
    assert [x.pseudonym for x in service.list_patients(db, p["clin_north"])] == ["N1"]
    assert [x.pseudonym for x in service.list_patients(db, p["clin_south"])] == ["S1"]
    assert [x.pseudonym for x in service.list_patients(db, p["admin"])] == ["N1", "S1"]
    with pytest.raises(PermissionDeniedError):
        service.get_patient(db, p["clin_north"], world.south.id)
    with pytest.raises(PermissionDeniedError):
        service.list_patients(db, p["clin_north"], site="south")
    with pytest.raises(PermissionDeniedError):
        service.list_patients(db, p["nobody_north"])
    with pytest.raises(storage.NotFoundError):
        service.get_patient(db, p["admin"], 999)


def test_modellers_read_but_do_not_write_patient_data(db: Database, world: World) -> None:
    modeller = world.principals["mod_north"]
    assert service.get_patient(db, modeller, world.north.id).pseudonym == "N1"
    with pytest.raises(PermissionDeniedError):
        service.add_patient(db, modeller, "north", "N2")
    with pytest.raises(PermissionDeniedError):
        service.ingest(db, modeller, CSV, kind="csv", site="north", template="viral_tiv")


def test_ingest_is_idempotent_and_audited_per_patient(db: Database, world: World) -> None:
    clinician = world.principals["clin_north"]
    first = service.ingest(db, clinician, CSV, kind="csv", site="north", template="viral_tiv")
    again = service.ingest(db, clinician, CSV.encode(), kind="csv", site="north", template="viral_tiv")
    assert (first.inserted, first.duplicates) == (2, 0)
    assert (again.inserted, again.duplicates) == (0, 2)
    _, rows = service.list_measurements(db, clinician, world.north.id)
    assert [r.observable_value for r in rows] == [3.5, 3.0]
    assert [r.day for r in rows] == [0.5, 1.5]
    ingests = [a for a in _audit(db) if a.action == "ingest"]
    assert len(ingests) == 2 and all(a.patient == "N1" and a.site == "north" for a in ingests)


def test_a_bad_payload_is_refused_whole_naming_the_field(db: Database, world: World) -> None:
    clinician = world.principals["clin_north"]
    bad = CSV + "N1,viral_load,not-a-number,log10 TCID50/mL,2024-03-03T12:00:00Z\n"
    before = len(_audit(db))
    with pytest.raises(IngestError, match=r"row 3, column 'value'"):
        service.ingest(db, clinician, bad, kind="csv", site="north", template="viral_tiv")
    with pytest.raises(IngestError, match="template"):
        service.ingest(db, clinician, CSV, kind="csv", site="north", template="no_such_template")
    with pytest.raises(IngestError, match="no patient 'S1' at site 'north'"):
        service.ingest(db, clinician, CSV.replace("N1", "S1"), kind="csv", site="north", template="viral_tiv")
    with db.transaction() as session:
        assert storage.count_measurements(session) == 0
    assert len(_audit(db)) == before


def test_ingest_at_another_site_is_forbidden(db: Database, world: World) -> None:
    with pytest.raises(PermissionDeniedError):
        service.ingest(
            db, world.principals["clin_south"], CSV, kind="csv", site="north", template="viral_tiv"
        )


def test_add_patient_and_reference_time(db: Database, world: World) -> None:
    clinician = world.principals["clin_north"]
    patient = service.add_patient(db, clinician, "north", "N2")
    service.ingest(db, clinician, CSV.replace("N1", "N2"), kind="csv", site="north", template="viral_tiv")
    assert [r.day for r in service.list_measurements(db, clinician, patient.id)[1]] == [None, None]
    service.set_reference_time(db, clinician, patient.id, datetime(2024, 3, 1, 12, tzinfo=UTC))
    assert [r.day for r in service.list_measurements(db, clinician, patient.id)[1]] == [0.0, 1.0]
    with pytest.raises(storage.ConflictError):
        service.add_patient(db, clinician, "north", "N2")
    kinds = {(a.action, a.resource) for a in _audit(db) if a.patient == "N2"}
    assert {("create", "patient"), ("ingest", "measurements"), ("update", "reference_time"), ("read", "measurements")} <= kinds  # fmt: skip
