"""Compiled solvers kept on disk, so a new process skips tracing as well as compiling.

JAX's persistent compilation cache (see :func:`immunetwin.runtime.enable_compilation_cache`) skips
XLA compilation in a new process, but not tracing and lowering, which cost 1-2 s for a 14-state
model. When that cache is on, the lowered program is also serialised with ``jax.export`` into
``<cache>/immunetwin-export/<key>.bin``. The key hashes everything the program depends on: the
generated model source (identical across processes), the method, the controls, the argument shapes and
dtypes, the number of devices the patients are split over, the JAX version, the backend and the
engine's own source files. A new process deserialises it and only compiles, which the
persistent cache answers. Any failure of this path falls back to plain ``jax.jit``: it can cost time,
never a wrong answer.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh

from immunetwin.engines.codegen import GeneratedFunctions
from immunetwin.engines.integrate import Controls
from immunetwin.engines.solvers import AbstractMethod
from immunetwin.engines.xla import jit

__all__ = ["compiled_solver"]


def _export_dir() -> Path | None:
    base = jax.config.jax_compilation_cache_dir
    return Path(base) / "immunetwin-export" if base else None


def _key(
    fns: GeneratedFunctions,
    method: AbstractMethod,
    ctl: Controls,
    shapes: tuple[Any, ...],
    shards: int = 1,
    columns: tuple[int, ...] | None = None,
) -> str:
    parts = [fns.source, method.name, repr(ctl), repr(shapes), jax.__version__, jax.default_backend()]
    text = "\n".join([*parts, f"shards={shards}", f"columns={columns}", _engine_version()])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@lru_cache(maxsize=1)
def _engine_version() -> str:
    """A hash of the engine's own source: a program saved by other engine code is never reused."""
    from immunetwin.engines import codegen, integrate, ode, solvers

    modules = (codegen, integrate, ode, solvers, sys.modules[__name__])
    return hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in modules)).hexdigest()


def _write_atomically(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(blob)
    os.replace(tmp, path)


def _exported(
    jitted: Callable[..., Any], arrays: Sequence[Any], path: Path, mesh: Mesh | None = None
) -> Callable[..., Any] | None:
    """The program read from ``path`` (or exported there first); a program split over the devices of
    ``mesh`` is called through ``jax.jit`` with its shardings on that mesh; both are compiled with the
    engine's options (:mod:`immunetwin.engines.xla`). None on any failure."""
    try:
        from jax import export as jax_export

        if path.is_file():
            exp = jax_export.deserialize(bytearray(path.read_bytes()))
        else:
            exp = jax_export.export(jitted)(*arrays)
            _write_atomically(path, bytes(exp.serialize()))
        if exp.nr_devices != (1 if mesh is None else mesh.size):
            return None
        if mesh is None:
            return jit(exp.call)
        return jit(exp.call, in_shardings=exp.in_shardings_jax(mesh))
    except Exception:  # any failure here only means: compile the usual way
        return None


@lru_cache(maxsize=64)
def _solver(
    fns: GeneratedFunctions,
    method: AbstractMethod,
    ctl: Controls,
    shapes: tuple[Any, ...],
    shards: int,
    columns: tuple[int, ...] | None,
) -> Callable:
    from immunetwin.engines.ode import _mesh, _program

    jitted = _program(fns, method, ctl, shards, columns)
    where = _export_dir()
    if where is None:
        return jitted
    arrays = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes]
    path = where / f"{_key(fns, method, ctl, shapes, shards, columns)}.bin"
    return _exported(jitted, arrays, path, _mesh(shards)) or jitted


def compiled_solver(
    fns: GeneratedFunctions,
    method: AbstractMethod,
    ctl: Controls,
    arrays: Sequence[Any],
    shards: int = 1,
    columns: tuple[int, ...] | None = None,
) -> Callable[..., Any]:
    """The batched solver for these arguments' shapes, split over ``shards`` devices, returning the
    output ``columns`` (indices into the model's ids; ``None``: all): from memory, from disk, or newly
    compiled."""
    shapes = tuple((tuple(a.shape), str(a.dtype)) for a in arrays)
    return _solver(fns, method, ctl, shapes, shards, columns)
