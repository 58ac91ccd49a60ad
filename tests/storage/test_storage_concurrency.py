"""Concurrent writers: 8 threads x 500 measurements, with resends racing the first sends.

Every thread writes its own 500 measurements of one shared patient (created by whichever thread comes
first) in batches of 25, one transaction per batch, and also resends a batch of its neighbour's rows.
Afterwards exactly 8 x 500 rows exist (none lost, none duplicated) and the counts the writers were given
add up.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta

from fhir_examples import T0

from immunetwin.io.clinical import ClinicalMeasurement
from immunetwin.storage import (
    Database,
    add_site,
    count_measurements,
    find_patient,
    list_measurements,
    open_database,
    store_measurements,
)

THREADS, PER_THREAD, BATCH = 8, 500, 25
BASE = ClinicalMeasurement(
    patient="SHARED", loinc="26881-3", observable="il6", value=1.0, unit="pg/mL", observable_value=1.0,
    observable_unit="pg/mL", censored=False, time=T0, source="test", payload_sha256="0" * 64,
)  # fmt: skip


def rows_of(thread: int) -> list[ClinicalMeasurement]:
    """Thread ``thread``'s measurements: distinct times, so distinct idempotency keys."""
    return [
        replace(
            BASE,
            time=T0 + timedelta(minutes=thread * PER_THREAD + j),
            value=float(j),
            observable_value=float(j),
        )
        for j in range(PER_THREAD)
    ]


def writer(url: str, thread: int, results: list[tuple[int, int]], errors: list[BaseException], start: threading.Barrier) -> None:  # fmt: skip
    db = open_database(url, pool_size=2)
    try:
        mine, neighbour = rows_of(thread), rows_of((thread + 1) % THREADS)
        batches = [mine[i : i + BATCH] for i in range(0, PER_THREAD, BATCH)]
        batches.insert(len(batches) // 2, neighbour[:BATCH])  # a resend that races the neighbour's own send
        start.wait()
        for batch in batches:
            with db.transaction() as session:
                result = store_measurements(session, "site-a", batch, create_patients=True)
            results.append((result.inserted, result.duplicates))
    except BaseException as err:  # reported by the test, not lost in the thread
        errors.append(err)
    finally:
        db.close()


def test_eight_writers_lose_nothing_and_duplicate_nothing(db: Database) -> None:
    with db.transaction() as session:
        add_site(session, "site-a")
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)
    threads = [
        threading.Thread(target=writer, args=(db.url, i, results, errors, start)) for i in range(THREADS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[0]
    assert all(not t.is_alive() for t in threads)
    inserted, duplicates = sum(r[0] for r in results), sum(r[1] for r in results)
    assert inserted == THREADS * PER_THREAD
    assert inserted + duplicates == THREADS * (PER_THREAD + BATCH)
    with db.transaction(readonly=True) as session:
        patient = find_patient(session, "site-a", "SHARED")
        assert patient is not None
        assert count_measurements(session) == THREADS * PER_THREAD
        stored = list_measurements(session, patient.id)
    expected = {(m.time, m.value) for i in range(THREADS) for m in rows_of(i)}
    assert {(m.time, m.value) for m in stored} == expected
    assert len({m.key for m in stored}) == len(stored)
