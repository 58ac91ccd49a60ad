"""Run a virtual cohort in chunks: in this process, or as Dask tasks on a cluster.

A cohort is ``N`` parameter sets, each simulated under every *arm* (treatment schedule) of a
:class:`Work` description. The cohort is cut into chunks of ``chunk_size`` patients in patient order;
each chunk is one task, :func:`run_chunk`, that loads the template (by name, once per process),
simulates its patients under every arm in one batched solve and returns the template's outcome metrics
and any requested observable values - never whole trajectories, so a million-patient cohort moves
megabytes, not gigabytes. Results are put back in patient order.

Determinism: a patient's numbers depend only on its own parameters and the arm. The engine's batched
loop treats patients independently (every per-patient quantity is its own lane: see
:mod:`immunetwin.engines.integrate`) and gives bit-identical results whatever the batch a patient is
solved in, so the output is the same for any chunk size, number of workers or executor (the tests
check this, 1 vs 4 Dask workers and two chunk sizes). On another device type (GPU vs CPU) the floating
point operations differ and results agree within the solver tolerance only.

Executors (strategies): :class:`InProcess` (default) and :class:`DaskCluster` - an in-process
``LocalCluster`` of ``workers`` processes by default, or an existing scheduler by ``address``
(``tcp://host:8786``; for SLURM start a ``dask_jobqueue.SLURMCluster`` and pass its
``scheduler_address``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from immunetwin.engines.integrate import Controls
from immunetwin.engines.native import check_supported
from immunetwin.engines.ode import BACKENDS, simulate_cohort
from immunetwin.engines.solvers import Dopri5, Rodas5P
from immunetwin.errors import InputError, UnknownIdError
from immunetwin.templates import Template, load_template

__all__ = [
    "LOCAL_CONFIG",
    "ChunkResult",
    "DaskCluster",
    "InProcess",
    "Opened",
    "Probe",
    "Work",
    "balance_tail",
    "guided_bounds",
    "run_chunk",
    "run_chunks",
    "share_cores",
]

SOLVERS = {"rodas5p": Rodas5P, "dopri5": Dopri5}
LOCAL_CONFIG: Mapping[str, Any] = MappingProxyType(
    {
        # glibc's own (adaptive) trimming: Dask's fixed 64 KiB threshold also fixes the mmap threshold,
        # so every array of a chunk was fresh pages; two workers took ~220,000 page faults each in a
        # 100,000-patient trial, ~35,000 without, and ran 3-7 % faster (``benchmarks/README.md``)
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
        # monitors that serve a dashboard this cluster does not have: the statistical profiler samples
        # every thread's stack every 10 ms, the event loop ticks every 20 ms. Idle, two workers and the
        # scheduler used 0.52 CPU seconds per 5 s with Dask's defaults and 0.06 with these
        "distributed.worker.profile.enabled": False,
        "distributed.admin.tick.interval": "1s",
        "distributed.admin.system-monitor.interval": "5s",
        "distributed.worker.memory.monitor-interval": "1s",
    }
)
"""Dask settings of a local cluster started by :class:`DaskCluster` (its ``config`` default)."""
TAIL_PIECE = 128
"""The smallest piece :func:`balance_tail` cuts: on the 2-core CPU a native two-arm ``viral_immune``
piece of 128 patients costs ~1 ms more than its share of a 2,048-patient chunk (17.9 against 16.9 ms,
one core, ``benchmarks/README.md``)."""
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Probe:
    """An observable read at a day: ``observable`` (template observable id) at ``day``."""

    observable: str
    day: float


@dataclass(frozen=True)
class Work:
    """What every chunk needs (small and picklable: the template travels by name).

    Attributes:
        template: template name; ``root`` the folder it is loaded from (``None``: shipped templates).
        arms: scenario specs (``"none"``, ``"antiviral(start=3)"``), simulated for every patient.
        horizon: days simulated from the template's time origin; ``step`` the output spacing (outcome
            metrics such as times to clearance are interpolated between outputs).
        probes: observables to read at given days (plausibility constraints, matching).
        outcomes: the template's outcome metrics to compute (a trial's endpoints); ``None``: all. The
            solver then returns only the quantities these (and the probes) read.
        rtol, atol, solver: solver settings (``rodas5p``, the stiff default, or ``dopri5``).
        backend: the engine (``xla`` or ``native``: :data:`immunetwin.engines.ode.BACKENDS`).
    """

    template: str
    arms: tuple[str, ...] = ("none",)
    horizon: float = 28.0
    step: float = 0.25
    probes: tuple[Probe, ...] = ()
    rtol: float = 1e-6
    atol: float = 1e-9
    solver: str = "rodas5p"
    root: str | None = None
    backend: str = "xla"
    outcomes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "arms", tuple(self.arms))
        if self.outcomes is not None:
            object.__setattr__(self, "outcomes", tuple(self.outcomes))
        object.__setattr__(self, "probes", tuple(self.probes))
        if not self.arms:
            raise InputError("a cohort run needs at least one arm")
        if not (math.isfinite(self.horizon) and self.horizon > 0):
            raise InputError(f"horizon must be a positive number of days, got {self.horizon}")
        if not (math.isfinite(self.step) and 0 < self.step <= self.horizon):
            raise InputError(f"step must be in (0, horizon], got {self.step}")
        if self.solver not in SOLVERS:
            raise UnknownIdError("solver", self.solver, tuple(SOLVERS))
        if self.backend not in BACKENDS:
            raise UnknownIdError("backend", self.backend, BACKENDS)
        Controls(rtol=self.rtol, atol=self.atol)  # checks the tolerances
        for p in self.probes:
            if not (math.isfinite(p.day) and 0 <= p.day <= self.horizon):
                raise InputError(
                    f"observable '{p.observable}' is read at day {p.day}, outside [0, {self.horizon}]"
                )

    @property
    def times(self) -> np.ndarray:
        return np.linspace(0.0, self.horizon, math.ceil(self.horizon / self.step - 1e-9) + 1)


@dataclass(frozen=True)
class ChunkResult:
    """Per patient and arm: ``outcomes[metric]`` (n, A), ``probes`` (n, A, P), ``ok`` (n, A), ``steps``."""

    outcomes: Mapping[str, np.ndarray]
    probes: np.ndarray
    ok: np.ndarray
    steps: np.ndarray

    @staticmethod
    def concat(parts: list[ChunkResult]) -> ChunkResult:
        return ChunkResult(
            {k: np.concatenate([p.outcomes[k] for p in parts]) for k in parts[0].outcomes},
            np.concatenate([p.probes for p in parts]),
            np.concatenate([p.ok for p in parts]),
            np.concatenate([p.steps for p in parts]),
        )


@functools.lru_cache(maxsize=8)
def _template(name: str, root: str | None) -> Template:
    """One template object per process (its compiled model is reused by every chunk)."""
    return load_template(name, root=root)


def check_work(work: Work) -> Template:
    """Load the template and check arms and probes before any chunk runs."""
    from immunetwin.decisions.scenarios import scenario

    template = _template(work.template, work.root)
    if work.backend == "native":
        check_supported(template.model.spec, SOLVERS[work.solver]())
    for arm in work.arms:
        scenario(template, arm)
    for p in work.probes:
        if p.observable not in template.metadata.observables:
            raise UnknownIdError("observable", p.observable, tuple(template.metadata.observables))
    template.required_ids(outcomes=work.outcomes)  # names an unknown outcome metric
    return template


def _read(values: np.ndarray, times: np.ndarray, day: float) -> np.ndarray:
    """Linear interpolation of (B, T) ``values`` at ``day``."""
    j = int(np.clip(np.searchsorted(times, day, side="right") - 1, 0, len(times) - 2))
    w = (day - times[j]) / (times[j + 1] - times[j])
    return (1 - w) * values[:, j] + w * values[:, j + 1]


def run_chunk(work: Work, parameters: Mapping[str, np.ndarray], pad_to: int = 0) -> ChunkResult:
    """Simulate every patient of one chunk under every arm (one batched solve, patient-major order).

    ``pad_to``: solve at least this many patients (the chunk repeated, the copies dropped), so that a
    short last chunk reuses the program compiled for the full ones. Ignored by the native backend,
    which compiles nothing per shape.
    """
    from immunetwin.decisions.scenarios import scenario

    template = _template(work.template, work.root)
    schedules = [scenario(template, arm).schedule for arm in work.arms]
    keep = len(next(iter(parameters.values())))
    if pad_to > keep and work.backend != "native":
        parameters = {k: np.resize(np.asarray(v, float), pad_to) for k, v in parameters.items()}
    n, a = len(next(iter(parameters.values()))), len(schedules)
    times = work.times
    cohort = simulate_cohort(
        template.model, times, parameters={k: np.repeat(np.asarray(v, float), a) for k, v in parameters.items()},
        schedule=schedules * n, solver=SOLVERS[work.solver](), controls=Controls(rtol=work.rtol, atol=work.atol),
        chunk_size=n * a, outputs=template.required_ids([p.observable for p in work.probes], work.outcomes),
        backend=work.backend,
    )  # fmt: skip
    ok = np.asarray(cohort.ok)
    outcomes = {k: np.where(ok, np.asarray(v, float), np.nan).reshape(n, a) for k, v in template.outcomes(cohort, work.outcomes).items()}  # fmt: skip
    observed = template.observe(cohort, [p.observable for p in work.probes]) if work.probes else {}
    probes = np.stack([_read(observed[p.observable], times, p.day) for p in work.probes], axis=-1) if work.probes else np.zeros((n * a, 0))  # fmt: skip
    probes = np.where(ok[:, None], probes, np.nan)
    steps = np.asarray(cohort.steps).reshape(n, a)
    return ChunkResult({k: v[:keep] for k, v in outcomes.items()}, probes.reshape(n, a, -1)[:keep],
                       ok.reshape(n, a)[:keep], steps[:keep])  # fmt: skip


# -- executors -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InProcess:
    """Run the chunks in this process, on its default JAX device.

    Attributes:
        overlap: chunks in flight at once (threads). With 2, one chunk's endpoints are computed on
            the host (NumPy) while the next chunk is solved on the device. Default: 2 on a GPU or
            other accelerator and for the native backend (whose solver threads would otherwise
            wait while the endpoints are computed: a 40,000-patient trial ran 3.5 % faster on the
            2-core CPU), 1 for the XLA engine on a CPU (whose programs already use every core).
            The first chunk always runs alone, so that its programs are compiled once. Results do
            not depend on it.
    """

    overlap: int | None = None

    def __post_init__(self) -> None:
        if self.overlap is not None and self.overlap < 1:
            raise InputError(f"execution overlap must be a positive number of chunks, got {self.overlap}")

    @contextlib.contextmanager
    def session(
        self,
    ) -> Iterator[Callable[[Work, list[dict[str, np.ndarray]], Progress | None], list[ChunkResult]]]:
        import jax

        accelerator = jax.default_backend() != "cpu"

        def run(
            work: Work, chunks: list[dict[str, np.ndarray]], progress: Progress | None
        ) -> list[ChunkResult]:
            overlap = self.overlap or (2 if accelerator or work.backend == "native" else 1)
            out: list[ChunkResult] = []
            size = len(next(iter(chunks[0].values())))

            def keep(result: ChunkResult) -> None:
                out.append(result)
                if progress is not None:
                    progress(len(out), len(chunks))

            keep(run_chunk(work, chunks[0], size))
            if overlap == 1:
                for chunk in chunks[1:]:
                    keep(run_chunk(work, chunk, size))
            else:
                with ThreadPoolExecutor(overlap, thread_name_prefix="immunetwin-chunk") as pool:
                    for result in pool.map(lambda c: run_chunk(work, c, size), chunks[1:]):
                        keep(result)
            return out

        yield run


@dataclass(frozen=True)
class DaskCluster:
    """Run the chunks as Dask tasks.

    Attributes:
        address: a running scheduler (``tcp://host:8786``); ``None`` starts an in-process
            ``LocalCluster`` of ``workers`` processes with ``threads_per_worker`` threads each, closed
            at the end of the run.
        workers, threads_per_worker: the local cluster's size. Two threads per worker keep two
            chunks in flight on each, as :class:`InProcess` does, so one chunk's host work (its
            endpoints, the solver's set-up) overlaps the other's solve. Measured on the 2-core CPU
            (``benchmarks/README.md``): a native 30,000-patient trial on a running one-worker cluster
            8,669 -> 9,401-9,989 patients/s; the XLA engine within the noise (one worker -6 %, two +8 %).
            Two chunks starting at once on a fresh worker load the template and build its solver
            at the same time, which is safe: Antimony conversions and native builds each hold a
            lock (:mod:`immunetwin.io.antimony`, ``immunetwin.engines.native._BUILDING``).
        cpu_devices: JAX CPU devices per worker (:func:`immunetwin.runtime.use_all_cpu_cores`); default
            for a local cluster: the worker's share of the cores.
        cache_dir: JAX persistent compilation cache of the workers (``None``: none).
        pin_cores: give each worker of a local cluster its own block of this process's cores
            (:func:`share_cores`, :func:`immunetwin.runtime.pin_to_cores`; Linux), where there are
            at least as many cores as workers. Unpinned, two workers on the 2-core benchmark machine
            ran a trial 1.3-1.5x slower than one (their XLA threads roam over both cores); pinned,
            two are faster than one once started (``benchmarks/README.md``). Ignored for an ``address``:
            this process cannot see that cluster's machines.
        config: Dask settings the local cluster is started with (its scheduler, nannies and
            workers; this process's own settings are left as they were). Default
            :data:`LOCAL_CONFIG`; ``{}`` keeps Dask's own. As in Dask, an environment variable
            this process already has wins over ``distributed.nanny.pre-spawn-environ`` (and a
            nanny started with Dask's defaults writes ``MALLOC_TRIM_THRESHOLD_`` into this
            process's environment). For workers you start yourself, put the same keys in their
            Dask configuration.
        smallest_piece: the smallest piece the native backend's last chunks are cut into
            (:func:`balance_tail`, with the cluster's total threads as slots).
    """

    address: str | None = None
    workers: int = 1
    threads_per_worker: int = 2
    cpu_devices: int | None = None
    cache_dir: str | None = None
    cluster_options: Mapping[str, Any] = field(default_factory=dict)
    pin_cores: bool = True
    config: Mapping[str, Any] = field(default_factory=lambda: dict(LOCAL_CONFIG))
    smallest_piece: int = TAIL_PIECE

    def __post_init__(self) -> None:
        if self.workers < 1 or self.threads_per_worker < 1:
            raise InputError("a Dask cluster needs workers >= 1 and threads_per_worker >= 1")
        if self.smallest_piece < 1:
            raise InputError(
                f"smallest_piece must be a positive number of patients, got {self.smallest_piece}"
            )

    @contextlib.contextmanager
    def _client(self) -> Iterator[Any]:
        from distributed import Client, LocalCluster

        if self.address is not None:
            with Client(self.address) as client:
                yield client
            return
        import dask

        options = {"n_workers": self.workers, "threads_per_worker": self.threads_per_worker,
                   "processes": True, "dashboard_address": None} | dict(self.cluster_options)  # fmt: skip
        with contextlib.ExitStack() as stack:
            with dask.config.set(dict(self.config)):  # read as the scheduler and nannies start
                cluster = stack.enter_context(LocalCluster(**options))
                client = stack.enter_context(Client(cluster))
            yield client

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        """A Dask ``Client`` of this cluster whose workers are set up (:func:`setup_worker`): each
        local worker on its own cores (``pin_cores``), with its JAX CPU devices and compilation
        cache. A local cluster is closed when the block ends."""
        with self._client() as client:
            if self.address is not None:
                client.run(setup_worker, self.cpu_devices, self.cache_dir, None)
            else:
                client.wait_for_workers(int(self.cluster_options.get("n_workers", self.workers)))
                info = client.scheduler_info()["workers"]
                addresses = sorted(info, key=lambda a: str(info[a].get("name")))
                cores = _usable_cores()
                blocks = share_cores(cores, len(addresses)) if self.pin_cores else None
                plan = {}
                for i, address in enumerate(addresses):
                    own = blocks[i] if blocks is not None else None
                    devices = self.cpu_devices or max(1, len(own) if own else len(cores) // len(addresses))
                    plan[address] = (devices, own)
                # one call, so the workers set themselves up at the same time: each imports the
                # engine (~3 s on the 2-core machine), and a call per worker waited for each in turn
                # (2 workers: 6.4 s, now 2.9 s) unless the client's main module had imported it
                # (a spawned worker re-imports that module)
                client.run(_setup_planned, plan, self.cache_dir)
            yield client

    @contextlib.contextmanager
    def session(
        self,
    ) -> Iterator[Callable[[Work, list[dict[str, np.ndarray]], Progress | None], list[ChunkResult]]]:
        from distributed import as_completed

        with self.connect() as client:

            def run(
                work: Work, chunks: list[dict[str, np.ndarray]], progress: Progress | None
            ) -> list[ChunkResult]:
                size = len(next(iter(chunks[0].values())))
                if work.backend == "native":  # no program per shape: the last chunks can be cut finer
                    # (a scheduler whose workers have not joined yet counts as one slot)
                    slots = max(1, sum(client.nthreads().values()))
                    chunks = balance_tail(chunks, slots, self.smallest_piece)
                futures = [client.submit(run_chunk, work, chunk, size, pure=False) for chunk in chunks]
                for done, _ in enumerate(as_completed(futures), start=1):
                    if progress is not None:
                        progress(done, len(futures))
                return client.gather(futures)

            yield run


@dataclass(frozen=True)
class Opened:
    """A session of another executor that is already open, so that several cohort runs (population
    rounds, then the trial's arms) share it: one cluster start instead of one per run."""

    run: Callable[[Work, list[dict[str, np.ndarray]], Progress | None], list[ChunkResult]]

    @contextlib.contextmanager
    def session(
        self,
    ) -> Iterator[Callable[[Work, list[dict[str, np.ndarray]], Progress | None], list[ChunkResult]]]:
        yield self.run


Executor = InProcess | DaskCluster | Opened


def setup_worker(cpu_devices: int | None, cache_dir: str | None, cores: tuple[int, ...] | None) -> None:
    """Run on each Dask worker before its first chunk: its cores (``None``: all), JAX CPU devices,
    whole-loop compilation (:func:`immunetwin.runtime.compile_small_loops_whole`) and compilation
    cache."""
    from immunetwin.runtime import (
        compile_small_loops_whole,
        enable_compilation_cache,
        pin_to_cores,
        use_all_cpu_cores,
    )

    if cores is not None:
        pin_to_cores(cores)
    compile_small_loops_whole()
    if cpu_devices:
        use_all_cpu_cores(cpu_devices)
    if cache_dir:
        enable_compilation_cache(Path(cache_dir))


def _setup_planned(
    plan: Mapping[str, tuple[int, tuple[int, ...] | None]], cache_dir: str | None, dask_worker: Any
) -> None:
    """:func:`setup_worker` with this worker's own entry of ``plan`` (address -> devices, cores);
    Dask passes ``dask_worker``."""
    devices, cores = plan[dask_worker.address]
    setup_worker(devices, cache_dir, cores)


def share_cores(cores: tuple[int, ...], workers: int) -> list[tuple[int, ...]] | None:
    """Disjoint blocks of consecutive ``cores``, one per worker, their sizes differing by at most one;
    ``None`` when there are fewer cores than workers (some would have to share: left to the OS)."""
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if len(cores) < workers:
        return None
    size, extra = divmod(len(cores), workers)
    bounds = [i * size + min(i, extra) for i in range(workers + 1)]
    return [tuple(cores[lo:hi]) for lo, hi in itertools.pairwise(bounds)]


def _usable_cores() -> tuple[int, ...]:
    """The CPU numbers this process may run on (all of the machine's where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def split(parameters: Mapping[str, np.ndarray], chunk_size: int) -> list[dict[str, np.ndarray]]:
    """Consecutive chunks of at most ``chunk_size`` patients, in patient order."""
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    n = len(next(iter(parameters.values())))
    return [
        {k: np.asarray(v)[lo : lo + chunk_size] for k, v in parameters.items()}
        for lo in range(0, n, chunk_size)
    ]


def guided_bounds(n: int, chunk_size: int, slots: int, smallest: int = TAIL_PIECE) -> list[int]:
    """Bounds ``0 = b0 < b1 < ... = n`` of pieces of at most ``chunk_size`` patients that shrink
    towards the end, so that ``slots`` tasks running at once finish together.

    Guided self-scheduling (Polychronopoulos & Kuck 1987, IEEE Trans Comput 36:1425) with the
    share of factoring (Hummel, Schonberg & Flynn 1992, Commun ACM 35(8):90): each piece takes
    ``ceil(R / (2 slots))`` of the ``R`` patients left, bounded by ``chunk_size`` above and
    ``smallest`` below: full chunks until the last ``2 slots chunk_size`` patients, then pieces
    that halve about every ``1.4 slots``. A slot left without work then waits at most for one small
    piece, not for a whole chunk (on the 2-core CPU, a two-worker trial's last slot ran alone for
    ~0.5 s of 3.3, ``benchmarks/README.md``).
    """
    if n < 0 or chunk_size < 1 or slots < 1 or smallest < 1:
        raise InputError(
            f"guided pieces need n >= 0, chunk_size, slots and smallest >= 1, "
            f"got {n}, {chunk_size}, {slots}, {smallest}"
        )
    bounds = [0]
    while bounds[-1] < n:
        rest = n - bounds[-1]
        bounds.append(bounds[-1] + min(rest, chunk_size, max(smallest, -(-rest // (2 * slots)))))
    return bounds


def balance_tail(
    chunks: list[dict[str, np.ndarray]], slots: int, smallest: int = TAIL_PIECE
) -> list[dict[str, np.ndarray]]:
    """The same patients in the same order, re-cut by :func:`guided_bounds` with the largest chunk's
    size: the first chunks unchanged, the last ones in smaller pieces. Results do not depend on the
    cut (see the module docstring), only when the last slot finishes does."""
    sizes = [len(next(iter(c.values()))) for c in chunks]
    bounds = guided_bounds(sum(sizes), max(sizes), slots, smallest)
    if bounds == [0, *itertools.accumulate(sizes)]:
        return chunks
    whole = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    return [{k: v[lo:hi] for k, v in whole.items()} for lo, hi in itertools.pairwise(bounds)]


def run_chunks(
    work: Work,
    parameters: Mapping[str, np.ndarray],
    *,
    chunk_size: int = 2048,
    executor: Executor = InProcess(),
    progress: Progress | None = None,
) -> ChunkResult:
    """Every patient of ``parameters`` under every arm of ``work``, chunk by chunk, in patient order.

    ``progress(done, total)`` counts chunks.
    """
    check_work(work)
    if not parameters or len(next(iter(parameters.values()))) == 0:
        raise InputError("a cohort run needs at least one patient")
    chunks = split(parameters, chunk_size)
    with executor.session() as run:
        return ChunkResult.concat(run(work, chunks, progress))
