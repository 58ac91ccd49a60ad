"""The native backend called from JAX programs.

Calibration objectives (:func:`immunetwin.inference.compile_objective` with ``backend="native"``)
stay JAX functions of ``theta`` (jit-able, and ``jax.vmap``-able over chains or points) while the
solves run in the model's generated C (:mod:`immunetwin.engines.native`). The program reaches the C
through XLA FFI custom calls (:mod:`immunetwin.engines.native_ffi`: no Python on the way), or through
``jax.pure_callback`` where those handlers cannot be built; both solve the same rows with the same
solvers and give the same bits. Every batch axis JAX adds (experiments, chains, points) becomes lanes
of one native call (``vmap_method="broadcast_all"``), so four vectorised NUTS chains are solved four
to a GCC vector.

The calls are not differentiable by JAX; derivatives come from the sensitivity solve
(:meth:`NativeFunctions.sensitivities`), which the objective combines with reverse mode through the
observables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from immunetwin.engines import native, native_ffi
from immunetwin.engines.integrate import Controls
from immunetwin.engines.sensitivity import SensitivitySpec
from immunetwin.engines.solvers import AbstractMethod
from immunetwin.errors import InputError
from immunetwin.runtime import available_cores
from immunetwin.spec.model import ModelSpec

__all__ = ["NativeFunctions"]


# float64 crosses the callback boundary as pairs of uint32. ``jax.enable_x64`` is thread-local and XLA
# may run a callback on one of its own threads, where it is off: JAX would then round the callback's
# float64 inputs to float32 before it runs (a relative error of 1e-8 in every solve, seen as gradients
# that differ from run to run) and cast its float64 results likewise. uint32 is never converted.


def _bits(x: Any) -> Any:
    """float64 (JAX) -> uint32 (..., 2), the same bits."""
    return jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float64), jnp.uint32)


def _unbits(x: Any) -> Any:
    """uint32 (..., 2) (JAX) -> float64 (...)."""
    return jax.lax.bitcast_convert_type(x, jnp.float64)


def _np_unbits(a: Any) -> np.ndarray:
    """uint32 (..., 2) (NumPy, in the callback) -> float64 (...)."""
    a = np.ascontiguousarray(np.asarray(a, dtype=np.uint32))
    return a.view(np.float64).reshape(a.shape[:-1])


def _np_bits(a: np.ndarray) -> np.ndarray:
    """float64 (...) (NumPy, in the callback) -> uint32 (..., 2)."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    return a.view(np.uint32).reshape((*a.shape, 2))


def _distinct_rows(arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first of each distinct row (by bits, over all ``arrays`` together) and, per
    row, the position of its distinct row among them."""
    b = arrays[0].shape[0]
    rows = np.concatenate([np.ascontiguousarray(a).reshape(b, -1).view(np.uint8) for a in arrays], axis=1)
    # a dict of the rows' bytes: O(B), and ~100x faster than np.unique(axis=0) on the few rows of a fit
    seen: dict[bytes, int] = {}
    first: list[int] = []
    rank = np.empty(b, dtype=np.int64)
    for i, row in enumerate(rows):
        k = seen.setdefault(row.tobytes(), len(first))
        if k == len(first):
            first.append(i)
        rank[i] = k
    return np.asarray(first, dtype=np.int64), rank


#: Lanes per vector of a fit's solvers, on every machine: a fit steps a few points at once (a start,
#: a chain), so wider vectors would mostly carry idle lanes (8 lanes with AVX-512 made ``viral_immune``'s
#: NUTS 1.5x slower, ``benchmarks/README.md``), and :func:`_groups` then splits a fit's directions
#: alike, giving the same gradients, on every machine.
FIT_LANES = 4


def _groups(rows: int, directions: int) -> tuple[int, int]:
    """(groups, directions per group) for ``rows`` distinct points: their directions spread over
    :data:`FIT_LANES` lanes; one group when the rows fill them."""
    if rows >= FIT_LANES:
        return 1, directions
    per = -(-directions // min(FIT_LANES // rows, directions))
    return -(-directions // per), per


def _bits_shape(shape: tuple[int, ...]) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((*shape, 2), jnp.uint32)


# Each argument and result of a callback costs JAX ~35 us of conversion on the 2-core AMD EPYC (a
# callback with 5 arguments took 0.33 ms, with 1 0.17 ms), so the arrays of one call cross as one:
# per experiment, every array flattened and put side by side.


def _pack(*arrays: Any) -> Any:
    """Arrays with the same leading (experiment) axis -> their bits side by side, (E, K, 2)."""
    e = arrays[0].shape[0]
    return _bits(jnp.concatenate([jnp.reshape(jnp.asarray(a, jnp.float64), (e, -1)) for a in arrays], axis=1))


def _split(flat: Any, shapes: tuple[tuple[int, ...], ...]) -> tuple[Any, ...]:
    """``flat`` (*lead, K) (NumPy or JAX) -> its consecutive pieces, each (*lead, *shape)."""
    lead = flat.shape[:-1]
    out, at = [], 0
    for sh in shapes:
        size = math.prod(sh)
        out.append(flat[..., at : at + size].reshape((*lead, *sh)))
        at += size
    return tuple(out)


def _np_unpack(packed: Any, shapes: tuple[tuple[int, ...], ...]) -> tuple[np.ndarray, ...]:
    """In the callback: :func:`_pack`'s bits (*batch, E, K, 2) -> the arrays, each
    (*batch, E, *shape)."""
    return _split(_np_unbits(packed), shapes)


def _np_pack(*arrays: np.ndarray) -> np.ndarray:
    """In the callback: arrays (B, ...) with the same first axis -> one float64 bits array (B, K, 2)."""
    lead = arrays[0].shape[:1]
    return _np_bits(np.concatenate([np.reshape(a, (*lead, -1)).astype(np.float64) for a in arrays], axis=1))


def _unpack(packed: Any, shapes: tuple[tuple[int, ...], ...]) -> tuple[Any, ...]:
    """:func:`_np_pack`'s bits (E, K, 2), in JAX -> the arrays, each (E, *shape)."""
    return _split(_unbits(packed), shapes)


def _flat(a: np.ndarray, core: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """``a`` with its leading (batch) axes flattened to one, and those axes."""
    lead = a.shape[: a.ndim - core]
    return np.ascontiguousarray(a.reshape((-1, *a.shape[a.ndim - core :])), dtype=np.float64), lead


@dataclass(frozen=True)
class _FfiKeys:
    """The registered solvers' keys (:func:`immunetwin.engines.native_ffi.add_solver`): the plain
    solver's, the sensitivity solver's, and per point count below the lanes the split solver's ('' for
    none), comma-separated."""

    values: str
    full: str
    split: str


@dataclass(frozen=True, eq=False)
class NativeFunctions:
    """JAX-callable native solves of one model with one method and tolerances.

    Attributes:
        plain: the model's solver (values only).
        sens: the solver of the model with its sensitivity equations, and that spec (``None`` when
            no directions were asked for).
        controls: tolerances and step limit.
        n_quantities: quantities the plain solve returns per time.
        spec, method: the model and method (for the solvers of split directions; ``None``: no split).
    """

    plain: native.NativeSolver
    sens: tuple[native.NativeSolver, SensitivitySpec] | None
    controls: Controls
    n_quantities: int
    spec: ModelSpec | None = None
    method: AbstractMethod | None = None
    ffi_keys: _FfiKeys | None = None

    @classmethod
    def build(
        cls,
        spec: ModelSpec,
        method: AbstractMethod,
        controls: Controls,
        directions: int,
        *,
        bridge: Literal["ffi", "callback"] = "ffi",
    ) -> NativeFunctions:
        """Generate and build (or load from the cache) both solvers; refuses what the native backend
        cannot do (:func:`immunetwin.engines.native.check_supported`).

        ``bridge``: how the compiled program reaches the solvers. ``"ffi"``: XLA FFI custom calls
        (:mod:`immunetwin.engines.native_ffi`), or ``jax.pure_callback`` where those cannot be built
        on this machine; ``"callback"``: ``jax.pure_callback``. Both give the same numbers."""
        if bridge not in ("ffi", "callback"):
            raise InputError(f"bridge must be 'ffi' or 'callback', got '{bridge}'")
        plain = native.build(spec, method, lanes=FIT_LANES)
        sens = (
            native.build_sensitivities(spec, method, directions, lanes=FIT_LANES) if directions > 0 else None
        )
        split: list[tuple[native.NativeSolver, SensitivitySpec] | None] = []
        for b in range(1, FIT_LANES):  # the split solvers of small batches, now rather than mid-fit
            groups, per = _groups(b, directions) if directions > 0 else (1, 0)
            split.append(
                native.build_sensitivities(spec, method, per, lanes=FIT_LANES) if groups > 1 else None
            )
        lib = native_ffi.handlers() if bridge == "ffi" else None
        keys = None
        if lib is not None:
            sens_key = lambda s: native_ffi.add_solver(  # noqa: E731
                lib, s[0], s[1].state_columns + s[1].sensitivity_columns
            )
            keys = _FfiKeys(
                values=native_ffi.add_solver(lib, plain),
                full=sens_key(sens) if sens is not None else "",
                split=",".join(sens_key(s) if s is not None else "" for s in split),
            )
        return cls(plain, sens, controls, len(spec.quantities), spec, method, keys)

    def _solve_sensitivities(self, *arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_solve_sensitivities_unique` of the distinct rows only (a lockstep fit pads its
        batch with copies of a point; JAX may repeat a point too), scattered back."""
        unique, inverse = _distinct_rows(arrays)
        if len(unique) == len(arrays[0]):
            return self._solve_sensitivities_unique(*arrays)
        out = self._solve_sensitivities_unique(*(a[unique] for a in arrays))
        return tuple(o[inverse] for o in out)  # type: ignore[return-value]

    def _solve_sensitivities_unique(
        self, ts: np.ndarray, y0: np.ndarray, c: np.ndarray, dy0: np.ndarray, dc: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`~immunetwin.engines.native.solve_sensitivities` of ``B`` rows. Fewer rows than a
        vector has lanes (one MAP start, two chains) would leave lanes idle: the directions are then
        split into groups, each solved with the model in its own lane (the model's states solved
        once per group, ``1 + D/groups`` blocks per lane instead of ``1 + D``), and put together
        again; the states are those of the first group. Each group's steps are chosen by its own
        error estimate, so groups agree to the tolerances, not bitwise."""
        assert self.sens is not None
        solver, spec = self.sens
        b, dirs = y0.shape[0], spec.directions
        groups, per = _groups(b, dirs)
        if groups <= 1 or self.spec is None or self.method is None:
            return native.solve_sensitivities(solver, spec, ts, y0, c, dy0, dc, self.controls)
        sub_solver, sub_spec = native.build_sensitivities(self.spec, self.method, per, lanes=FIT_LANES)
        pad = groups * per - dirs
        dy0_p = np.concatenate([dy0, np.zeros((*dy0.shape[:2], pad))], axis=2)
        dc_p = np.concatenate([dc, np.zeros((*dc.shape[:2], pad))], axis=2)
        # rows: patient-major, then group: (b * groups, ...)
        rep = lambda a: np.repeat(a, groups, axis=0)  # noqa: E731
        seeds_y = (
            dy0_p.reshape(b, dy0.shape[1], groups, per)
            .transpose(0, 2, 1, 3)
            .reshape(b * groups, dy0.shape[1], per)
        )
        seeds_c = (
            dc_p.reshape(b, dc.shape[1], groups, per)
            .transpose(0, 2, 1, 3)
            .reshape(b * groups, dc.shape[1], per)
        )
        states, sens, status = native.solve_sensitivities(
            sub_solver, sub_spec, rep(ts), rep(y0), rep(c), seeds_y, seeds_c, self.controls
        )
        t_count, n = states.shape[1], states.shape[2]
        sens = (
            sens.reshape(b, groups, t_count, n, per)
            .transpose(0, 2, 3, 1, 4)
            .reshape(b, t_count, n, groups * per)
        )
        status = status.reshape(b, groups)
        # a point failed if any of its groups did (the first failing group's code)
        failed = np.array([next((int(x) for x in row if x != 0), 0) for row in status])
        return states.reshape(b, groups, t_count, n)[:, 0], sens[..., :dirs], failed

    def values(self, ts: Any, y0: Any, c: Any) -> tuple[Any, Any]:
        """Every quantity at the times: ``ts`` (E, T), ``y0`` (E, n), ``c`` (E, nc) -> values
        (E, T, Q) and status (E,) (0: solved; :data:`~immunetwin.engines.integrate.STATUS`)."""
        e, t_count = ts.shape
        if self.ffi_keys is not None:
            ctl = self.controls
            values, status = jax.ffi.ffi_call(
                native_ffi.VALUES,
                (
                    jax.ShapeDtypeStruct((e, t_count, self.n_quantities), jnp.float64),
                    jax.ShapeDtypeStruct((e,), jnp.int32),
                ),
                vmap_method="broadcast_all",
            )(
                *(jnp.asarray(a, jnp.float64) for a in (ts, y0, c)),
                key=self.ffi_keys.values,
                rtol=np.float64(ctl.rtol),
                atol=np.float64(ctl.atol),
                max_steps=np.int64(ctl.max_steps),
                threads=np.int64(available_cores()),
            )
            return values, status
        shapes = ((t_count,), (y0.shape[-1],), (c.shape[-1],))

        def call(packed: Any) -> np.ndarray:
            t_, y0_, c_ = _np_unpack(packed, shapes)
            rows = tuple(_flat(a, 1)[0] for a in (t_, y0_, c_))
            unique, inverse = _distinct_rows(rows)
            values, status = native.solve_values(self.plain, *(a[unique] for a in rows), self.controls)
            return _np_pack(values[inverse], status[inverse]).reshape((*t_.shape[:-1], -1, 2))

        size = t_count * self.n_quantities + 1
        packed = jax.pure_callback(
            call, _bits_shape((e, size)), _pack(ts, y0, c), vmap_method="broadcast_all"
        )
        values, status = _unpack(packed, ((t_count, self.n_quantities), ()))
        return values, status.astype(jnp.int32)

    def sensitivities(self, ts: Any, y0: Any, c: Any, dy0: Any, dc: Any) -> tuple[Any, Any, Any]:
        """States and forward sensitivities at the times: seeds ``dy0`` (E, n, D) and ``dc``
        (E, nc, D) -> states (E, T, n), ``dy/dtheta`` (E, T, n, D) and status (E,). A failed solve's
        sensitivities are 0 (its status says it failed)."""
        if self.sens is None:
            raise ValueError("these native functions were built without sensitivity directions")
        _, spec = self.sens
        e, t_count = ts.shape
        n, nc, dirs = y0.shape[-1], c.shape[-1], spec.directions
        if self.ffi_keys is not None:
            ctl = self.controls
            return jax.ffi.ffi_call(  # type: ignore[no-any-return]
                native_ffi.SENSITIVITIES,
                (
                    jax.ShapeDtypeStruct((e, t_count, n), jnp.float64),
                    jax.ShapeDtypeStruct((e, t_count, n, dirs), jnp.float64),
                    jax.ShapeDtypeStruct((e,), jnp.int32),
                ),
                vmap_method="broadcast_all",
            )(
                *(jnp.asarray(a, jnp.float64) for a in (ts, y0, c, dy0, dc)),
                full=self.ffi_keys.full,
                split=self.ffi_keys.split,
                directions=np.int64(dirs),
                n=np.int64(n),
                nc=np.int64(nc),
                rtol=np.float64(ctl.rtol),
                atol=np.float64(ctl.atol),
                max_steps=np.int64(ctl.max_steps),
                threads=np.int64(available_cores()),
            )
        shapes = ((t_count,), (n,), (nc,), (n, dirs), (nc, dirs))

        def call(packed: Any) -> np.ndarray:
            ts_, y0_, c_, dy0_, dc_ = _np_unpack(packed, shapes)
            t_flat, lead = _flat(ts_, 1)
            states, sens, status = self._solve_sensitivities(
                t_flat, _flat(y0_, 1)[0], _flat(c_, 1)[0], _flat(dy0_, 2)[0], _flat(dc_, 2)[0]
            )
            sens = np.where((status == 0)[:, None, None, None], sens, 0.0)
            return _np_pack(states, sens, status).reshape((*lead, -1, 2))

        size = t_count * n * (1 + dirs) + 1
        packed = jax.pure_callback(
            call, _bits_shape((e, size)), _pack(ts, y0, c, dy0, dc), vmap_method="broadcast_all"
        )
        states, sens, status = _unpack(packed, ((t_count, n), (t_count, n, dirs), ()))
        return states, sens, status.astype(jnp.int32)
