"""Generated model code: deterministic across processes (so compiled models can be cached on disk),
and an exact Jacobian that agrees with automatic differentiation."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import immunetwin as it

MODEL = """
model m
  compartment c = 2
  species A in c = 3; species B in c = 1
  J1: A -> B; k1*A^h/(K^h + A^h)
  J2: B -> ; k2*B*time
  k1 = 1.5; K = 2; h = 2.5; k2 = 0.3
  s := A + B
end
"""


def _source_hash(seed: str) -> str:
    code = (
        "import hashlib, immunetwin as it, sys;"
        f"m = it.load_model({MODEL!r});"
        "print(hashlib.sha256(m.functions.source.encode()).hexdigest())"
    )
    env = dict(os.environ, PYTHONHASHSEED=seed, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_generated_source_is_identical_across_processes():
    assert _source_hash("1") == _source_hash("2")
    model = it.load_model(MODEL)
    assert hashlib.sha256(model.functions.source.encode()).hexdigest() == _source_hash("3")


def test_symbolic_jacobian_matches_autodiff_including_zero_states():
    model = it.load_model(MODEL)
    fns = model.functions
    with jax.enable_x64(True):
        declared = jnp.asarray([v for _, v in model.spec.declared])
        y0, c = fns.init(declared, jnp.zeros(len(model.ids), bool), 0.0)
        for y in (y0, y0 * 0.5, jnp.array([0.0, 0.7])):
            t = jnp.asarray(1.3)
            vals, dfdt = fns.jac(t, y, c)
            dense = np.zeros((2, 2))
            for k, (i, j) in enumerate(fns.jac_pattern):
                dense[i, j] = vals[k]
            np.testing.assert_allclose(dense, jax.jacfwd(fns.rhs, argnums=1)(t, y, c), rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(dfdt, jax.jacfwd(fns.rhs, argnums=0)(t, y, c), rtol=1e-12, atol=1e-14)


def test_observe_columns_are_those_of_the_full_observe():
    """``observe(..., columns)`` gives the chosen quantities of the full output, in the given order
    (concentrations of amount-stored species and assignment rules included); none: an empty vector."""
    model = it.load_model(MODEL)
    fns = model.functions
    ids = model.ids
    with jax.enable_x64(True):
        y = jnp.array([2.0, 0.5])
        c = jnp.asarray(np.linspace(0.5, 2.0, len(model.spec.constants)))
        full = np.asarray(fns.observe(0.7, y, c))
        assert full.shape == (len(ids),)
        cols = (ids.index("s"), ids.index("B"), ids.index("k1"))
        np.testing.assert_array_equal(np.asarray(fns.observe(0.7, y, c, cols)), full[list(cols)])
        assert full[ids.index("s")] == full[ids.index("A")] + full[ids.index("B")]
        assert np.asarray(fns.observe(0.7, y, c, ())).shape == (0,)
