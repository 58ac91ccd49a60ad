"""Compiled solvers serialised to disk (jax.export): written once, read back, same answers as jit."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import immunetwin as it
from immunetwin.engines import cache, ode


def test_exported_solver_round_trips_through_disk(tmp_path):
    model = it.load_model("model m\n  x = 2\n  x' = -k*x\n  k = 0.7\nend\n")
    method, ctl = it.Rodas5P(), it.Controls()
    with jax.enable_x64(True):
        d, m = ode._declared(model, {"k": np.array([0.5, 1.0])}, 2)
        stops = ode._stops(model, [it.Schedule()] * 2, model.spec.constants)
        arrays = (jnp.zeros((0,), bool), jnp.linspace(0.0, 2.0, 5), *map(jnp.asarray, (d, m, *stops)))
        jitted = jax.jit(partial(ode._solve_batch, model.functions, method, ctl, None))
        path = tmp_path / "solver.bin"
        written = cache._exported(jitted, arrays, path)
        assert written is not None and path.is_file()
        read = cache._exported(jitted, arrays, path)  # now deserialised, not traced
        expected = jitted(*arrays)
        for got in (written(*arrays), read(*arrays)):
            for a, b in zip(got, expected, strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_allclose(
            np.asarray(expected[0])[:, -1, 0], 2 * np.exp(-2 * np.array([0.5, 1.0])), rtol=1e-5
        )


def test_a_corrupt_file_falls_back_to_jit(tmp_path):
    path = tmp_path / "broken.bin"
    path.write_bytes(b"not an exported program")
    assert cache._exported(jax.jit(lambda x: x), [jax.ShapeDtypeStruct((1,), jnp.float32)], path) is None


def test_key_changes_with_what_the_program_depends_on():
    fns = it.load_model("model m\n  x = 1\n  x' = -x\nend\n").functions
    shapes = (((2,), "float64"),)
    base = cache._key(fns, it.Rodas5P(), it.Controls(), shapes)
    assert base == cache._key(fns, it.Rodas5P(), it.Controls(), shapes)
    assert base != cache._key(fns, it.Rodas5(), it.Controls(), shapes)
    assert base != cache._key(fns, it.Rodas5P(), it.Controls(rtol=1e-8), shapes)
    assert base != cache._key(fns, it.Rodas5P(), it.Controls(), (((3,), "float64"),))
