"""What a job does: personalise, assimilate or report, with progress, cancellation and its result.

:func:`execute_job` runs one queued job to its end wherever it is called (a Dask worker, or the
calling thread for the CLI). It marks the job running, reports progress into the jobs table, and
persists its result in the same transaction that marks it done, so a job that was cancelled (or
interrupted) meanwhile persists nothing: the final :func:`~immunetwin.storage.update_job` raises
:class:`~immunetwin.storage.ConflictError` and the transaction rolls back. Cancellation is checked
at each progress step; a running ``personalise`` call itself is not interrupted (its result is
discarded).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from immunetwin import storage
from immunetwin.errors import ImmunetwinError, InputError
from immunetwin.service.twinstore import TwinCache, measurement_table, new_rows, twin_to_bytes
from immunetwin.storage import ConflictError, Database, JobRecord
from immunetwin.twin import Twin

__all__ = ["JobCancelled", "JobContext", "execute_job"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    """What a job needs: the database, the twin cache and where reports go."""

    db: Database
    cache: TwinCache
    reports_dir: Path


class JobCancelled(Exception):  # noqa: N818 (a signal, not an error)
    """The job was cancelled or interrupted while it ran; it stops and persists nothing."""


def _progress(ctx: JobContext, job_id: int, fraction: float, message: str) -> None:
    try:
        with ctx.db.transaction() as session:
            storage.update_job(session, job_id, progress=fraction, message=message)
    except ConflictError:
        raise JobCancelled from None


def _key(seed: int, fold: int = 0) -> Any:
    import jax

    return jax.random.fold_in(jax.random.PRNGKey(seed), fold)


def _load(ctx: JobContext, twin_id: int) -> tuple[storage.TwinRecord, storage.PatientRecord, Any, list]:
    """The twin row, its patient, the patient's twin table and stored measurements (one transaction)."""
    with ctx.db.transaction(readonly=True) as session:
        twin = storage.get_twin(session, twin_id)
        patient = storage.get_patient(session, twin.patient_id)
        rows = list(storage.list_measurements(session, patient.id))
    return twin, patient, measurement_table(patient, rows, ctx.cache.template(twin.template)), rows


def _latest(ctx: JobContext, record: storage.TwinRecord) -> Twin:
    with ctx.db.transaction(readonly=True) as session:
        version, blob = storage.load_twin_version(session, record.id)
    return ctx.cache.twin(version, record.template, lambda: blob)


def _persist(
    ctx: JobContext, job: JobRecord, record: storage.TwinRecord, twins: list[Twin], reason: str
) -> str:
    """Save the new twin versions, their alerts, an audit entry and ``done``, in one transaction."""
    with ctx.db.transaction() as session:
        current = storage.get_twin(session, record.id).latest_version
        if current != twins[0].version - 1:
            raise ConflictError(
                f"twin {record.id} is at version {current} now (another job saved it while this one ran):"
                " run this one again"
            )
        patient = storage.get_patient(session, record.patient_id)
        saved = []
        for twin in twins:
            version = storage.save_twin_version(
                session, record.id, twin_to_bytes(twin), reason=reason, provenance_sha256=twin.provenance,
                created_by=job.created_by,
            )  # fmt: skip
            saved.append((version, twin))
            for alert in (a for a in twin.alerts if a.version == twin.version - 1):
                storage.add_alert(session, patient.id, alert.message, observable=alert.observable,
                                  twin_version_id=version.id)  # fmt: skip
        ref = f"twin:{record.id}/v{saved[-1][0].version}"
        storage.update_job(session, job.id, state="done", message=f"saved {ref}", result_ref=ref)
        storage.record_audit(session, actor=job.created_by or "system", action="write", resource="twin",
                             patient=patient, detail=f"{ref} ({reason}, job {job.id})")  # fmt: skip
    for version, twin in saved:
        ctx.cache.remember(version, twin)
    return ref


def _finish(ctx: JobContext, job: JobRecord, message: str, result_ref: str | None = None) -> None:
    with ctx.db.transaction() as session:
        storage.update_job(session, job.id, state="done", message=message, result_ref=result_ref)


def run_personalise(ctx: JobContext, job: JobRecord) -> None:
    """Version 1 of a stored twin from the patient's measurements."""
    from immunetwin.twin import personalise

    p = job.params
    _progress(ctx, job.id, 0.02, "reading the measurements")
    record, patient, table, _ = _load(ctx, int(p["twin_id"]))
    if record.latest_version > 0:
        raise InputError(f"twin {record.id} is personalised already (version {record.latest_version})")
    _progress(ctx, job.id, 0.05, f"personalising on {len(table)} measurements ")
    twin = personalise(
        ctx.cache.template(record.template), table, patient=patient.pseudonym, key=_key(int(p.get("seed", 0))),
        estimate=p.get("estimate"), draws=int(p["draws"]),
    )  # fmt: skip
    _progress(ctx, job.id, 0.95, "saving version 1")
    _persist(ctx, job, record, [twin], "personalise")


def run_assimilate(ctx: JobContext, job: JobRecord) -> None:
    """One new version per measurement day the twin has not seen (scored and alerted on the way)."""
    from immunetwin.twin import assimilate

    p = job.params
    _progress(ctx, job.id, 0.02, "reading the measurements")
    record, _, table, _ = _load(ctx, int(p["twin_id"]))
    if record.latest_version == 0:
        raise InputError(f"twin {record.id} has no version yet (its personalise job has not finished)")
    twin = _latest(ctx, record)
    fresh, early = new_rows(twin, table)
    skipped = (
        f"; {early} measurements before the twin's data were skipped (personalise again)" if early else ""
    )
    if fresh.empty:
        _finish(ctx, job, f"no new measurements for version {twin.version}{skipped}")
        return
    days = sorted(fresh["time"].unique())
    made: list[Twin] = []
    for k, day in enumerate(days):
        _progress(
            ctx, job.id, 0.05 + 0.9 * k / len(days), f"assimilating day {day:g} ({k + 1} of {len(days)})"
        )
        twin = assimilate(twin, fresh[fresh["time"] == day], key=_key(int(p.get("seed", 0)), twin.version))
        made.append(twin)
    _progress(ctx, job.id, 0.96, f"saving versions {made[0].version} to {made[-1].version}{skipped}")
    _persist(ctx, job, record, made, "assimilate")


def run_report(ctx: JobContext, job: JobRecord) -> None:
    """The HTML report of a twin version, with the scenario comparison and decision if asked."""
    from immunetwin.service.decisions import compare_and_decide
    from immunetwin.web import build_report, write_report

    p = job.params
    _progress(ctx, job.id, 0.05, "loading the twin")
    with ctx.db.transaction(readonly=True) as session:
        record = storage.get_twin(session, int(p["twin_id"]))
        version, blob = storage.load_twin_version(session, record.id, p.get("version"))
    twin = ctx.cache.twin(version, record.template, lambda: blob)
    comparison = decision = None
    if p.get("weights"):
        _progress(ctx, job.id, 0.2, "comparing scenarios")
        comparison, decision = compare_and_decide(twin, p.get("scenarios"), p["weights"], p.get("costs") or {},
                                                  float(p.get("decision_horizon", 40.0)))  # fmt: skip
    _progress(ctx, job.id, 0.5, "simulating the bands and writing the report")
    report = build_report(
        twin, horizon=float(p.get("horizon", 14.0)), comparison=comparison, decision=decision
    )
    name = f"job-{job.id}.html"
    write_report(report, ctx.reports_dir / name)
    _finish(ctx, job, f"report of twin {record.id} version {version.version}", f"report:{name}")


BODIES: Mapping[str, Callable[[JobContext, JobRecord], None]] = {
    "personalise": run_personalise,
    "assimilate": run_assimilate,
    "report": run_report,
}


def _fail(ctx: JobContext, job_id: int, error: str) -> None:
    try:
        with ctx.db.transaction() as session:
            storage.update_job(session, job_id, state="failed", error=error[:2000], message="failed")
    except ConflictError:  # cancelled or interrupted meanwhile: that state stays
        pass


def execute_job(ctx: JobContext, job_id: int) -> str:
    """Run the queued job ``job_id`` to its end; returns its final state.

    Errors of the job's input (:class:`~immunetwin.errors.ImmunetwinError`) fail it with their message;
    anything else fails it with the exception's type and message (and is logged with its traceback).
    """
    try:
        with ctx.db.transaction() as session:
            job = storage.update_job(session, job_id, state="running", progress=0.0, message="started")
    except ConflictError:
        return "skipped"  # cancelled or interrupted before it started
    body = BODIES.get(job.kind)
    try:
        if body is None:
            raise InputError(f"unknown job kind {job.kind!r} (known: {', '.join(BODIES)})")
        body(ctx, job)
    except JobCancelled:
        return "cancelled"
    except ConflictError as err:
        _fail(ctx, job_id, str(err))
    except ImmunetwinError as err:
        _fail(ctx, job_id, str(err))
    except Exception as err:  # a bug or an outage: recorded on the job, never lost
        _log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        _fail(ctx, job_id, f"{type(err).__name__}: {err}")
    with ctx.db.transaction(readonly=True) as session:
        return storage.get_job(session, job_id).state
