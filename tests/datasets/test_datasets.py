"""The shipped viral-load datasets: shapes and ranges, and agreement with the shedding-hub source.

Sources (../shared/data/sarscov2, CC-BY-4.0): Ke et al. 2022 (Nat Microbiol 7:640), nasal swabs of
60 people; Wölfel et al. 2020 (Nature 581:465), sputum of 9 hospitalised patients (digitised).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from immunetwin.datasets import ke2022_nasal, viral_load_table, woelfel2020_sputum
from immunetwin.errors import UnknownIdError


def _source(shared_dir: Path, name: str, analyte: str) -> list[list[tuple[float, float]]]:
    """Per participant: (day since onset, copies or NaN when negative) of one analyte, in source order."""
    with open(shared_dir / "data" / "sarscov2" / name) as fh:
        doc = yaml.safe_load(fh)
    return [
        [(float(m["time"]), math.nan if m["value"] == "negative" else float(m["value"]))
         for m in person["measurements"] if m["analyte"] == analyte]
        for person in doc["participants"]
    ]  # fmt: skip


def test_woelfel2020_shape_and_ranges():
    d = woelfel2020_sputum()
    assert list(d.columns) == ["participant", "age", "sex", "days_since_onset", "copies_per_ml", "detected"]
    assert d["participant"].nunique() == 9 and len(d) == 146
    assert d["days_since_onset"].between(2, 28).all()
    pos = d[d["detected"] == 1]["copies_per_ml"]
    assert pos.notna().all() and d[d["detected"] == 0]["copies_per_ml"].isna().all()
    assert np.log10(pos).between(1.9, 9.0).all()  # LOQ 100 copies/mL; a few digitised values just below it
    assert not d.duplicated(["participant", "days_since_onset"]).any()


@pytest.mark.shared
def test_woelfel2020_matches_the_source(shared_dir):
    source = _source(shared_dir, "woelfel2020virological.yaml", "sputum")
    d = woelfel2020_sputum()
    assert len(source) == 9
    for i, rows in enumerate(source, start=1):
        # the source repeats one row exactly (wo09, day 10, negative); the CSV has it once
        unique = [r for k, r in enumerate(rows) if not any(_same(r, q) for q in rows[:k])]
        got = d[d["participant"] == f"wo{i:02d}"]
        assert got["days_since_onset"].tolist() == [t for t, _ in unique]
        np.testing.assert_array_equal(got["copies_per_ml"].to_numpy(), [v for _, v in unique])
    assert sum(len(r) for r in source) == len(d) + 1


def _same(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] == b[0] and (a[1] == b[1] or (math.isnan(a[1]) and math.isnan(b[1])))


@pytest.mark.shared
def test_ke2022_matches_the_source(shared_dir):
    source = _source(shared_dir, "ke2022daily.yaml", "nasal_SARSCoV2")
    d = ke2022_nasal()
    assert len(source) == 60 and len(d) == sum(len(r) for r in source)
    for i, rows in enumerate(source, start=1):
        got = d[d["participant"] == f"ke{i:02d}"]
        assert got["days_since_onset"].tolist() == [t for t, _ in rows]
        np.testing.assert_array_equal(got["copies_per_ml"].to_numpy(), [v for _, v in rows])


def test_viral_load_table_of_a_woelfel_patient():
    raw = woelfel2020_sputum()
    table = viral_load_table(raw, "wo08")
    rows = raw[raw["participant"] == "wo08"]
    assert table["time"].tolist() == (rows["days_since_onset"] + 5.0).tolist()
    assert table["censored"].tolist() == (rows["detected"] == 0).tolist()
    assert (table.loc[table["censored"], "value"] == 2.0).all()
    assert table.loc[0, "value"] == pytest.approx(np.log10(rows["copies_per_ml"].iloc[0]))
    with pytest.raises(UnknownIdError, match="wo10"):
        viral_load_table(raw, "wo10")
