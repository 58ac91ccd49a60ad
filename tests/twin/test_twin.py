"""A twin is an immutable, versioned value: history, as_of, provenance."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

import immunetwin
from conftest import EARLY
from immunetwin.errors import InputError
from immunetwin.twin import Twin
from immunetwin.twin.twin import template_hash


def test_history_is_oldest_first_and_versions_count_up(sequential_twin):
    history = sequential_twin.history
    assert [t.version for t in history] == list(range(1, len(history) + 1))
    assert history[-1] is sequential_twin
    assert history[0].previous is None and history[0].step.verb == "personalise"
    assert all(t.step.verb == "assimilate" and t.step.rows == 1 for t in history[1:])
    times = [t.reference_time for t in history]
    assert times[0] == EARLY and np.all(np.diff(times) > 0)
    assert [len(t.observations) for t in history] == list(
        range(len(history[0].observations), len(history[0].observations) + len(history))
    )


def test_as_of_gives_what_the_twin_believed_on_a_past_day(sequential_twin):
    history = sequential_twin.history
    assert sequential_twin.as_of(EARLY) is history[0]
    assert sequential_twin.as_of(EARLY + 0.49) is history[0]
    assert sequential_twin.as_of(EARLY + 0.5) is history[1]
    assert sequential_twin.as_of(100.0) is sequential_twin
    with pytest.raises(InputError, match="did not exist on day 1"):
        sequential_twin.as_of(1.0)


def test_identity_and_template_version(early_twin, tiv):
    assert early_twin.template_name == "viral_tiv" and early_twin.template_version == tiv.metadata.version
    assert early_twin.template_hash == template_hash(tiv) and len(early_twin.template_hash) == 64
    assert early_twin.immunetwin_version == immunetwin.__version__
    assert early_twin.patient == "p01"
    assert early_twin.belief.parameter_ids == ("beta", "delta", "c")
    assert early_twin.belief.scales == ("log10", "log10", "log10")
    assert "p01" in repr(early_twin) and "version=1" in repr(early_twin)


def test_provenance_is_a_hash_chain_over_everything(sequential_twin):
    history = sequential_twin.history
    assert sequential_twin.verify()
    assert len({t.provenance for t in history}) == len(history)
    for older, newer in itertools.pairwise(history):
        assert newer.record()["previous"] == older.provenance
    # any change to the contents changes the hash: data, belief arrays, settings, alerts, previous
    twin = history[2]
    changed_data = dataclasses.replace(twin, observations=twin.observations + history[0].observations)
    theta = np.array(twin.belief.theta)
    theta[0, 0] += 1e-9
    changed_belief = dataclasses.replace(twin, belief=dataclasses.replace(twin.belief, theta=theta))
    changed_settings = dataclasses.replace(twin, settings=dataclasses.replace(twin.settings, band=0.9))
    changed_previous = dataclasses.replace(twin, previous=history[0])
    for changed in (changed_data, changed_belief, changed_settings, changed_previous):
        assert changed.compute_provenance() != twin.provenance


def test_nothing_can_be_mutated(early_twin):
    with pytest.raises(dataclasses.FrozenInstanceError):
        early_twin.version = 2  # type: ignore[misc]
    for array in (early_twin.belief.theta, early_twin.belief.log_weights, early_twin.belief.states,
                  early_twin.observations.value, early_twin.observations.time):  # fmt: skip
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 0
    with pytest.raises(TypeError):
        early_twin.belief.diagnostics["pareto_k"] = 0.0  # type: ignore[index]
    frame = early_twin.observations.to_frame()
    frame.loc[0, "value"] = 99.0  # a copy
    assert early_twin.observations.value[0] != 99.0


def test_belief_views(early_twin):
    b = early_twin.belief
    assert b.size == len(b.theta) == 400
    assert b.weights.sum() == pytest.approx(1.0)
    assert 1 <= b.ess <= b.size
    np.testing.assert_allclose(np.log10(b.values["beta"]), b.theta[:, 0])
    target_cells = b.state("T")  # at day 3: from 4e8 to near depletion; solver error ~ atol
    assert (
        target_cells.shape == (b.size,)
        and np.all(target_cells > -1e-6 * 4e8)
        and np.median(target_cells) < 4e8
    )
    summary = b.summary()
    assert list(summary["parameter"]) == ["beta", "delta", "c"]
    assert np.all(summary["q5"] <= summary["q50"]) and np.all(summary["q50"] <= summary["q95"])
    assert b.covariance().shape == (3, 3)
    with pytest.raises(InputError, match="unknown state"):
        b.state("X")


def test_create_computes_the_provenance(early_twin):
    fields = {f.name: getattr(early_twin, f.name) for f in dataclasses.fields(Twin)}
    again = Twin.create(**fields)
    assert again.provenance == early_twin.provenance
