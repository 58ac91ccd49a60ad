"""Compiler options of the engine's programs (immunetwin.engines.xla)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from immunetwin.engines.xla import CPU_OPTIONS, compiler_options, jit


def test_options_are_for_the_cpu_only_and_are_copies() -> None:
    opts = compiler_options("cpu")
    assert opts == {"xla_cpu_use_fusion_emitters": False}
    opts["xla_cpu_use_fusion_emitters"] = True
    assert CPU_OPTIONS["xla_cpu_use_fusion_emitters"] is False
    with pytest.raises(TypeError):
        CPU_OPTIONS["xla_cpu_use_fusion_emitters"] = True  # type: ignore[index]
    assert compiler_options("gpu") is None
    assert compiler_options("tpu") is None


def test_a_program_compiled_with_the_options_gives_the_plain_answer() -> None:
    def f(x):
        return jnp.where(x > 0, jnp.sqrt(x), -x) / (1.0 + x * x)

    x = np.linspace(-3.0, 3.0, 101)
    expected = np.where(x > 0, np.sqrt(np.abs(x)), -x) / (1.0 + x * x)
    with jax.enable_x64(True):
        got = np.asarray(jit(f)(jnp.asarray(x)))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-15, atol=0)
