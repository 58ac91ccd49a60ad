"""Forecast, decision and history of a stored twin through the service: access, cache, audit."""

from __future__ import annotations

import numpy as np
import pytest

from immunetwin import service, storage
from immunetwin.service import PermissionDeniedError, TwinCache
from immunetwin.storage import Database
from service.fixtures import World


def test_forecast_is_audited_cached_and_site_bound(db: Database, world: World, stored_twin: int) -> None:
    cache, clinician = TwinCache(), world.principals["clin_north"]
    view, fc = service.forecast_twin(db, clinician, cache, stored_twin, horizon=7.0)
    assert view.version.version == 1 and view.twin.verify()
    assert fc.times[0] == pytest.approx(3.0) and fc.times[-1] == pytest.approx(10.0)
    q = fc.quantiles("viral_load", "predictive")
    assert np.all(np.diff(q, axis=1) >= 0) and fc.failed == 0
    again, _ = service.forecast_twin(
        db, clinician, cache, stored_twin, horizon=7.0, treatments=["antiviral(start=3)"]
    )
    assert again.twin is view.twin  # the cache served the loaded twin
    for name in ("clin_south", "nobody_north"):
        with pytest.raises(PermissionDeniedError):
            service.forecast_twin(db, world.principals[name], cache, stored_twin)
    with db.transaction() as session:
        reads = [a for a in storage.list_audit(session, patient_id=world.north.id) if a.resource == "twin"]
    assert [a.actor for a in reads] == ["clin_north", "clin_north"]
    assert all("forecast of twin" in a.detail for a in reads)


def test_decision_compares_the_default_scenarios(db: Database, world: World, stored_twin: int) -> None:
    _, comparison, decision = service.decide_twin(
        db, world.principals["mod_north"], TwinCache(), stored_twin,
        weights={"viral_load_auc": 1.0}, costs={"antiviral": 0.5}, horizon=20.0,
    )  # fmt: skip
    assert comparison.names == ("none", "antiviral(start=3)")
    assert str(decision.action) in ("TREAT", "DO NOT TREAT") and decision.reasons


def test_history_lists_the_stored_versions(db: Database, world: World, stored_twin: int) -> None:
    record, versions = service.twin_history(db, world.principals["admin"], stored_twin)
    assert record.latest_version == 1 and [v.version for v in versions] == [1]
    assert [t.id for t in service.list_twins(db, world.principals["clin_north"], world.north.id)] == [
        stored_twin
    ]
