"""Simulate a model for one patient or a cohort: the engine's public verbs.

``simulate(model, times, *, parameters, initial, schedule, solver, controls)`` and
``simulate_cohort(...)`` (the same, vectorised over patients: one batched loop per chunk). Both run in
float64 and return frozen results whose ``status`` says whether each solve succeeded; outputs after a
failure are NaN *and* flagged by that status, never silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from immunetwin.engines import native
from immunetwin.engines.cache import compiled_solver
from immunetwin.engines.codegen import GeneratedFunctions, generate
from immunetwin.engines.integrate import STATUS, Controls, solve_batch, solve_one
from immunetwin.engines.solvers import AbstractMethod, Rodas5P
from immunetwin.engines.xla import jit
from immunetwin.errors import InputError, SolverError, UnknownIdError
from immunetwin.spec.model import ModelSpec
from immunetwin.spec.schedule import Schedule

__all__ = [
    "BACKENDS",
    "CohortTrajectory",
    "Model",
    "Trajectory",
    "compile_model",
    "simulate",
    "simulate_cohort",
]

#: Engines that solve a model: ``"xla"`` (JAX: CPU and GPU, differentiable, every supported SBML
#: construct) and ``"native"`` (the model's solver as generated C built with this machine's compiler:
#: CPU only, no events, no gradients, several times faster per core; :mod:`immunetwin.engines.native`).
BACKENDS = ("xla", "native")


@dataclass(frozen=True, eq=False)
class Model:
    """A compiled model: its spec, generated JAX functions and id lookups. Hash = identity.

    Build one with :func:`immunetwin.load_model`.
    """

    spec: ModelSpec
    functions: GeneratedFunctions = field(repr=False)
    sbml: str = field(repr=False, default="")
    source: str = ""

    @property
    def ids(self) -> tuple[str, ...]:
        """Every quantity id (parameters, compartments, species, reactions, rules)."""
        return self.spec.ids

    @property
    def state_ids(self) -> tuple[str, ...]:
        """Ids of the integrated variables."""
        return self.spec.state_ids

    @property
    def parameter_ids(self) -> tuple[str, ...]:
        """Ids of quantities whose value can be set with ``parameters=`` / ``initial=``."""
        derived = set(self.spec.derived_ids) - set(self.spec.state_ids)
        return tuple(q.id for q in self.spec.quantities if q.id not in derived)

    @property
    def defaults(self) -> dict[str, float]:
        """Declared values from the model file (NaN where an initial assignment gives the value)."""
        return dict(self.spec.declared)

    def __repr__(self) -> str:
        return f"Model({self.spec.id!r}, states={len(self.spec.states)}, events={len(self.spec.events)})"


def compile_model(spec: ModelSpec, *, sbml: str = "", source: str = "") -> Model:
    """Generate the JAX functions of ``spec``."""
    return Model(spec=spec, functions=generate(spec), sbml=sbml, source=source)


# -- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trajectory:
    """One patient's simulated time course.

    Attributes:
        times: output times (days), shape (T,).
        ids: quantity ids, the columns of ``values``.
        values: model values (concentration for concentration species), shape (T, len(ids)).
        state_ids: ids of the integrated variables (the default CSV columns).
        status: ``"success"`` or why the solve stopped.
        steps: steps taken (accepted and rejected).
    """

    times: np.ndarray
    ids: tuple[str, ...]
    values: np.ndarray
    state_ids: tuple[str, ...]
    status: str
    steps: int

    @property
    def ok(self) -> bool:
        """Whether the solve succeeded."""
        return self.status == "success"

    def __getitem__(self, ident: str) -> np.ndarray:
        try:
            return self.values[:, self.ids.index(ident)]
        except ValueError:
            raise UnknownIdError("output id", ident, self.ids) from None

    def to_frame(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """A table with a ``time`` column (days) and one column per id (states by default)."""
        cols = list(self.state_ids if columns is None else columns)
        data = {"time": self.times} | {c: self[c] for c in cols}
        return pd.DataFrame(data)


@dataclass(frozen=True)
class CohortTrajectory:
    """Many patients' time courses: ``values`` has shape (B, T, len(ids)); ``status`` (B,) strings."""

    times: np.ndarray
    ids: tuple[str, ...]
    values: np.ndarray
    state_ids: tuple[str, ...]
    status: np.ndarray
    steps: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        """Per-patient success mask."""
        return self.status == "success"

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __getitem__(self, ident: str) -> np.ndarray:
        try:
            return self.values[:, :, self.ids.index(ident)]
        except ValueError:
            raise UnknownIdError("output id", ident, self.ids) from None

    def patient(self, i: int) -> Trajectory:
        """The trajectory of patient ``i``."""
        return Trajectory(
            self.times, self.ids, self.values[i], self.state_ids, str(self.status[i]), int(self.steps[i])
        )

    def to_frame(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Long table: ``patient``, ``time``, ``status`` and one column per id (states by default)."""
        cols = list(self.state_ids if columns is None else columns)
        b, t = self.values.shape[:2]
        data = {
            "patient": np.repeat(np.arange(b), t),
            "time": np.tile(self.times, b),
            "status": np.repeat(self.status, t),
        } | {c: self[c].reshape(-1) for c in cols}
        return pd.DataFrame(data)


# -- input checking -----------------------------------------------------------------------------------


def _check_times(times: Any, t0: float) -> np.ndarray:
    ts = np.asarray(times, dtype=float)
    if ts.ndim != 1 or ts.size == 0:
        raise InputError(f"times must be a non-empty 1-D sequence, got shape {ts.shape}")
    if not np.all(np.isfinite(ts)):
        raise InputError("times contain NaN or infinite values")
    if np.any(np.diff(ts) < 0):
        raise InputError("times must be non-decreasing")
    if ts[0] < t0:
        raise InputError(f"first output time {ts[0]} is before the start time t0={t0}")
    return ts


def _overrides(
    model: Model, values: Mapping[str, Any] | None, what: str, batch: int | None
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    derived = set(model.spec.derived_ids) - set(model.state_ids)
    known = set(model.ids)
    for key, value in (values or {}).items():
        if key not in known:
            raise UnknownIdError(what, key, model.parameter_ids)
        if key in derived:
            raise InputError(
                f"{what} '{key}' is computed by the model (assignment rule or reaction rate)"
                " and cannot be set"
            )
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise InputError(f"{what} '{key}' must be a number, got {value!r}") from None
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{what} '{key}' is NaN or infinite")
        if batch is None and arr.ndim != 0:
            raise InputError(
                f"{what} '{key}' must be a scalar for one patient; use simulate_cohort for arrays"
            )
        if batch is not None and (arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != batch)):
            raise InputError(f"{what} '{key}' must be a scalar or have one value per patient ({batch})")
        out[key] = arr
    return out


def _declared(model: Model, over: dict[str, np.ndarray], batch: int) -> tuple[np.ndarray, np.ndarray]:
    index = {q: i for i, q in enumerate(model.ids)}
    base = np.array([v for _, v in model.spec.declared], dtype=float)
    d = np.tile(base, (batch, 1))
    m = np.zeros_like(d, dtype=bool)
    for key, arr in over.items():
        d[:, index[key]] = arr
        m[:, index[key]] = True
    return d, m


def _stops(model: Model, schedules: Sequence[Schedule], c_ids: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """Schedule -> padded arrays (B, K), (B, K, n), (B, K, nc) x 2.

    Each *distinct* schedule is tabulated once and the patients' rows are gathered from those tables:
    a cohort usually shares a few schedule objects (one per arm), and a per-patient Python loop over
    10^6 patients cost seconds (measured on the GPU machine, where it outweighed the solve)."""
    by_id = {id(s): s for s in schedules}  # by identity (cheap): `[s] * n` repeats one object
    slot = {k: i for i, k in enumerate(by_id)}
    rows = np.fromiter(map(slot.__getitem__, map(id, schedules)), dtype=np.intp, count=len(schedules))
    tables = _stop_tables(model, list(by_id.values()), c_ids)
    return tuple(t[rows] for t in tables)


def _stop_tables(
    model: Model, schedules: Sequence[Schedule], c_ids: tuple[str, ...]
) -> tuple[np.ndarray, ...]:
    state_index = {s.id: i for i, s in enumerate(model.spec.states)}
    c_index = {c: i for i, c in enumerate(c_ids)}
    known = set(model.ids)
    n, nc = len(state_index), len(c_ids)
    per: list[dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
    for sched in schedules:
        events: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

        def at(t: float, events: dict = events) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return events.setdefault(t, (np.zeros(n), np.zeros(nc, bool), np.zeros(nc)))

        for dose in sched.doses:
            if dose.target not in known:
                raise UnknownIdError("dose target", dose.target, model.state_ids)
            if dose.target not in state_index:
                raise InputError(
                    f"dose target '{dose.target}' is not a state variable of the model "
                    f"(states: {', '.join(model.state_ids)})"
                )
            at(dose.time)[0][state_index[dose.target]] += dose.amount
        for inp in sched.inputs:
            if inp.target not in known:
                raise UnknownIdError("input target", inp.target, c_ids)
            if inp.target not in c_index:
                raise InputError(f"input target '{inp.target}' is not a constant parameter of the model")
            for t, v in zip(inp.times, inp.values, strict=True):
                entry = at(t)
                entry[1][c_index[inp.target]] = True
                entry[2][c_index[inp.target]] = v
        per.append(events)
    k = max(1, *(len(e) for e in per)) if per else 1
    b = len(schedules)
    times = np.full((b, k), np.inf)
    dy = np.zeros((b, k, n))
    mask = np.zeros((b, k, nc), bool)
    vals = np.zeros((b, k, nc))
    for i, events in enumerate(per):
        for j, t in enumerate(sorted(events)):
            times[i, j] = t
            dy[i, j], mask[i, j], vals[i, j] = events[t]
    return times, dy, mask, vals


# -- the jitted core -------------------------------------------------------------------------------


def _one(
    fns: GeneratedFunctions,
    method: AbstractMethod,
    ctl: Controls,
    trig0: Any,
    ts: Any,
    d: Any,
    m: Any,
    st: Any,
    sdy: Any,
    smask: Any,
    sval: Any,
) -> tuple[Any, Any, Any]:
    y0, c0 = fns.init(d, m, ts[0])
    ys, status, steps = solve_one(fns, method, ctl, y0, c0, trig0, ts, st, sdy, smask, sval)
    return _observe(fns, ts, ys, c0, st, smask, sval), status, steps


def _observe(
    fns: GeneratedFunctions,
    ts: Any,
    ys: Any,
    c0: Any,
    st: Any,
    smask: Any,
    sval: Any,
    columns: tuple[int, ...] | None = None,
) -> Any:
    """The quantities at ``columns`` (every one for ``None``) at the output times (T, nq) from one
    patient's states ``ys`` (T, n)."""

    def c_at(t: Any) -> Any:  # constants at output time t (inputs switched at or before t)
        def body(k: int, c: Any) -> Any:
            return jnp.where(smask[k] & (st[k] <= t), sval[k], c)

        return jax.lax.fori_loop(0, st.shape[0], body, c0)

    return jax.vmap(lambda t, y: fns.observe(t, y, c_at(t), columns))(ts, ys)


@partial(jax.jit, static_argnames=("fns", "method", "ctl", "columns"))
def _solve_batch(
    fns: GeneratedFunctions,
    method: AbstractMethod,
    ctl: Controls,
    columns: tuple[int, ...] | None,
    trig0: Any,
    ts: Any,
    d: Any,
    m: Any,
    st: Any,
    sdy: Any,
    smask: Any,
    sval: Any,
) -> tuple[Any, Any, Any]:
    """``jax.vmap(_one)`` over patients (axis 0 of d, m, st, ...), computed by one batch-last loop;
    only the output ``columns`` (all for ``None``) are computed and returned."""
    y0, c0 = jax.vmap(fns.init, in_axes=(0, 0, None), out_axes=-1)(d, m, ts[0])
    last = [jnp.moveaxis(x, 0, -1) for x in (st, sdy, smask, sval)]
    ys, status, steps = solve_batch(fns, method, ctl, y0, c0, trig0, ts, *last, lanes=_lanes())
    observe = partial(_observe, fns, ts, columns=columns)
    obs = jax.vmap(observe, in_axes=(0, -1, 0, 0, 0))(ys, c0, st, smask, sval)
    return obs, status, steps


def _program(
    fns: GeneratedFunctions,
    method: AbstractMethod,
    ctl: Controls,
    shards: int,
    columns: tuple[int, ...] | None = None,
) -> Callable[..., Any]:
    """The jitted solver of one chunk. With ``shards`` > 1 the chunk's patients are split in equal
    blocks over the first ``shards`` devices (``shard_map``) and each device runs its own loop: on a
    CPU shown as one device per core (:func:`immunetwin.runtime.use_all_cpu_cores`), one core each."""
    solve = partial(_solve_batch, fns, method, ctl, columns)
    mesh = _mesh(shards)
    if mesh is None:
        return jit(solve)
    shared, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("patients"))
    # no collectives: each block is independent, so the check of which values vary across devices is
    # off (with it, every loop carry the solver starts from zeros would need a jax.lax.pcast)
    specs = (shared.spec, shared.spec, *[split.spec] * 6)  # trig0 and ts shared
    sharded = jax.shard_map(solve, mesh=mesh, in_specs=specs, out_specs=split.spec, check_vma=False)
    return jit(sharded, in_shardings=(shared, shared, *[split] * 6), out_shardings=split)


def _mesh(shards: int) -> Mesh | None:
    """The first ``shards`` local devices as a one-axis mesh (``"patients"``); None for one device."""
    return Mesh(np.array(jax.local_devices()[:shards]), ("patients",)) if shards > 1 else None


def _shards(batch: int) -> int:
    """How many devices share a chunk of ``batch`` patients: every local device of the default backend
    (one, unless a CPU shows one device per core: :func:`immunetwin.runtime.use_all_cpu_cores`), at
    most one per patient."""
    return max(1, min(jax.local_device_count(), batch))


#: Patients per device are padded to a multiple of this (except a cohort of one). XLA:CPU computes
#: an element-wise loop in vector blocks and the leftover elements by scalar code, whose
#: transcendental functions (the step-size controller's power, a model's exp or log) round
#: differently; the step sizes then differ and a patient's trajectory would depend, within the
#: tolerances, on its place in the chunk (measured on AVX2: chunks of 16 and 32 agreed bit for bit
#: with one of 64, chunks of 1 to 8 did not). With every block full, a patient's result is the same
#: whatever the chunk size or number of workers, on one kind of device.
LANES = 16


#: Patients stepped together on one device (:func:`immunetwin.engines.integrate.solve_batch`): a lane
#: whose patient finishes takes the next waiting one. Fixed per kind of device, whatever the chunk,
#: so that a patient's result does not depend on the chunk size or the number of devices. Measured on
#: the 2-core CPU, 2026-11-23, A/B in one sitting (the machine's speed drifted by ~15 % over the
#: hour): a two-arm ``viral_immune`` trial of 8,000 prior-drawn patients, 2,000 simulations per core,
#: ran at 644 patients/s with all of them in lanes at once, 1,054 with 500 lanes, 1,159-1,207 with
#: 250-256 and 1,194-1,243 with 128; the benchmark cohort (CV 25 %, steps 345 +- 10) at 2,947-3,014
#: with 256 lanes against 2,781-2,822 for the previous code. On a GPU a step of fewer than ~60,000
#: patients no longer fills the device (H100: 0.95 ms per step for 62,500, 3.57 ms for 250,000).
CPU_LANES, ACCELERATOR_LANES = 256, 65_536


def _lanes() -> int:
    """Lanes per device on the default backend (:data:`CPU_LANES` or :data:`ACCELERATOR_LANES`)."""
    return CPU_LANES if jax.default_backend() == "cpu" else ACCELERATOR_LANES


def _block(chunk: int, b: int) -> tuple[int, int]:
    """(patients per compiled call, devices sharing it) for chunks of ``chunk`` of ``b`` patients:
    every device gets the same number, a multiple of :data:`LANES` unless the cohort is one patient."""
    chunk = max(1, min(chunk, b))
    shards = _shards(chunk)
    per = -(-chunk // shards)
    if b > 1:
        per = -(-per // LANES) * LANES
    return per * shards, shards


def _run(
    model: Model,
    ts_full: np.ndarray,
    d: np.ndarray,
    m: np.ndarray,
    stops: tuple[np.ndarray, ...],
    method: AbstractMethod,
    ctl: Controls,
    chunk: int,
    progress: Callable[[int, int], None] | None,
    columns: tuple[int, ...] | None = None,
    backend: str = "xla",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if backend == "native":
        solver = native.build(model.spec, method, lanes=native.lanes_for(d.shape[0]))
        return native.run_native(solver, ts_full, d, m, stops, ctl, chunk, progress, columns)
    trig0 = np.array([e.initial_value for e in model.spec.events], dtype=bool)
    b = d.shape[0]
    chunk, shards = _block(chunk, b)
    starts = range(0, b, chunk)
    out: list[np.ndarray] = []  # outputs, status, steps of the whole cohort, filled chunk by chunk
    with jax.enable_x64(True):

        def launch(lo: int) -> tuple[int, tuple[Any, ...]]:
            idx = np.arange(lo, lo + chunk) % b  # pad the last chunk by wrapping (same shapes, one compile)
            arrays = (trig0, ts_full, d[idx], m[idx], *(s[idx] for s in stops))
            res = compiled_solver(model.functions, method, ctl, arrays, shards, columns)(*arrays)
            for r in res:
                r.copy_to_host_async()  # queued behind the solve: no round trip when it is read
            return lo, res

        # the next chunk is dispatched before the previous one is read back, so that where dispatch
        # is asynchronous its solve overlaps that read-back (not measured apart: on the H100 the call
        # of a program with a while loop took about as long as its solve)
        pending = launch(starts[0])
        for nxt in [*starts[1:], None]:
            lo, (o, s_, n_) = pending
            if nxt is not None:
                pending = launch(nxt)
            keep = min(chunk, b - lo)
            for i, r in enumerate(np.asarray(x) for x in (o, s_, n_)):
                if len(out) == i:
                    out.append(np.empty((b, *r.shape[1:]), r.dtype))
                out[i][lo : lo + keep] = r[:keep]
            if progress is not None:
                progress(lo + keep, b)
    return out[0], out[1], out[2]


def _prepare_times(times: Any, t0: float) -> tuple[np.ndarray, np.ndarray, int]:
    ts = _check_times(times, t0)
    if ts[0] > t0:
        return ts, np.concatenate([[t0], ts]), 1
    return ts, ts, 0


def simulate(
    model: Model,
    times: Any,
    *,
    parameters: Mapping[str, float] | None = None,
    initial: Mapping[str, float] | None = None,
    schedule: Schedule | None = None,
    solver: AbstractMethod | None = None,
    controls: Controls = Controls(),
    t0: float = 0.0,
    throw: bool = False,
    backend: str = "xla",
) -> Trajectory:
    """Simulate one patient.

    Args:
        model: a compiled model (:func:`immunetwin.load_model`).
        times: output times in days, non-decreasing, all ``>= t0``.
        parameters: values for constant quantities (parameters, compartment sizes), by id.
        initial: start values of states (species, rate-rule variables), by id; they win over the
            model's initial assignments.
        schedule: bolus doses and piecewise-constant inputs, applied exactly.
        solver: the one-step method; default ``Rodas5P()`` (stiff, L-stable, 5th order), also right
            for non-stiff models; ``Dopri5()`` for non-stiff models.
        controls: tolerances and step limits.
        t0: start time (initial values hold here).
        throw: raise :class:`SolverError` instead of returning a failed status.
        backend: ``"xla"`` (default) or ``"native"`` (:data:`BACKENDS`).

    Returns:
        The trajectory; check ``.status`` (or pass ``throw=True``).
    """
    method = _check_backend(model, backend, solver)
    ts, ts_full, drop = _prepare_times(times, t0)
    over = _overrides(model, dict(parameters or {}) | dict(initial or {}), "parameter", None)
    d, m = _declared(model, over, 1)
    stops = _stops(model, [schedule or Schedule()], model.spec.constants)
    _check_stop_times(stops[0], t0)
    obs, status, steps = _run(model, ts_full, d, m, stops, method, controls, 1, None, backend=backend)
    traj = Trajectory(ts, model.ids, obs[0, drop:], model.state_ids, STATUS[int(status[0])], int(steps[0]))
    if throw and not traj.ok:
        raise SolverError(f"simulation of '{model.spec.id}' failed: {traj.status}")
    return traj


def simulate_cohort(
    model: Model,
    times: Any,
    *,
    parameters: Mapping[str, Any] | None = None,
    initial: Mapping[str, Any] | None = None,
    schedule: Schedule | Sequence[Schedule] | None = None,
    solver: AbstractMethod | None = None,
    controls: Controls = Controls(),
    t0: float = 0.0,
    size: int | None = None,
    chunk_size: int = 4096,
    progress: Callable[[int, int], None] | None = None,
    outputs: Sequence[str] | None = None,
    backend: str = "xla",
) -> CohortTrajectory:
    """Simulate many patients at once (one batched loop per chunk of ``chunk_size`` patients, the chunk
    split over the devices when there are several).

    ``parameters`` / ``initial`` map ids to arrays with one value per patient (or scalars, shared).
    ``schedule`` is one schedule for all or a sequence with one per patient. ``size`` gives the number
    of patients when no array does. ``progress(done, total)`` is called after each chunk.
    ``outputs`` names the quantities to return (default: every id of the model); asking only for
    what is needed saves memory and, on a GPU, the transfer of the whole trajectory to the host.
    ``backend="native"`` solves on this machine's CPU cores with the model's solver built as C
    (:data:`BACKENDS`); a patient's result then does not depend on ``chunk_size`` or the core count.
    """
    method = _check_backend(model, backend, solver)
    values = dict(parameters or {}) | dict(initial or {})
    sizes = {np.asarray(v).shape[0] for v in values.values() if np.ndim(v) == 1}
    if isinstance(schedule, Sequence):
        sizes.add(len(schedule))
    if size is not None:
        sizes.add(int(size))
    if len(sizes) > 1:
        raise InputError(f"cohort arrays disagree on the number of patients: {sorted(sizes)}")
    batch = sizes.pop() if sizes else 1
    if batch < 1:
        raise InputError("a cohort needs at least one patient")
    ts, ts_full, drop = _prepare_times(times, t0)
    over = _overrides(model, values, "parameter", batch)
    d, m = _declared(model, over, batch)
    schedules = list(schedule) if isinstance(schedule, Sequence) else [schedule or Schedule()] * batch
    stops = _stops(model, schedules, model.spec.constants)
    _check_stop_times(stops[0], t0)
    ids, columns = _columns(model, outputs)
    obs, status, steps = _run(
        model, ts_full, d, m, stops, method, controls, chunk_size, progress, columns, backend=backend
    )
    names = np.array([STATUS[k] for k in range(len(STATUS))])[status]
    return CohortTrajectory(ts, ids, obs[:, drop:], model.state_ids, names, steps)


def _check_backend(model: Model, backend: str, solver: AbstractMethod | None) -> AbstractMethod:
    """The method to run (default Rodas5P), after checking that ``backend`` can run it on ``model``."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    method = solver or Rodas5P()
    if backend == "native":
        native.check_supported(model.spec, method)
    return method


def _columns(model: Model, outputs: Sequence[str] | None) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    if outputs is None:
        return model.ids, None
    if isinstance(outputs, str) or not outputs:
        raise InputError("outputs must be a non-empty sequence of ids, e.g. ['V', 'D']")
    for ident in outputs:
        if ident not in model.ids:
            raise UnknownIdError("output id", ident, model.ids)
    ids = tuple(dict.fromkeys(outputs))
    return ids, tuple(model.ids.index(i) for i in ids)


def _check_stop_times(times: np.ndarray, t0: float) -> None:
    finite = times[np.isfinite(times)]
    if finite.size and finite.min() < t0:
        raise InputError(f"a dose or input switch at t={finite.min()} is before the start time t0={t0}")
    if not math.isfinite(t0):
        raise InputError("t0 must be finite")
