"""Jobs: assimilate with alerts, failure, cancellation (before and while running), interruption at
start-up, and the Dask runner."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from immunetwin import service, storage
from immunetwin.service import JobContext, ManualRunner, PermissionDeniedError, ServiceSettings, TwinCache
from immunetwin.storage import Database
from service.fixtures import EARLY, World, csv_text


def _runner(db: Database, tmp_path: Path) -> ManualRunner:
    return ManualRunner(JobContext(db, TwinCache(), tmp_path / "reports"))


def _late_rows(tiv_data: pd.DataFrame, outlier: float = 0.0) -> pd.DataFrame:
    """Days 3.5 and 4 (the second ``outlier`` log10 units off)."""
    rows = tiv_data[(tiv_data.time > EARLY) & (tiv_data.time <= 4.0)].copy()
    rows.loc[rows.index[-1], "value"] += outlier
    return rows


def _versions(db: Database, twin_id: int) -> list[int]:
    with db.transaction() as session:
        return [v.version for v in storage.twin_history(session, twin_id)]


def test_assimilate_job_saves_one_version_per_day_and_raises_alerts(
    db: Database, world: World, stored_twin: int, tiv_data: pd.DataFrame, tmp_path: Path
) -> None:
    clinician, runner = world.principals["clin_north"], _runner(db, tmp_path)
    service.ingest(db, clinician, csv_text("N1", _late_rows(tiv_data, outlier=4.0)), kind="csv", site="north", template="viral_tiv")  # fmt: skip
    job = service.start_assimilate(db, world.principals["mod_north"], runner, stored_twin)
    assert runner.submitted == [job.id]
    assert runner.run(job.id) == "done"
    done = service.get_job(db, clinician, job.id)
    assert done.progress == 1.0 and done.result_ref == f"twin:{stored_twin}/v3"
    assert _versions(db, stored_twin) == [1, 2, 3]
    alerts = service.list_alerts(db, clinician, patient_id=world.north.id)
    assert len(alerts) == 1 and "above the 97.5th percentile" in alerts[0].message
    assert service.list_alerts(db, world.principals["clin_south"]) == ()
    service.acknowledge_alert(db, clinician, alerts[0].id)
    assert service.list_alerts(db, clinician, open_only=True) == ()
    again = service.start_assimilate(db, clinician, runner, stored_twin)
    assert runner.run(again.id) == "done"
    assert "no new measurements" in service.get_job(db, clinician, again.id).message
    with pytest.raises(PermissionDeniedError):
        service.start_assimilate(db, world.principals["clin_south"], runner, stored_twin)


def test_a_job_cancelled_while_running_persists_nothing(
    db: Database, world: World, stored_twin: int, tiv_data: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    import immunetwin.twin

    clinician, runner = world.principals["clin_north"], _runner(db, tmp_path)
    service.ingest(
        db, clinician, csv_text("N1", _late_rows(tiv_data)), kind="csv", site="north", template="viral_tiv"
    )
    job = service.start_assimilate(db, clinician, runner, stored_twin)
    real = immunetwin.twin.assimilate

    def cancelled_meanwhile(*args, **kwargs):  # the user cancels while the first day is absorbed
        if service.get_job(db, clinician, job.id).state == "running":
            service.cancel_job(db, clinician, runner, job.id)
        return real(*args, **kwargs)

    monkeypatch.setattr(immunetwin.twin, "assimilate", cancelled_meanwhile)
    assert runner.run(job.id) == "cancelled"
    assert runner.cancelled == [job.id]
    assert service.get_job(db, clinician, job.id).state == "cancelled"
    assert _versions(db, stored_twin) == [1]
    with pytest.raises(storage.ConflictError):
        service.cancel_job(db, clinician, runner, job.id)


def test_a_job_cancelled_before_it_starts_is_skipped(db: Database, world: World, stored_twin: int, tmp_path: Path) -> None:  # fmt: skip
    clinician, runner = world.principals["clin_north"], _runner(db, tmp_path)
    job = service.start_assimilate(db, clinician, runner, stored_twin)
    service.cancel_job(db, clinician, runner, job.id)
    assert runner.run(job.id) == "skipped"


def test_a_failing_job_records_why(
    db: Database, world: World, settings: ServiceSettings, tmp_path: Path
) -> None:
    clinician, runner = world.principals["clin_south"], _runner(db, tmp_path)
    twin, job = service.start_twin(db, clinician, runner, settings, TwinCache(), world.south.id, "viral_tiv")
    assert twin.latest_version == 0 and job.params["draws"] == settings.twin_draws
    assert runner.run(job.id) == "failed"
    failed = service.get_job(db, clinician, job.id)
    assert "no measurement of viral_load" in (failed.error or "")
    with pytest.raises(storage.ConflictError):  # one twin per template and name
        service.start_twin(db, clinician, runner, settings, TwinCache(), world.south.id, "viral_tiv")
    with pytest.raises(service.PermissionDeniedError):
        service.get_job(db, world.principals["clin_north"], job.id)


def test_unfinished_jobs_are_marked_interrupted_at_start_up(db: Database, world: World, stored_twin: int, tmp_path: Path) -> None:  # fmt: skip
    clinician = world.principals["clin_north"]
    queued = service.start_assimilate(db, clinician, _runner(db, tmp_path), stored_twin)
    assert [j.id for j in service.mark_interrupted(db, "test restart")] == [queued.id]
    job = service.get_job(db, clinician, queued.id)
    assert job.state == "interrupted" and job.error == "test restart"
    assert [j.id for j in service.list_jobs(db, clinician, state="interrupted")] == [queued.id]
    assert service.list_jobs(db, world.principals["clin_south"]) == ()


def test_the_dask_runner_runs_jobs_on_a_local_cluster(db: Database, world: World, stored_twin: int, settings: ServiceSettings) -> None:  # fmt: skip
    clinician = world.principals["clin_north"]
    runner = service.DaskRunner(settings, db)
    try:
        job = service.start_assimilate(db, clinician, runner, stored_twin)  # nothing new: a quick job
        _, failing = service.start_twin(db, world.principals["clin_south"], runner, settings, TwinCache(), world.south.id, "viral_tiv")  # fmt: skip
        runner.wait(timeout=120)
    finally:
        runner.close()
    assert service.get_job(db, clinician, job.id).state == "done"
    assert service.get_job(db, world.principals["admin"], failing.id).state == "failed"


def test_an_alert_is_shown_only_to_users_of_its_site_and_audited(db: Database, world: World) -> None:
    with db.transaction() as session:
        alert = storage.add_alert(
            session, world.north.id, "viral_load above the band", observable="viral_load"
        )
    p = world.principals
    for user in ("clin_north", "mod_north", "admin"):
        assert service.get_alert(db, p[user], alert.id) == alert, user
    for user in ("clin_south", "nobody_north"):
        with pytest.raises(PermissionDeniedError):
            service.get_alert(db, p[user], alert.id)
    with pytest.raises(storage.NotFoundError, match="no alert"):
        service.get_alert(db, p["admin"], alert.id + 1)
    with db.transaction() as session:
        reads = [e for e in storage.list_audit(session, patient_id=world.north.id) if e.resource == "alert"]
    assert [(e.actor, e.action, e.detail) for e in reads] == [
        (user, "read", f"alert {alert.id}") for user in ("clin_north", "mod_north", "admin")
    ]
    seen = service.acknowledge_alert(db, p["clin_north"], alert.id)
    assert service.get_alert(db, p["mod_north"], alert.id) == seen and seen.acknowledged_by == "clin_north"
