"""The native solvers called from JAX programs as XLA FFI custom calls give exactly what the
``jax.pure_callback`` bridge gives, refuse what they cannot solve by name, and fall back when the
handlers cannot be built."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from enzyme import ENZYME
from immunetwin import Controls, load_model
from immunetwin.engines import native_ffi
from immunetwin.engines.native_jax import NativeFunctions
from immunetwin.engines.solvers import Rodas5P
from immunetwin.errors import InputError

CTL = Controls(rtol=1e-8, atol=1e-10)
TIMES = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0])

DIRECTIONS = 3  # Vm, Km and S0: with one point, split over 3 lanes; with two, over 2 groups of 2

# a machine without a C++ compiler falls back to the callback bridge (skip); CI must build the handlers
needs_ffi = pytest.mark.skipif(
    native_ffi.handlers() is None and os.environ.get("CI", "").lower() != "true",
    reason=f"FFI handlers unavailable: {native_ffi.unavailable_reason()}",
)


@pytest.fixture(scope="module")
def spec():
    return load_model(ENZYME).spec


@pytest.fixture(scope="module")
def bridges(spec):
    return {b: NativeFunctions.build(spec, Rodas5P(), CTL, DIRECTIONS, bridge=b) for b in ("ffi", "callback")}


def _inputs(spec, rows: int, seed: int):
    """Start values, constants and seeds of ``rows`` points with varied Vm and Km; seeds
    d/d(Vm, Km, S0)."""
    rng = np.random.default_rng(seed)
    names = list(spec.constants)
    base = {"C": 2.0, "Vm": 1.5, "Km": 3.0, "Ki": 4.0}
    c = np.array([[base.get(x, 0.0) for x in names]] * rows)
    c[:, names.index("Vm")] *= rng.uniform(0.5, 2.0, rows)
    c[:, names.index("Km")] *= rng.uniform(0.5, 2.0, rows)
    y0 = np.tile([[10.0 * 2.0, 0.0]], (rows, 1))  # amounts in C = 2
    dy0 = np.zeros((rows, 2, DIRECTIONS))
    dy0[:, 0, 2] = 2.0
    dc = np.zeros((rows, len(names), DIRECTIONS))
    dc[:, names.index("Vm"), 0] = 1.0
    dc[:, names.index("Km"), 1] = 1.0
    ts = np.tile(TIMES, (rows, 1))
    return ts, y0, c, dy0, dc


def _call(fns: NativeFunctions, what: str, *arrays):
    with jax.enable_x64(True):
        f = jax.jit(getattr(fns, what))
        return [np.asarray(x) for x in f(*(jnp.asarray(a) for a in arrays))]


@needs_ffi
@pytest.mark.parametrize("rows", [1, 2, 4, 7])
def test_ffi_sensitivities_equal_the_callback_bitwise(spec, bridges, rows) -> None:
    assert bridges["ffi"].ffi_keys is not None and bridges["callback"].ffi_keys is None
    inputs = _inputs(spec, rows, seed=rows)
    ffi = _call(bridges["ffi"], "sensitivities", *inputs)
    cb = _call(bridges["callback"], "sensitivities", *inputs)
    assert ffi[2].tolist() == [0] * rows
    for a, b in zip(ffi, cb, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert np.abs(ffi[1]).max() > 0.1  # the sensitivities are there, not zeros


@needs_ffi
def test_ffi_solves_repeated_points_once_and_scatters_them_back(spec, bridges) -> None:
    ts, y0, c, dy0, dc = _inputs(spec, 2, seed=5)
    order = [0, 1, 0, 0, 1]  # two distinct points in five rows: the two-point split solver
    repeated = [a[order] for a in (ts, y0, c, dy0, dc)]
    alone = _call(bridges["ffi"], "sensitivities", ts, y0, c, dy0, dc)
    many = _call(bridges["ffi"], "sensitivities", *repeated)
    for a, b in zip(alone, many, strict=True):
        np.testing.assert_array_equal(a[order], b)


@needs_ffi
def test_ffi_values_equal_the_callback_under_vmap(spec, bridges) -> None:
    ts, y0, c, _, _ = _inputs(spec, 6, seed=2)
    batched = [a.reshape(3, 2, *a.shape[1:]) for a in (ts, y0, c)]  # (chains, experiments, ...)
    with jax.enable_x64(True):
        out = {
            b: [np.asarray(x) for x in jax.jit(jax.vmap(fns.values))(*map(jnp.asarray, batched))]
            for b, fns in bridges.items()
        }
    assert out["ffi"][0].shape == (3, 2, len(TIMES), len(spec.quantities))
    for a, b in zip(out["ffi"], out["callback"], strict=True):
        np.testing.assert_array_equal(a, b)


@needs_ffi
def test_ffi_failed_solve_reports_its_status_and_zero_sensitivities(spec) -> None:
    fns = NativeFunctions.build(spec, Rodas5P(), Controls(max_steps=3), DIRECTIONS, bridge="ffi")
    inputs = _inputs(spec, 4, seed=3)
    _, sens, status = _call(fns, "sensitivities", *inputs)
    assert status.tolist() == [1] * 4  # max_steps_reached
    assert not sens.any()


@needs_ffi
def test_ffi_unknown_solver_is_refused_by_key(spec) -> None:
    ts, y0, c, _, _ = _inputs(spec, 1, seed=0)
    call = jax.ffi.ffi_call(
        native_ffi.VALUES,
        (jax.ShapeDtypeStruct((1, len(TIMES), 4), jnp.float64), jax.ShapeDtypeStruct((1,), jnp.int32)),
    )
    with jax.enable_x64(True), pytest.raises(Exception, match="no-such-solver is not loaded"):
        jax.block_until_ready(
            call(
                *map(jnp.asarray, (ts, y0, c)),
                key="no-such-solver",
                rtol=1e-6,
                atol=1e-9,
                max_steps=10,
                threads=1,
            )
        )


@needs_ffi
@pytest.mark.parametrize(
    ("states", "quantities", "message"), [(1, None, "input shapes"), (2, 1, "result shapes")]
)
def test_ffi_refuses_arrays_that_do_not_fit_the_solver(bridges, spec, states, quantities, message) -> None:
    ts, y0, c, _, _ = _inputs(spec, 1, seed=0)
    q = len(spec.quantities) if quantities is None else quantities
    call = jax.ffi.ffi_call(
        native_ffi.VALUES,
        (jax.ShapeDtypeStruct((1, len(TIMES), q), jnp.float64), jax.ShapeDtypeStruct((1,), jnp.int32)),
    )
    with jax.enable_x64(True), pytest.raises(Exception, match=f"{message} do not match"):
        jax.block_until_ready(
            call(
                *map(jnp.asarray, (ts, y0[:, :states], c)),
                key=bridges["ffi"].ffi_keys.values, rtol=1e-6, atol=1e-9, max_steps=10, threads=1,
            )
        )  # fmt: skip


def test_without_a_cxx_compiler_the_handlers_say_why(monkeypatch) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    lib, why = native_ffi._load.__wrapped__()
    assert lib is None
    assert "no C++ compiler" in why and "/nonexistent/c++" in why


def test_unknown_bridge_is_refused(spec) -> None:
    with pytest.raises(InputError, match="bridge must be 'ffi' or 'callback', got 'pipe'"):
        NativeFunctions.build(spec, Rodas5P(), CTL, DIRECTIONS, bridge="pipe")  # type: ignore[arg-type]


@needs_ffi
def test_a_damaged_cached_build_is_built_again(tmp_path, monkeypatch) -> None:
    import jax

    from immunetwin.engines import native

    monkeypatch.setattr(jax.ffi, "register_ffi_target", lambda *a, **k: None)  # registered already
    (first := tmp_path / "first").mkdir()
    monkeypatch.setattr(native, "_cache_dir", lambda: first)
    lib, why = native_ffi._load.__wrapped__()  # a build into an empty folder gives the file's name
    assert lib is not None, why
    (built,) = first.glob("_immunetwin_ffi_*.so")
    (cache := tmp_path / "cache").mkdir()
    damaged = cache / built.name
    damaged.write_bytes(b"not a shared object")  # never loaded: a loaded library must not be rewritten
    monkeypatch.setattr(native, "_cache_dir", lambda: cache)
    lib, why = native_ffi._load.__wrapped__()
    assert lib is not None, why
    assert damaged.read_bytes()[:4] == b"\x7fELF"
