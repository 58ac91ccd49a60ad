"""Ingest into both databases: stored once, all or nothing, unknown patients named."""

from __future__ import annotations

import json

import pytest
from fhir_examples import bundle, observation

from immunetwin.errors import IngestError
from immunetwin.io.clinical import ObservableCatalogue
from immunetwin.storage import (
    Database,
    NotFoundError,
    add_patient,
    add_site,
    count_measurements,
    find_patient,
    ingest_csv,
    ingest_fhir,
    list_measurements,
    list_patients,
)


def six_observations() -> dict:
    """A Bundle of 3 viral loads, IL-6, CRP and lymphocytes of patient P001."""
    return bundle(
        observation(value=1.0e7, hours=0),
        observation(value=2.0e5, hours=48),
        observation(value=30, hours=96),
        observation(loinc="26881-3", value=20.0, unit="pg/mL"),
        observation(loinc="1988-5", value=3.1, unit="mg/dL"),
        observation(loinc="731-0", value=0.8, unit="10*3/uL"),
    )


@pytest.fixture
def site_db(db: Database) -> Database:
    with db.transaction() as session:
        add_site(session, "site-a")
        add_patient(session, "site-a", "P001")
    return db


def _stored(db: Database) -> int:
    with db.transaction(readonly=True) as session:
        return count_measurements(session)


def test_a_bundle_is_stored_once(site_db: Database, catalogue: ObservableCatalogue) -> None:
    payload = json.dumps(six_observations())
    with site_db.transaction() as session:
        first = ingest_fhir(session, payload, catalogue, site="site-a")
    with site_db.transaction() as session:
        again = ingest_fhir(session, payload, catalogue, site="site-a")
    assert (first.inserted, first.duplicates, [p.pseudonym for p in first.patients]) == (6, 0, ["P001"])
    assert (again.inserted, again.duplicates) == (0, 6)
    with site_db.transaction(readonly=True) as session:
        patient = find_patient(session, "site-a", "P001")
        assert patient is not None
        rows = list_measurements(session, patient.id)
    assert len(rows) == 6
    viral = [r for r in rows if r.observable == "viral_load"]
    assert [round(r.observable_value or 0, 3) for r in viral] == [7.0, 5.301, 2.0]
    assert [r.censored for r in viral] == [False, False, True]
    crp = next(r for r in rows if r.observable == "crp")
    assert (crp.value, crp.unit, crp.observable_value, crp.observable_unit) == (3.1, "mg/dL", pytest.approx(31.0), "mg/L")  # fmt: skip
    assert all(len(r.payload_sha256) == 64 and r.source == "fhir" for r in rows)


def test_a_bundle_with_one_bad_entry_stores_nothing(
    site_db: Database, catalogue: ObservableCatalogue
) -> None:
    payload = six_observations()
    payload["entry"][5]["resource"]["valueQuantity"]["code"] = "mg/L"  # lymphocytes in mg/L
    bad_unit = r"^entry\[5\]\.resource\.valueQuantity\.code: "
    with pytest.raises(IngestError, match=bad_unit), site_db.transaction() as session:
        ingest_fhir(session, payload, catalogue, site="site-a")
    assert _stored(site_db) == 0


def test_an_unknown_patient_is_named_and_nothing_is_written(site_db: Database, catalogue: ObservableCatalogue) -> None:  # fmt: skip
    payload = bundle(observation(), observation(patient="P404", hours=1))
    unknown = r"^entry\[1\]\.resource\.subject\.reference: no patient 'P404'"
    with pytest.raises(IngestError, match=unknown), site_db.transaction() as session:
        ingest_fhir(session, payload, catalogue, site="site-a")
    assert _stored(site_db) == 0
    with site_db.transaction() as session:
        result = ingest_fhir(session, payload, catalogue, site="site-a", create_patients=True)
    assert result.inserted == 2 and [p.pseudonym for p in result.patients] == ["P001", "P404"]
    with site_db.transaction() as session, pytest.raises(NotFoundError, match="site"):
        ingest_fhir(session, payload, catalogue, site="site-z")


def test_a_failure_after_parsing_rolls_back_the_whole_payload(site_db: Database, catalogue: ObservableCatalogue) -> None:  # fmt: skip
    """P001's rows were written when P404 turned out unknown: the transaction takes them back."""
    payload = bundle(*[observation(hours=h) for h in range(5)], observation(patient="P404"))
    with pytest.raises(IngestError), site_db.transaction() as session:
        ingest_fhir(session, payload, catalogue, site="site-a")
    assert _stored(site_db) == 0


def test_the_same_patient_id_at_two_sites_is_two_patients(site_db: Database, catalogue: ObservableCatalogue) -> None:  # fmt: skip
    with site_db.transaction() as session:
        add_site(session, "site-b")
        ingest_fhir(session, observation(), catalogue, site="site-a")
        result = ingest_fhir(session, observation(), catalogue, site="site-b", create_patients=True)
    assert result.inserted == 1
    with site_db.transaction(readonly=True) as session:
        assert [(p.site, p.pseudonym) for p in list_patients(session)] == [
            ("site-a", "P001"),
            ("site-b", "P001"),
        ]


def test_csv_and_fhir_of_the_same_measurement_are_stored_once(site_db: Database, catalogue: ObservableCatalogue) -> None:  # fmt: skip
    csv_text = "patient,loinc,value,unit,time\nP001,94819-0,7,log10 [copies]/mL,2024-03-01T08:00:00Z\n"
    with site_db.transaction() as session:
        assert ingest_csv(session, csv_text, catalogue, site="site-a").inserted == 1
        assert ingest_fhir(session, observation(value=1.0e7), catalogue, site="site-a").duplicates == 1
        bad = csv_text + "P001,94819-0,8,log10 [copies]/mL,2024-03-02\n"
        with pytest.raises(IngestError, match="row 2, column 'time'"):
            ingest_csv(session, bad, catalogue, site="site-a")
    assert _stored(site_db) == 1
