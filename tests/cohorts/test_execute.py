"""Executors' placement of work on the machine: cores shared out among local Dask workers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from immunetwin.cohorts import DaskCluster
from immunetwin.cohorts.execute import balance_tail, guided_bounds, share_cores
from immunetwin.errors import InputError


def test_cores_are_shared_in_disjoint_blocks_that_differ_by_at_most_one() -> None:
    assert share_cores((0, 1), 2) == [(0,), (1,)]
    assert share_cores((0, 1, 2, 3, 4), 2) == [(0, 1, 2), (3, 4)]
    assert share_cores((2, 5, 7, 9, 11, 12, 13), 3) == [(2, 5, 7), (9, 11), (12, 13)]
    assert share_cores((0, 1, 2, 3), 1) == [(0, 1, 2, 3)]
    assert share_cores((0, 1), 3) is None  # more workers than cores: the OS shares them out
    with pytest.raises(InputError, match="workers must be >= 1, got 0"):
        share_cores((0, 1), 0)


def _placement() -> tuple[tuple[int, ...], int]:
    """On a worker: the cores its threads may run on, and its JAX CPU devices."""
    import jax

    return tuple(sorted(os.sched_getaffinity(0))), jax.local_device_count("cpu")


def _placements(executor: DaskCluster) -> list[tuple[tuple[int, ...], int]]:
    with executor.connect() as client:
        return sorted(client.run(_placement).values())


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no per-thread CPU affinity on this OS")
def test_local_workers_each_run_on_their_own_cores() -> None:
    cores = tuple(sorted(os.sched_getaffinity(0)))
    workers = min(2, len(cores))
    blocks = share_cores(cores, workers)
    assert blocks is not None
    pinned = _placements(DaskCluster(workers=workers))
    assert pinned == sorted((block, len(block)) for block in blocks)
    free = _placements(DaskCluster(workers=workers, pin_cores=False))
    assert [c for c, _ in free] == [cores] * workers
    assert [n for _, n in free] == [len(cores) // workers] * workers


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no per-thread CPU affinity on this OS")
def test_cluster_options_size_the_cluster_and_the_shares() -> None:
    cores = tuple(sorted(os.sched_getaffinity(0)))
    # the cluster's own n_workers wins over `workers`: one worker, given every core
    assert _placements(DaskCluster(workers=3, cluster_options={"n_workers": 1})) == [(cores, len(cores))]


def test_work_computes_the_outcomes_it_names_and_refuses_unknown_ones() -> None:
    from immunetwin.cohorts import Work, run_chunks
    from immunetwin.errors import UnknownIdError

    params = {"beta": np.array([4e-5, 6e-5])}
    one = run_chunks(Work("viral_immune", outcomes=("peak_damage",), backend="native"), params)
    every = run_chunks(Work("viral_immune", backend="native"), params)
    assert set(one.outcomes) == {"peak_damage"} and len(every.outcomes) > 1
    np.testing.assert_array_equal(one.outcomes["peak_damage"], every.outcomes["peak_damage"])
    with pytest.raises(UnknownIdError, match="nope"):
        run_chunks(Work("viral_immune", outcomes=("nope",)), params)


@pytest.mark.parametrize(
    ("n", "chunk", "slots", "smallest"),
    [(100_000, 2048, 4, 128), (30, 7, 4, 1), (5, 2048, 2, 128), (0, 8, 1, 1)],
)
def test_guided_pieces_cover_the_patients_in_order_and_shrink_towards_the_end(
    n: int, chunk: int, slots: int, smallest: int
) -> None:
    bounds = guided_bounds(n, chunk, slots, smallest)
    sizes = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == n and np.all(sizes > 0)
    assert np.all(sizes <= chunk) and np.all(sizes[:-1] >= min(smallest, chunk))
    assert np.all(np.diff(sizes) <= 0)  # never larger than the piece before
    # full chunks while the rest could keep every slot busy twice over
    rest = n - np.asarray(bounds[:-1])
    assert np.all(sizes[rest >= 2 * slots * chunk] == chunk)


def test_a_trials_last_chunks_are_cut_to_a_slots_share() -> None:
    sizes = np.diff(guided_bounds(100_000, 2048, 4))
    assert sizes[0] == 2048 and sizes[-2] == 128 and len(sizes) == 70  # 48.8 chunks -> 70 pieces
    # each piece is ceil(rest / 8) of the patients left, between 128 and 2048
    rest = 100_000 - np.concatenate([[0], np.cumsum(sizes)[:-1]])
    assert np.array_equal(sizes, np.minimum(rest, np.clip(-(-rest // 8), 128, 2048)))
    with pytest.raises(InputError, match="slots"):
        guided_bounds(10, 4, 0)


def test_a_recut_tail_keeps_every_patient_in_order() -> None:
    chunks = [
        {"a": np.arange(lo, min(30, lo + 7)), "b": -np.arange(lo, min(30, lo + 7))} for lo in range(0, 30, 7)
    ]
    recut = balance_tail(chunks, slots=4, smallest=1)
    assert len(recut) > len(chunks)
    for key in ("a", "b"):
        assert np.array_equal(
            np.concatenate([c[key] for c in recut]), np.concatenate([c[key] for c in chunks])
        )
    big = [{"a": np.arange(lo, lo + 4)} for lo in range(0, 12, 4)]
    assert balance_tail(big, slots=1, smallest=4) is big  # nothing to cut finer


def _worker_settings() -> tuple[str | None, bool, str]:
    """On a worker: its malloc trim threshold, whether Dask's profiler runs, and its tick interval."""
    import dask

    return (
        os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        bool(dask.config.get("distributed.worker.profile.enabled")),
        str(dask.config.get("distributed.admin.tick.interval")),
    )


def test_a_local_cluster_starts_with_its_own_dask_settings_and_leaves_ours_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dask
    import distributed  # noqa: F401  (adds its defaults to Dask's configuration)

    # a nanny started with Dask's defaults writes its variables into this process's environment
    # (Dask's own rule), where the next cluster's workers inherit them: start clean, end clean
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)

    before = dask.config.get("distributed.worker.profile.enabled")
    with DaskCluster(workers=1, threads_per_worker=1).connect() as client:
        quiet = set(client.run(_worker_settings).values())
        assert dask.config.get("distributed.worker.profile.enabled") == before  # this process's config
    assert quiet == {(None, False, "1s")}
    with DaskCluster(workers=1, threads_per_worker=1, config={}).connect() as client:
        ((trim, profiled, tick),) = client.run(_worker_settings).values()
    assert trim == "65536" and profiled and tick == "20ms"  # Dask's own defaults
    with pytest.raises(InputError, match="smallest_piece"):
        DaskCluster(smallest_piece=0)
