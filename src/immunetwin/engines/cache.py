"""Compiled solvers kept on disk, so a new process skips tracing as well as compiling.

JAX's persistent compilation cache (see :func:`immunetwin.runtime.enable_compilation_cache`) skips
XLA compilation in a new process, but not tracing and lowering, which cost 1-2 s for a 14-state
model. When that cache is on, the lowered program is also serialised with ``jax.export`` into
``<cache>/immunetwin-export/<key>.bin``. The key hashes everything the program depends on: the
generated model source (identical across processes), the method, the controls, the argument shapes and
dtypes, the JAX version and the backend. A new process deserialises it and only compiles, which the
persistent cache answers. Any failure of this path falls back to plain ``jax.jit``: it can cost time,
never a wrong answer.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import jax

from immunetwin.engines.codegen import GeneratedFunctions
from immunetwin.engines.integrate import Controls
from immunetwin.engines.solvers import AbstractMethod

__all__ = ["compiled_solver"]


def _export_dir() -> Path | None:
    base = jax.config.jax_compilation_cache_dir
    return Path(base) / "immunetwin-export" if base else None


def _key(fns: GeneratedFunctions, method: AbstractMethod, ctl: Controls, shapes: tuple[Any, ...]) -> str:
    text = "\n".join(
        [fns.source, method.name, repr(ctl), repr(shapes), jax.__version__, jax.default_backend()]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _write_atomically(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(blob)
    os.replace(tmp, path)


def _exported(jitted: Callable[..., Any], arrays: Sequence[Any], path: Path) -> Callable[..., Any] | None:
    try:
        from jax import export as jax_export

        if path.is_file():
            return jax_export.deserialize(bytearray(path.read_bytes())).call
        exp = jax_export.export(jitted)(*arrays)
        _write_atomically(path, bytes(exp.serialize()))
        return exp.call
    except Exception:  # any failure here only means: compile the usual way
        return None


@lru_cache(maxsize=64)
def _solver(
    fns: GeneratedFunctions, method: AbstractMethod, ctl: Controls, shapes: tuple[Any, ...]
) -> Callable:
    from immunetwin.engines.ode import _solve_batch

    jitted = jax.jit(partial(_solve_batch, fns, method, ctl))
    where = _export_dir()
    if where is None:
        return jitted
    arrays = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes]
    return _exported(jitted, arrays, where / f"{_key(fns, method, ctl, shapes)}.bin") or jitted


def compiled_solver(
    fns: GeneratedFunctions, method: AbstractMethod, ctl: Controls, arrays: Sequence[Any]
) -> Callable[..., Any]:
    """The batched solver for these arguments' shapes: from memory, from disk, or newly compiled."""
    shapes = tuple((tuple(a.shape), str(a.dtype)) for a in arrays)
    return _solver(fns, method, ctl, shapes)
