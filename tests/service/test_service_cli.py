"""The service commands through typer's CliRunner: first admin, sites, users, patients, ingest and the
stored-twin commands (a twin is stored directly: personalising is covered by the job tests)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from immunetwin import storage
from immunetwin.cli import app
from immunetwin.storage import open_database
from service.fixtures import EARLY, World, csv_text, store_twin


@pytest.fixture
def home(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IMMUNETWIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IMMUNETWIN_DATABASE_URL", database_url)
    return tmp_path / "home"


def _run(*args: str, input: str | None = None) -> str:
    result = CliRunner().invoke(app, list(args), input=input)
    assert result.exit_code == 0, f"{args}: {result.output}\n{result.exception!r}"
    return result.output


def test_first_admin_sites_users_patients_and_ingest(home: Path, database_url: str) -> None:
    _run("sites", "add", "north", "--name", "North Hospital")
    out = _run("users", "add", "root", "--role", "admin", input="long-password\nlong-password\n")
    assert "roles admin" in out
    _run("users", "add", "ada", "--role", "clinician", "--site", "north", "--password", "long-password")
    assert "ada" in _run("users", "list")
    _run("patients", "add", "north", "N1", "--reference-time", "2024-03-01T00:00:00Z")
    assert "N1" in _run("patients", "list", "--site", "north")
    file = home / "n1.csv"
    file.write_text(
        "patient,observable,value,unit,time\nN1,viral_load,3.5,log10 TCID50/mL,2024-03-01T12:00:00Z\n"
    )
    assert "1 stored, 0 already there" in _run(
        "ingest", str(file), "--site", "north", "--template", "viral_tiv"
    )
    assert "0 stored, 1 already there" in _run(
        "ingest", str(file), "--site", "north", "--template", "viral_tiv"
    )
    bad = CliRunner().invoke(app, ["patients", "add", "nowhere", "X"])
    assert bad.exit_code != 0 and "site" in str(bad.exception)
    db = open_database(database_url)
    with db.transaction() as session:
        assert {a.action for a in storage.list_audit(session)} >= {"create", "ingest", "list"}
        assert all(a.actor.startswith("cli:") for a in storage.list_audit(session))
    db.close()


def test_stored_twin_forecast_decide_and_update(home: Path, db: storage.Database, world: World, tiv_twin, tiv_data: pd.DataFrame) -> None:  # fmt: skip
    twin_id = store_twin(db, world, tiv_twin, tiv_data[tiv_data.time <= EARLY])
    out = _run("twin", "forecast", str(twin_id), "--horizon", "5", "--out", str(home / "fc.csv"))
    assert "viral_load median" in out and (home / "fc.csv").is_file()
    out = _run("twin", "decide", str(twin_id), "--weights", "viral_load_auc=1", "--costs", "antiviral=0.5", "--horizon", "15")  # fmt: skip
    assert "decision:" in out
    next_day = tiv_data[(tiv_data.time > EARLY) & (tiv_data.time <= 3.5)]
    file = home / "late.csv"
    file.write_text(csv_text("N1", next_day))
    _run("ingest", str(file), "--site", "north", "--template", "viral_tiv")
    assert f"saved twin:{twin_id}/v2" in _run("twin", "update", str(twin_id))
