"""Property-based fuzzing of FHIR and CSV ingest (hypothesis), on SQLite and PostgreSQL.

Whatever the payload, ingest either stores it whole (the row count grows by exactly what it reports
inserted, and inserted + duplicates is the number of measurements) or raises
:class:`~immunetwin.errors.IngestError` and the row count is unchanged. Any other exception is a bug.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fhir_examples import bundle, observation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from immunetwin.errors import IngestError
from immunetwin.io.clinical import ObservableCatalogue
from immunetwin.storage import Database, IngestResult, add_site, count_measurements, ingest_csv, ingest_fhir

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LOINCS = ["94819-0", "26881-3", "1988-5", "731-0", "2345-7", "", "94819-1", "x"]
UNITS = ["[copies]/mL", "{copies}/mL", "log10 [copies]/mL", "pg/mL", "ng/L", "mg/L", "mg/dL", "10*3/uL", "10*9/L",
         "/uL", "%", "1", "", "kg", "xyzzy", "10*", "[IU]/mL", "log10"]  # fmt: skip
PATIENTS = ["P001", "P002", "p-3.x_y", "", "bad id", "Group/1", "a" * 70]

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6
)  # fmt: skip
numbers = st.floats() | st.integers(min_value=-(10**30), max_value=10**400) | st.text(max_size=8)
MUTABLE = [("resourceType",), ("status",), ("code",), ("code", "coding"), ("subject",), ("subject", "reference"),
           ("effectiveDateTime",), ("valueQuantity",), ("valueQuantity", "comparator"), ("valueQuantity", "system"),
           ("valueString",), ("interpretation",), ("dataAbsentReason",), ("identifier",), ("valueCodeableConcept",)]  # fmt: skip


@st.composite
def observations(draw: st.DrawFn) -> dict[str, Any]:
    """An Observation, valid or not: random codes, units, numbers, times and one random field change."""
    resource = observation(
        patient=draw(st.sampled_from(PATIENTS)),
        loinc=draw(st.sampled_from(LOINCS)),
        value=draw(numbers),
        unit=draw(st.sampled_from(UNITS)),
        hours=draw(st.floats(min_value=-1e5, max_value=1e5)),
    )
    if draw(st.booleans()):
        path = draw(st.sampled_from(MUTABLE))
        parent = resource
        for key in path[:-1]:
            parent = parent.setdefault(key, {}) if isinstance(parent.get(key, {}), dict) else {}
        if draw(st.booleans()):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = draw(
                json_values | st.sampled_from(["<", "not detected", "< 50 [copies]/mL", "ND"])
            )
    return resource


@st.composite
def fhir_payloads(draw: st.DrawFn) -> Any:
    """An Observation, a Bundle of up to 5, or any JSON value; as an object, JSON text or bytes."""
    kind = draw(st.sampled_from(["observation", "bundle", "bundle", "junk"]))
    if kind == "observation":
        payload: Any = draw(observations())
    elif kind == "bundle":
        payload = bundle(*draw(st.lists(observations(), min_size=1, max_size=5)))
    else:
        payload = draw(json_values)
    form = draw(st.sampled_from(["object", "text", "bytes"]))
    if form == "object":
        return payload if isinstance(payload, dict) else {"resourceType": payload}
    text = json.dumps(payload)
    return text if form == "text" else text.encode()


CELLS = {
    "patient": st.sampled_from(PATIENTS),
    "loinc": st.sampled_from(LOINCS),
    "observable": st.sampled_from(["viral_load", "il6", "crp", "lymphocytes", "", "il7"]),
    "value": st.sampled_from(["1e6", "0", "-1", "nan", "inf", "< 100", "not detected", "1e999", "abc", ""])
    | st.floats().map(repr),
    "unit": st.sampled_from(UNITS),
    "time": st.sampled_from(["2024-03-01T08:00:00Z", "2024-03-01T08:00:00+05:30", "2024-03-01", "soon", ""]),
    "censored": st.sampled_from(["true", "false", "", "maybe"]),
}


GOOD_ROWS = [  # (loinc, value, unit) that convert
    ("94819-0", "1e6", "[copies]/mL"), ("94819-0", "< 100", "[copies]/mL"), ("94819-0", "not detected", ""),
    ("26881-3", "12.5", "pg/mL"), ("1988-5", "4.2", "mg/dL"), ("731-0", "0.9", "10*3/uL"),
]  # fmt: skip
STANDARD = ["patient", "loinc", "value", "unit", "time"]


@st.composite
def csv_texts(draw: st.DrawFn) -> str:
    """Mostly well-formed files with now and then a bad cell or column; sometimes random text."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=200))
    standard = draw(st.booleans())
    columns = STANDARD if standard else draw(st.lists(st.sampled_from([*CELLS, "colour"]), min_size=1, max_size=7, unique=True))  # fmt: skip
    lines = [",".join(columns)]
    for _ in range(draw(st.integers(0, 5))):
        loinc, value, unit = draw(st.sampled_from(GOOD_ROWS))
        good = {"patient": draw(st.sampled_from(PATIENTS[:3])), "loinc": loinc, "value": value, "unit": unit,
                "time": "2024-03-01T08:00:00Z", "observable": "", "censored": ""}  # fmt: skip
        if draw(st.integers(0, 3)) == 0:
            column = draw(st.sampled_from(list(CELLS)))
            good[column] = draw(CELLS[column])
        lines.append(",".join(good.get(c, "red").replace(",", ";") for c in columns))
    return "\n".join(lines) + "\n"


def _count(db: Database) -> int:
    with db.transaction(readonly=True) as session:
        return count_measurements(session)


def _all_or_nothing(
    db: Database, ingest: Callable[[Session], IngestResult], measurements: int | None
) -> None:
    before = _count(db)
    try:
        with db.transaction() as session:
            result = ingest(session)
    except IngestError:
        assert _count(db) == before
        return
    assert _count(db) == before + result.inserted
    if measurements is not None:
        assert result.inserted + result.duplicates == measurements


def _fresh_site(db: Database) -> None:
    with db.transaction() as session:
        add_site(session, "site-a")


@FUZZ
@given(payload=fhir_payloads())
def test_fhir_ingest_is_all_or_nothing(db: Database, catalogue: ObservableCatalogue, payload: Any) -> None:
    if _count(db) == 0 and not _has_site(db):
        _fresh_site(db)
    parsed = json.loads(payload) if isinstance(payload, str | bytes) else payload
    entries = len(parsed.get("entry") or []) if isinstance(parsed, dict) and parsed.get("resourceType") == "Bundle" else 1  # fmt: skip
    _all_or_nothing(
        db, lambda s: ingest_fhir(s, payload, catalogue, site="site-a", create_patients=True), entries
    )


@FUZZ
@given(text=csv_texts())
def test_csv_ingest_is_all_or_nothing(db: Database, catalogue: ObservableCatalogue, text: str) -> None:
    if not _has_site(db):
        _fresh_site(db)
    _all_or_nothing(db, lambda s: ingest_csv(s, text, catalogue, site="site-a", create_patients=True), None)


def _has_site(db: Database) -> bool:
    from immunetwin.storage import list_sites

    with db.transaction(readonly=True) as session:
        return bool(list_sites(session))


def test_the_fuzzers_reach_both_outcomes(catalogue: ObservableCatalogue) -> None:
    """Sanity check of the strategies: some generated payloads are accepted, some refused."""
    from immunetwin.io.fhir import read_fhir
    from immunetwin.io.measurements_csv import read_measurements_csv

    outcomes: dict[str, set[bool]] = {"fhir": set(), "csv": set()}

    @settings(max_examples=150, deadline=None, database=None)
    @given(payload=fhir_payloads(), text=csv_texts())
    def sample(payload: Any, text: str) -> None:
        for name, read, arg in (("fhir", read_fhir, payload), ("csv", read_measurements_csv, text)):
            try:
                read(arg, catalogue)
                outcomes[name].add(True)
            except IngestError:
                outcomes[name].add(False)

    sample()
    assert outcomes == {"fhir": {True, False}, "csv": {True, False}}
