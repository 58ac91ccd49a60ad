"""Every repository function, on SQLite and on PostgreSQL (the ``db`` fixture runs each test on both)."""

from __future__ import annotations

import hashlib
from dataclasses import FrozenInstanceError, replace
from datetime import timedelta

import pytest
from fhir_examples import T0
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from immunetwin.errors import InputError
from immunetwin.io.clinical import ClinicalMeasurement
from immunetwin.storage import (
    ChecksumError,
    ConflictError,
    Database,
    NotFoundError,
    acknowledge_alert,
    add_alert,
    add_measurements,
    add_patient,
    add_site,
    add_site_membership,
    add_user,
    authenticate,
    count_measurements,
    create_api_token,
    create_job,
    create_twin,
    ensure_patient,
    find_patient,
    get_alert,
    get_job,
    get_patient,
    get_site,
    get_twin,
    get_user,
    grant_role,
    list_alerts,
    list_api_tokens,
    list_audit,
    list_jobs,
    list_measurements,
    list_patients,
    list_sites,
    list_twins,
    list_users,
    load_twin_version,
    mark_interrupted_jobs_on_startup,
    record_audit,
    remove_site_membership,
    revoke_api_token,
    revoke_role,
    save_twin_version,
    set_active,
    set_password,
    set_reference_time,
    twin_history,
    update_job,
    verify_api_token,
)
from immunetwin.storage.tables import TwinVersionRow

PROVENANCE = hashlib.sha256(b"provenance").hexdigest()


def measurement(
    patient: str = "P001", hours: float = 0.0, value: float = 5.0, **changes: object
) -> ClinicalMeasurement:
    row = ClinicalMeasurement(
        patient=patient, loinc="94819-0", observable="viral_load", value=10.0**value, unit="[copies]/mL",
        observable_value=value, observable_unit="log10 copy/mL", censored=False, time=T0 + timedelta(hours=hours),
        source="test", payload_sha256="0" * 64,
    )  # fmt: skip
    return replace(row, **changes)


@pytest.fixture
def patient_db(db: Database) -> Database:
    with db.transaction() as session:
        add_site(session, "site-a", "Site A")
        add_site(session, "site-b")
        add_patient(session, "site-a", "P001")
        add_patient(session, "site-b", "P001")
    return db


def test_sites_and_patients(patient_db: Database) -> None:
    with patient_db.transaction() as s:
        assert [x.code for x in list_sites(s)] == ["site-a", "site-b"]
        assert get_site(s, "site-b").name == "site-b"
        a = find_patient(s, "site-a", "P001")
        assert a is not None and a.site == "site-a" and a.reference_time is None
        assert get_patient(s, a.id) == a
        assert find_patient(s, "site-a", "P404") is None
        assert [p.site for p in list_patients(s)] == ["site-a", "site-b"]
        assert [p.site for p in list_patients(s, sites=["site-b"])] == ["site-b"]
        again = ensure_patient(s, "site-a", "P001")
        assert again == a
        assert ensure_patient(s, "site-a", "P002").pseudonym == "P002"
        with pytest.raises(FrozenInstanceError):
            a.pseudonym = "x"  # type: ignore[misc]
    with patient_db.transaction() as s:
        with pytest.raises(ConflictError):
            add_patient(s, "site-a", "P001")
        with pytest.raises(ConflictError):
            add_site(s, "site-a")
        with pytest.raises(NotFoundError, match="no site 'nowhere'"):
            add_patient(s, "nowhere", "P009")
        with pytest.raises(InputError):
            add_patient(s, "site-a", "bad id with spaces")
        with pytest.raises(NotFoundError):
            get_patient(s, 10_000)
        add_patient(s, "site-a", "P003")  # the session is still usable after the refused inserts
    with patient_db.transaction(readonly=True) as s:
        assert len(list_patients(s, sites=["site-a"])) == 3


def test_measurements_are_stored_once_with_days(patient_db: Database) -> None:
    with patient_db.transaction() as s:
        p = find_patient(s, "site-a", "P001")
        assert p is not None
        rows = [measurement(hours=24 * i, value=3 + i) for i in range(4)]
        assert add_measurements(s, p, rows) == (4, 0)
        assert add_measurements(s, p, [*rows[:2], measurement(hours=200)]) == (1, 2)
        assert add_measurements(s, p, [rows[0], rows[0]]) == (0, 2)
        assert add_measurements(s, p, []) == (0, 0)
        with pytest.raises(InputError, match="expected 'P001'"):
            add_measurements(s, p, [measurement(patient="P002")])
    with patient_db.transaction(readonly=True) as s:
        stored = list_measurements(s, p.id)
        assert [m.observable_value for m in stored] == [3, 4, 5, 6, 5]
        assert stored[1].time == T0 + timedelta(hours=24) and stored[1].time.tzinfo is not None
        assert all(m.day is None for m in stored)
        assert (
            len(list_measurements(s, p.id, since=T0 + timedelta(hours=24), until=T0 + timedelta(hours=72)))
            == 2
        )
        assert list_measurements(s, p.id, observable="il6") == ()
        assert count_measurements(s, p.id) == 5 and count_measurements(s) == 5
    with patient_db.transaction() as s:
        set_reference_time(s, p.id, T0 - timedelta(days=5))
        assert [m.day for m in list_measurements(s, p.id)][:2] == [5.0, 6.0]
        add_measurements(s, get_patient(s, p.id), [measurement(hours=-24)])
        assert list_measurements(s, p.id)[0].day == 4.0


def test_twins_and_versions(patient_db: Database) -> None:
    with patient_db.transaction() as s:
        p = find_patient(s, "site-a", "P001")
        assert p is not None
        twin = create_twin(s, p.id, "viral_immune", created_by="alice")
        assert twin.latest_version == 0
        with pytest.raises(ConflictError):
            create_twin(s, p.id, "viral_immune")
        other = create_twin(s, p.id, "viral_immune", name="what-if")
        v1 = save_twin_version(s, twin.id, b"twin-1", reason="personalise", provenance_sha256=PROVENANCE, reference_time=T0)  # fmt: skip
        v2 = save_twin_version(s, twin.id, bytearray(b"twin-2" * 1000), reason="assimilate", provenance_sha256=PROVENANCE)  # fmt: skip
        assert (v1.version, v2.version, v2.size) == (1, 2, 6000)
        assert v1.blob_sha256 == hashlib.sha256(b"twin-1").hexdigest() and v1.reference_time == T0
        assert get_twin(s, twin.id).latest_version == 2 and get_twin(s, other.id).latest_version == 0
        assert [t.name for t in list_twins(s, p.id)] == ["", "what-if"]
        with pytest.raises(InputError):
            save_twin_version(s, twin.id, b"", reason="x", provenance_sha256=PROVENANCE)
        with pytest.raises(InputError):
            save_twin_version(s, twin.id, b"x", reason="x", provenance_sha256="abc")
        with pytest.raises(NotFoundError):
            save_twin_version(s, 999, b"x", reason="x", provenance_sha256=PROVENANCE)
    with patient_db.transaction(readonly=True) as s:
        assert twin_history(s, twin.id) == (v1, v2)
        assert load_twin_version(s, twin.id) == (v2, b"twin-2" * 1000)
        assert load_twin_version(s, twin.id, 1) == (v1, b"twin-1")
        with pytest.raises(NotFoundError):
            load_twin_version(s, twin.id, 3)
    with patient_db.transaction() as s:  # damage the stored bytes behind the repository's back
        s.get(TwinVersionRow, v1.id).blob = b"twin-X"  # type: ignore[union-attr]
    with patient_db.transaction(readonly=True) as s, pytest.raises(ChecksumError, match="version 1"):
        load_twin_version(s, twin.id, 1)


def test_jobs_move_through_their_states(patient_db: Database) -> None:
    t1 = T0 + timedelta(minutes=1)
    with patient_db.transaction() as s:
        job = create_job(
            s, "personalise", params={"template": "viral_immune", "draws": 400}, created_by="bob", now=T0
        )
        assert (job.state, job.progress, job.params["draws"], job.finished) == ("queued", 0.0, 400, False)
        running = update_job(s, job.id, state="running", progress=0.25, message="warm-up", now=t1)
        assert running.started_at == t1 and running.message == "warm-up"
        done = update_job(s, job.id, state="done", result_ref="twin:1/2", now=t1)
        assert (done.progress, done.finished, done.finished_at, done.result_ref) == (
            1.0,
            True,
            t1,
            "twin:1/2",
        )
        with pytest.raises(ConflictError, match="is done"):
            update_job(s, job.id, progress=0.5)
        other = create_job(s, "cohort")
        with pytest.raises(ConflictError):
            update_job(s, other.id, state="done")  # queued -> done skips running
        with pytest.raises(InputError):
            update_job(s, other.id, state="paused")
        with pytest.raises(InputError):
            update_job(s, other.id, progress=1.5)
        update_job(s, other.id, state="cancelled")
        failing = create_job(s, "fit")
        update_job(s, failing.id, state="running")
        failed = update_job(s, failing.id, state="failed", error="solver diverged")
        assert failed.error == "solver diverged"
        queued, running2 = create_job(s, "a"), create_job(s, "b")
        update_job(s, running2.id, state="running", progress=0.5)
        with pytest.raises(NotFoundError):
            get_job(s, 9999)
    with patient_db.transaction() as s:  # the server restarts
        interrupted = mark_interrupted_jobs_on_startup(s, "server restarted")
        assert {j.id for j in interrupted} == {queued.id, running2.id}
        assert all(j.state == "interrupted" and j.error == "server restarted" for j in interrupted)
        assert get_job(s, running2.id).progress == 0.5
        assert mark_interrupted_jobs_on_startup(s) == ()
        assert [j.kind for j in list_jobs(s)] == ["b", "a", "fit", "cohort", "personalise"]
        assert [j.kind for j in list_jobs(s, state="interrupted")] == ["b", "a"]
        assert [j.id for j in list_jobs(s, kind="fit")] == [failing.id]


def test_alerts(patient_db: Database) -> None:
    with patient_db.transaction() as s:
        p = find_patient(s, "site-a", "P001")
        assert p is not None
        first = add_alert(s, p.id, "viral load above the 97.5th percentile", observable="viral_load")
        second = add_alert(s, p.id, "CRP rising", severity="critical")
        with pytest.raises(InputError):
            add_alert(s, p.id, "x", severity="meh")
        seen = acknowledge_alert(s, first.id, "carol")
        assert seen.acknowledged_by == "carol" and seen.acknowledged_at is not None
        assert acknowledge_alert(s, first.id, "dave").acknowledged_by == "carol"
        assert [a.id for a in list_alerts(s, p.id)] == [second.id, first.id]
        assert [a.id for a in list_alerts(s, p.id, open_only=True)] == [second.id]
        assert get_alert(s, first.id) == seen and get_alert(s, second.id) == second
        assert (get_alert(s, second.id).severity, get_alert(s, second.id).acknowledged_at) == (
            "critical",
            None,
        )
        with pytest.raises(NotFoundError):
            acknowledge_alert(s, 999, "x")
        with pytest.raises(NotFoundError, match="no alert 999"):
            get_alert(s, 999)


def test_users_roles_sites_and_passwords(patient_db: Database) -> None:
    with patient_db.transaction() as s:
        alice = add_user(
            s, "alice", "correct horse", full_name="Alice", roles=["clinician"], sites=["site-a"]
        )
        assert (alice.roles, alice.sites) == (("clinician",), ("site-a",))
        with pytest.raises(ConflictError):
            add_user(s, "alice", "another password")
        with pytest.raises(InputError):
            add_user(s, "bob", "short")
        with pytest.raises(NotFoundError):
            add_user(s, "bob", "long enough", roles=["wizard"])
    with patient_db.transaction() as s:
        assert authenticate(s, "alice", "correct horse") == alice
        assert authenticate(s, "alice", "wrong horse") is None
        assert authenticate(s, "nobody", "correct horse") is None
        grant_role(s, "alice", "modeller")
        grant_role(s, "alice", "modeller")
        add_site_membership(s, alice.id, "site-b")
        assert get_user(s, "alice").roles == ("clinician", "modeller")
        assert remove_site_membership(s, "alice", "site-a").sites == ("site-b",)
        assert revoke_role(s, "alice", "clinician").roles == ("modeller",)
        set_password(s, "alice", "battery staple")
        assert authenticate(s, "alice", "battery staple") is not None
        assert set_active(s, "alice", False).active is False
        assert authenticate(s, "alice", "battery staple") is None
        assert [u.username for u in list_users(s)] == ["alice"]
        raw = s.execute(text("SELECT password_hash FROM users")).scalar_one()
        assert raw.startswith("$argon2") and "battery" not in raw


def test_api_tokens(patient_db: Database) -> None:
    with patient_db.transaction() as s:
        user = add_user(s, "robot", "a long password", roles=["modeller"])
        token, secret = create_api_token(s, user.id, "ci", now=T0)
        _expiring, secret2 = create_api_token(s, "robot", "short-lived", expires_at=T0 + timedelta(hours=1))
        assert secret.startswith("itw_") and secret[:12] == token.prefix and secret != secret2
        stored = s.execute(text("SELECT token_sha256 FROM api_tokens ORDER BY id")).scalars().all()
        assert secret not in stored and hashlib.sha256(secret.encode()).hexdigest() in stored
    with patient_db.transaction() as s:
        assert verify_api_token(s, secret) == get_user(s, "robot")
        assert verify_api_token(s, secret + "x") is None
        assert verify_api_token(s, secret2, now=T0) is not None
        assert verify_api_token(s, secret2, now=T0 + timedelta(hours=2)) is None
        revoked = revoke_api_token(s, token.id)
        assert revoked.revoked_at is not None and verify_api_token(s, secret) is None
        assert [t.name for t in list_api_tokens(s, "robot")] == ["ci", "short-lived"]
        set_active(s, "robot", False)
        assert verify_api_token(s, secret2, now=T0) is None


def test_audit_log_is_append_only(patient_db: Database) -> None:
    with patient_db.transaction() as s:
        p = find_patient(s, "site-a", "P001")
        assert p is not None
        entry = record_audit(s, actor="alice", action="read", resource="measurements", patient=p, now=T0)
        record_audit(s, actor="system", action="startup")
        assert (entry.patient, entry.site, entry.at) == ("P001", "site-a", T0)
        with pytest.raises(InputError):
            record_audit(s, actor="", action="read")
    for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), patient_db.transaction() as s:
            s.execute(text(statement))
    with patient_db.transaction(readonly=True) as s:
        assert [e.actor for e in list_audit(s)] == ["alice", "system"]
        assert [e.action for e in list_audit(s, patient_id=p.id)] == ["read"]
        assert list_audit(s, actor="system")[0].patient is None
        assert len(list_audit(s, since=T0 + timedelta(days=1))) == 1  # the system entry was written now


def test_deleting_a_patient_keeps_the_audit_log(patient_db: Database) -> None:
    with patient_db.transaction() as s:
        p = find_patient(s, "site-b", "P001")
        assert p is not None
        add_measurements(s, p, [measurement()])
        record_audit(s, actor="alice", action="write", patient=p)
        s.execute(text("DELETE FROM patients WHERE id = :id"), {"id": p.id})
    with patient_db.transaction(readonly=True) as s:
        assert count_measurements(s, p.id) == 0  # cascaded
        assert [e.patient for e in list_audit(s)] == ["P001"]


def test_a_failed_transaction_writes_nothing(patient_db: Database) -> None:
    with pytest.raises(RuntimeError), patient_db.transaction() as s:
        add_site(s, "site-c")
        raise RuntimeError("boom")
    with patient_db.transaction(readonly=True) as s:
        assert [x.code for x in list_sites(s)] == ["site-a", "site-b"]
