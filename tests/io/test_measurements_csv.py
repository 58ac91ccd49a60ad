"""Measurement CSV: good files convert like FHIR; a bad one names the data row and the column."""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from immunetwin.errors import IngestError
from immunetwin.io.clinical import ObservableCatalogue, observable_catalogue
from immunetwin.io.fhir import read_fhir
from immunetwin.io.measurements_csv import read_measurements_csv

GOOD = """patient,loinc,observable,value,unit,time
P001,94819-0,,1e7,[copies]/mL,2024-03-01T08:00:00Z
P001,,viral_load,< 100,[copies]/mL,2024-03-03T08:00:00+00:00
P001,94819-0,viral_load,not detected,,2024-03-05T08:00:00Z
P002,26881-3,,12.5,pg/mL,2024-03-01T09:00:00+01:00
P002,1988-5,crp,4.2,mg/dL,2024-03-01T08:00:00Z
P002,731-0,,0.9,10*3/uL,2024-03-01T08:00:00Z
"""


@pytest.fixture(scope="module")
def catalogue() -> ObservableCatalogue:
    return observable_catalogue("viral_immune")


def test_a_good_file(catalogue: ObservableCatalogue, tmp_path: Path) -> None:
    rows = read_measurements_csv(GOOD, catalogue)
    assert [r.observable for r in rows] == ["viral_load"] * 3 + ["il6", "crp", "lymphocytes"]
    assert rows[0].observable_value == pytest.approx(7.0) and not rows[0].censored
    assert rows[1].censored and rows[1].observable_value == pytest.approx(2.0) and rows[1].loinc == "94819-0"
    assert rows[2].censored and rows[2].observable_value == 2.0
    assert rows[3].time == datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    assert rows[4].observable_value == pytest.approx(42.0)
    assert rows[5].observable_value == pytest.approx(0.9)
    assert all(r.source == "csv" for r in rows) and rows[3].origin == "row 4"
    path = tmp_path / "m.csv"
    path.write_text(GOOD, encoding="utf-8")
    assert read_measurements_csv(path, catalogue) == rows
    assert read_measurements_csv(GOOD.encode("utf-8-sig"), catalogue) == rows
    assert read_measurements_csv(io.StringIO(GOOD), catalogue) == rows


def test_the_same_measurement_has_the_same_key_in_csv_and_fhir(catalogue: ObservableCatalogue) -> None:
    (csv_row,) = read_measurements_csv(
        "patient,loinc,value,unit,time\nP001,1988-5,4.2,mg/dL,2024-03-01T08:00:00Z\n", catalogue
    )
    fhir = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1988-5"}]},
        "subject": {"reference": "Patient/P001"},
        "effectiveDateTime": "2024-03-01T09:00:00+01:00",
        "valueQuantity": {"value": 42, "system": "http://unitsofmeasure.org", "code": "mg/L"},
    }
    (fhir_row,) = read_fhir(fhir, catalogue)
    assert csv_row.key == fhir_row.key


HEADER = "patient,loinc,value,unit,time"
ROW = "P001,94819-0,1e6,[copies]/mL,2024-03-01T08:00:00Z"


@pytest.mark.parametrize(
    ("text", "row", "column", "words"),
    [
        (f"{HEADER},colour\n{ROW},red\n", 0, "colour", "unknown column"),
        ("patient,loinc,value,time\nP001,94819-0,1,2024-03-01T08:00:00Z\n", 0, "unit", "missing column"),
        (
            "patient,value,unit,time\nP001,1,mg/L,2024-03-01T08:00:00Z\n",
            0,
            "loinc",
            "'loinc' or an 'observable'",
        ),
        (f"{HEADER}\n", 1, "", "no data rows"),
        ("", 0, "", "empty file"),
        (f"{HEADER}\n{ROW}\nP001,94819-0,1e6\n", 2, "", "3 cells, expected 5"),
        (
            f"{HEADER}\n{ROW}\nP 001,94819-0,1e6,[copies]/mL,2024-03-01T08:00:00Z\n",
            2,
            "patient",
            "pseudonymous",
        ),
        (f"{HEADER}\n{ROW}\nP001,2345-7,1e6,[copies]/mL,2024-03-01T08:00:00Z\n", 2, "loinc", "not observed"),
        (f"{HEADER}\nP001,94819-0,nan,[copies]/mL,2024-03-01T08:00:00Z\n", 1, "value", "not a finite number"),
        (f"{HEADER}\nP001,94819-0,lots,[copies]/mL,2024-03-01T08:00:00Z\n", 1, "value", "'lots'"),
        (f"{HEADER}\nP001,94819-0,1e6,mg/L,2024-03-01T08:00:00Z\n", 1, "unit", "does not convert"),
        (f"{HEADER}\nP001,94819-0,1e6,,2024-03-01T08:00:00Z\n", 1, "unit", "UCUM unit"),
        (f"{HEADER}\nP001,1988-5,-3,mg/L,2024-03-01T08:00:00Z\n", 1, "value", "negative"),
        (f"{HEADER}\nP001,94819-0,1e6,[copies]/mL,2024-03-01 08:00\n", 1, "time", "no timezone"),
        (f"{HEADER}\nP001,94819-0,1e6,[copies]/mL,yesterday\n", 1, "time", "ISO 8601"),
        (
            "patient,observable,value,unit,time\nP001,il7,1,pg/mL,2024-03-01T08:00:00Z\n",
            1,
            "observable",
            "not an observable",
        ),
        (
            "patient,loinc,observable,value,unit,time\nP001,1988-5,il6,1,pg/mL,2024-03-01T08:00:00Z\n",
            1,
            "observable",
            "is 'crp'",
        ),
        (
            "patient,loinc,value,unit,time,censored\nP001,1988-5,1,mg/L,2024-03-01T08:00:00Z,maybe\n",
            1,
            "censored",
            "true/false",
        ),
        (
            "patient,loinc,value,unit,time\nP001,1988-5,not detected,mg/L,2024-03-01T08:00:00Z\n",
            1,
            "value",
            "no limit of detection",
        ),
    ],
)
def test_a_bad_file_names_row_and_column(catalogue: ObservableCatalogue, text: str, row: int, column: str, words: str) -> None:  # fmt: skip
    with pytest.raises(IngestError) as caught:
        read_measurements_csv(text, catalogue)
    assert (caught.value.row, caught.value.column) == (row, column)
    assert words in str(caught.value)
    assert str(caught.value).startswith(f"row {row}")


def test_a_censored_flag_keeps_the_limit(catalogue: ObservableCatalogue) -> None:
    text = (
        "patient,loinc,value,unit,time,censored\nP001,94819-0,3,log10 [copies]/mL,2024-03-01T08:00:00Z,true\n"
    )
    (row,) = read_measurements_csv(text, catalogue)
    assert row.censored and row.observable_value == pytest.approx(3.0) and not math.isnan(row.value)
