"""Executors' placement of work on the machine: cores shared out among local Dask workers."""

from __future__ import annotations

import os

import pytest

from immunetwin.cohorts import DaskCluster
from immunetwin.cohorts.execute import share_cores
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
    import numpy as np

    from immunetwin.cohorts import Work, run_chunks
    from immunetwin.errors import UnknownIdError

    params = {"beta": np.array([4e-5, 6e-5])}
    one = run_chunks(Work("viral_immune", outcomes=("peak_damage",), backend="native"), params)
    every = run_chunks(Work("viral_immune", backend="native"), params)
    assert set(one.outcomes) == {"peak_damage"} and len(every.outcomes) > 1
    np.testing.assert_array_equal(one.outcomes["peak_damage"], every.outcomes["peak_damage"])
    with pytest.raises(UnknownIdError, match="nope"):
        run_chunks(Work("viral_immune", outcomes=("nope",)), params)
