"""Compiled solvers kept on disk, so that a new process neither traces, lowers nor compiles them.

JAX's persistent compilation cache (see :func:`immunetwin.runtime.enable_compilation_cache`) skips XLA
compilation in a new process, but every first call still traces the program and lowers it to compute
the cache's key. When that cache is on, the engine also keeps each compiled program itself
(``jax.experimental.serialize_executable``) in ``<cache>/immunetwin-programs/<key>.xla``, and a new
process loads and calls it. For the ``viral_immune`` chunk program (2 CPU devices) that is 0.3 s,
against 0.8 s for the ``jax.export`` program this module kept before: calling a deserialised
``jax.export`` program re-lowers it, and JAX imports ``scipy.linalg`` (0.7 s) before lowering one
(``benchmarks/README.md``).

The key hashes everything the program depends on: the generated model source (identical across
processes), the method, the controls, the argument shapes and dtypes, the number of devices the
patients are split over, the output columns, the JAX and jaxlib versions, the backend and its platform
version, ``XLA_FLAGS``, the host's CPU (model and instruction-set flags: a CPU program is machine code
for one kind of processor) and the engine's own source files.

Trust: loading a saved program runs the machine code in the cache directory, as JAX's own persistent
cache does, so the directory must be writable by its user only. Any failure of this path (an
unreadable, stale or foreign file) falls back to compiling, and the file is rewritten: it can cost
time, never a wrong answer. A program that JAX's persistent cache answered is used but not saved:
re-serialised, it lacks its compiled functions (jaxlib 0.10: it loads, then fails when run).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import jax
import jaxlib
from jax import monitoring

from immunetwin.engines.codegen import GeneratedFunctions
from immunetwin.engines.integrate import Controls
from immunetwin.engines.solvers import AbstractMethod

__all__ = ["compiled_solver"]


def _program_dir() -> Path | None:
    base = jax.config.jax_compilation_cache_dir
    return Path(base) / "immunetwin-programs" if base else None


def _key(
    fns: GeneratedFunctions,
    method: AbstractMethod,
    ctl: Controls,
    shapes: tuple[Any, ...],
    shards: int = 1,
    columns: tuple[int, ...] | None = None,
) -> str:
    parts = [fns.source, method.name, repr(ctl), repr(shapes), f"shards={shards}", f"columns={columns}"]
    text = "\n".join([*parts, _machine(), _engine_version()])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@lru_cache(maxsize=1)
def _machine() -> str:
    """What a compiled program is specific to besides its source: JAX, XLA's options, the backend and
    the processor (on Linux the CPU's model name and instruction-set flags from ``/proc/cpuinfo``)."""
    client = jax.devices()[0].client
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = "\n".join(sorted({x for x in lines if x.startswith(("model name", "flags", "Features"))}))
    except OSError:
        pass
    versions = (jax.__version__, jaxlib.__version__, client.platform, client.platform_version)
    return "\n".join([*versions, os.environ.get("XLA_FLAGS", ""), cpu])


@lru_cache(maxsize=1)
def _engine_version() -> str:
    """A hash of the engine's own source: a program saved by other engine code is never reused."""
    from immunetwin.engines import codegen, integrate, ode, solvers, xla

    modules = (codegen, integrate, ode, solvers, xla, sys.modules[__name__])
    return hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in modules)).hexdigest()


def _write_atomically(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path, devices: Sequence[Any]) -> Callable[..., Any] | None:
    """The compiled program saved at ``path``, loaded onto ``devices``; None if there is none or it
    cannot be loaded."""
    from jax.experimental import serialize_executable

    try:
        blob, in_tree, out_tree = pickle.loads(path.read_bytes())
        return serialize_executable.deserialize_and_load(blob, in_tree, out_tree, execution_devices=devices)
    except Exception:  # missing, truncated, or saved by another JAX: compile instead
        return None


def _saved(
    jitted: Any, arrays: Sequence[Any], path: Path, devices: Sequence[Any]
) -> Callable[..., Any] | None:
    """The program of ``jitted`` for ``arrays`` (shapes), read from ``path`` or compiled and saved there
    first; None if it can be neither read nor compiled and saved."""
    loaded = _load(path, devices) if path.is_file() else None
    if loaded is not None:
        return loaded
    from jax.experimental import serialize_executable

    hits: list[str] = []
    listener = partial(_note_cache_hit, hits)
    monitoring.register_event_listener(listener)
    try:
        compiled = jitted.lower(*arrays).compile()
    except Exception:  # the caller compiles it the usual way (and meets the error, if it is real)
        return None
    finally:
        monitoring.unregister_event_listener(listener)
    if not hits:
        with contextlib.suppress(Exception):  # a program this JAX cannot serialise: used, not kept
            _write_atomically(path, pickle.dumps(serialize_executable.serialize(compiled)))
    return compiled


def _note_cache_hit(hits: list[str], event: str, **_: Any) -> None:
    """Listener: JAX's persistent cache answered a compilation. Such a program is not saved: its
    re-serialisation lacks the compiled functions (jaxlib 0.10: it loads, then fails when run with
    ``NOT_FOUND: Function ... not found``). Conservative: a hit in another thread counts too."""
    if event == _CACHE_HIT:
        hits.append(event)


_CACHE_HIT = "/jax/compilation_cache/cache_hits"


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
    where = _program_dir()
    if where is None:
        return jitted
    arrays = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes]
    mesh = _mesh(shards)
    devices = jax.local_devices()[:1] if mesh is None else list(mesh.devices.flat)
    path = where / f"{_key(fns, method, ctl, shapes, shards, columns)}.xla"
    return _saved(jitted, arrays, path, devices) or jitted


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
