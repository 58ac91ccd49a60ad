"""In-silico trials: definitions, randomisation, determinism across executors, results on disk."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from immunetwin.cohorts import (
    DaskCluster,
    InProcess,
    Work,
    assign_arms,
    load_trial,
    parse_trial,
    run_chunks,
    run_trial,
    sample_population,
    write_trial,
)
from immunetwin.cohorts.execute import guided_bounds
from immunetwin.errors import InputError, UnknownIdError
from immunetwin.templates import Template

TRIAL = {
    "name": "tiv-antiviral", "template": "viral_tiv", "seed": 11, "horizon": 12, "step": 0.1,
    "population": {"source": "prior", "constraints": {"peak_viral_load": [5.5, 9.0]}},
    "arms": {"none": "none", "day1": "antiviral(start=1)", "day3": "antiviral(start=3)"},
    "control": "none", "endpoints": ["peak_viral_load", "viral_load_auc", "time_to_clearance"],
    "sample_size": 40, "execution": {"chunk_size": 16},
}  # fmt: skip


def _spec(**changes: object) -> object:
    return parse_trial(TRIAL | changes, where="t.yaml")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arms": {"none": "none"}}, r"t.yaml: arms: needs at least two arms"),
        ({"control": "placebo"}, r"t.yaml: control: 'placebo' is not an arm"),
        ({"sample_size": -3}, r"t.yaml: sample_size: must be a positive whole number"),
        ({"sample_size": "many"}, r"t.yaml: sample_size: must be a number"),
        ({"level": 1.5}, r"t.yaml: level: must be in \(0, 1\)"),
        ({"design": "crossover"}, r"t.yaml: design: must be one of paired, parallel"),
        ({"endpoints": []}, r"t.yaml: endpoints: must be a non-empty list"),
        ({"colour": "red"}, r"t.yaml: \(top level\): unknown keys \['colour'\]"),
        (
            {"population": {"constraints": {"peak_viral_load": [9, 5]}}},
            r"population.constraints.peak_viral_load",
        ),
        ({"population": {"source": "magic"}}, r"population.source: must be 'prior'"),
        ({"allocation": [1, 2]}, r"allocation: needs one ratio per arm"),
        ({"execution": {"scheduler": 8786}}, r"execution.scheduler: must be a scheduler address"),
        ({"execution": {"overlap": 0}}, r"execution.overlap: must be a positive whole number, got 0"),
        ({"solver": {"backend": "cuda"}}, r"t.yaml: solver.backend: must be one of xla, native, got 'cuda'"),
    ],
)
def test_bad_trial_definitions_name_the_key(change: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        _spec(**change)


def test_execution_overlap_reaches_the_in_process_executor() -> None:
    from immunetwin.cohorts.trial import _executor

    assert _executor(_spec(execution={"chunk_size": 16, "overlap": 2})) == InProcess(overlap=2)
    assert _executor(_spec()) == InProcess()  # default: decided by the device


def test_unknown_interventions_and_endpoints_name_the_arm(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"t.yaml: arms.bad: .*steroid"):
        run_trial(_spec(arms={"none": "none", "bad": "steroid(start=1)"}))
    with pytest.raises(InputError, match=r"t.yaml: endpoints: unknown outcome metric 'peak_damage'"):
        run_trial(_spec(endpoints=["peak_damage"]))
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\narms: [unclosed\n")
    with pytest.raises(InputError, match=r"broken.yaml: line \d+: invalid YAML"):
        load_trial(path)


def test_permuted_blocks_are_balanced_and_reproducible() -> None:
    rng = np.random.default_rng(0)
    a = assign_arms(100, (1, 1, 2), 8, rng)
    for lo in range(0, 96, 8):
        assert np.bincount(a[lo : lo + 8], minlength=3).tolist() == [2, 2, 4]
    b = assign_arms(100, (1, 1, 2), 8, np.random.default_rng(0))
    assert np.array_equal(a, b)
    with pytest.raises(InputError, match="multiple of the allocation total"):
        assign_arms(10, (1, 2), 4, rng)
    with pytest.raises(InputError, match="whole numbers"):
        assign_arms(10, (1, 1.5), 0, rng)


def test_results_do_not_depend_on_chunks_or_workers(tiv: Template) -> None:
    pop = sample_population(tiv, 30, key=2)
    work = Work("viral_tiv", ("none", "antiviral(start=2)"), horizon=12.0, step=0.1)
    runs = [
        run_chunks(work, pop.parameters, chunk_size=30, executor=InProcess()),
        run_chunks(work, pop.parameters, chunk_size=7, executor=InProcess()),
        run_chunks(work, pop.parameters, chunk_size=7, executor=InProcess(overlap=3)),  # chunks in threads
        run_chunks(work, pop.parameters, chunk_size=7, executor=DaskCluster(workers=1, cpu_devices=1)),
        run_chunks(work, pop.parameters, chunk_size=4, executor=DaskCluster(workers=4, cpu_devices=1)),
    ]
    ref = runs[0]
    assert ref.ok.all() and ref.outcomes["peak_viral_load"].shape == (30, 2)
    for other in runs[1:]:
        for k in ref.outcomes:
            assert np.array_equal(ref.outcomes[k], other.outcomes[k], equal_nan=True), k
        assert np.array_equal(ref.steps, other.steps)


def test_native_backend_results_do_not_depend_on_chunks_or_workers(tiv: Template) -> None:
    pop = sample_population(tiv, 30, key=2)
    work = Work("viral_tiv", ("none", "antiviral(start=2)"), horizon=12.0, step=0.1, backend="native")
    runs = [
        run_chunks(work, pop.parameters, chunk_size=30, executor=InProcess()),
        run_chunks(work, pop.parameters, chunk_size=7, executor=InProcess(overlap=3)),
        run_chunks(work, pop.parameters, chunk_size=4, executor=DaskCluster(workers=2, cpu_devices=1)),
    ]
    # the last chunks cut finer (1-patient pieces allowed): 5 chunks of 7 -> more, smaller tasks
    tasks: list[int] = []
    runs.append(
        run_chunks(work, pop.parameters, chunk_size=7, progress=lambda d, t: tasks.append(t),
                   executor=DaskCluster(workers=2, cpu_devices=1, smallest_piece=1))
    )  # fmt: skip
    assert set(tasks) == {len(guided_bounds(30, 7, 4, 1)) - 1} and tasks[0] > 5
    ref = runs[0]
    assert ref.ok.all()
    for other in runs[1:]:
        for k in ref.outcomes:
            assert np.array_equal(ref.outcomes[k], other.outcomes[k], equal_nan=True), k
        assert np.array_equal(ref.steps, other.steps)
    xla = run_chunks(dataclasses.replace(work, backend="xla"), pop.parameters, chunk_size=30)
    # the same method and controller: the same steps but where rounding tips an accept/reject decision
    assert np.mean(xla.steps == ref.steps) > 0.8 and np.abs(xla.steps - ref.steps).max() <= 10
    for k in ref.outcomes:  # answers within the solver tolerance (rtol 1e-6)
        np.testing.assert_allclose(ref.outcomes[k], xla.outcomes[k], rtol=1e-5, err_msg=k)
    with pytest.raises(UnknownIdError, match="backend"):
        Work("viral_tiv", ("none",), backend="gpu")


def test_in_process_overlap_must_be_positive() -> None:
    with pytest.raises(InputError, match="overlap must be a positive number of chunks, got 0"):
        InProcess(overlap=0)


def test_an_external_scheduler_gives_the_same_results(tiv: Template) -> None:
    from distributed import LocalCluster

    pop = sample_population(tiv, 12, key=3)
    work = Work("viral_tiv", ("none", "antiviral(start=2)"), horizon=12.0, step=0.1)
    ref = run_chunks(work, pop.parameters, chunk_size=12)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        ext = run_chunks(
            work, pop.parameters, chunk_size=5, executor=DaskCluster(address=cluster.scheduler_address)
        )
    for k in ref.outcomes:
        assert np.array_equal(ref.outcomes[k], ext.outcomes[k], equal_nan=True), k


def test_a_whole_trial_is_identical_on_one_or_four_workers(tmp_path: Path) -> None:
    spec = _spec()
    one = run_trial(spec)
    four = run_trial(dataclasses.replace(spec, chunk_size=5), executor=DaskCluster(workers=4, cpu_devices=1))
    pd.testing.assert_frame_equal(one.patients, four.patients)
    pd.testing.assert_frame_equal(one.contrasts, four.contrasts)
    # a course started near the peak lowers the titre burden; one started on day 1 only delays the
    # target-cell-limited infection (rebound after the course), so its effect is not significant
    assert one.contrast("day3", "viral_load_auc").upper < 0.0
    assert one.contrast("day1", "viral_load_auc").contains(0.0)
    paths = write_trial(one, tmp_path / "out")
    back = pd.read_parquet(paths["patients"])
    pd.testing.assert_frame_equal(back, one.patients)
    assert len(back) == 3 * 40 and set(back.arm) == {"none", "day1", "day3"}
    meta = json.loads(paths["trial"].read_text())
    assert meta["population"]["size"] == 40 and meta["spec"]["seed"] == 11
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_parallel_design_randomises_and_compares_independent_groups() -> None:
    spec = _spec(design="parallel", allocation=[1, 1, 2], block_size=8, sample_size=20)
    res = run_trial(spec)
    counts = res.patients.groupby("arm").size().to_dict()
    assert sum(counts.values()) == 60 and counts["day3"] == 30 and counts["none"] == 15
    assert res.patients.patient.is_unique  # one arm per patient
    ctl = res.summary[(res.summary.arm == "none") & (res.summary.endpoint == "peak_viral_load")].iloc[0]
    assert ctl.n == 15
    # Welch: the interval is wider than the paired one on the same endpoint
    paired = run_trial(_spec(sample_size=20))
    w = res.contrast("day1", "peak_viral_load")
    p = paired.contrast("day1", "peak_viral_load")
    assert (w.upper - w.lower) > (p.upper - p.lower)


def test_example_trial_file_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    spec = load_trial(root / "examples" / "trials" / "antiviral_timing.yaml")
    assert spec.template == "viral_immune" and spec.control == "none" and len(spec.arms) == 3
    raw = yaml.safe_load((root / "examples" / "trials" / "antiviral_timing.yaml").read_text())
    assert raw["design"] == spec.design
