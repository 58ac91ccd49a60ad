"""The native solvers as XLA FFI custom calls: JAX programs call the generated C without Python.

:mod:`immunetwin.engines.native_jax` calls a native solve from a compiled JAX program. Through
``jax.pure_callback`` each call crosses into Python and back (the GIL, NumPy views of the buffers,
the results copied back): ~0.17 ms per call on the 2-core AMD EPYC, a tenth of a NUTS leapfrog step
of ``viral_tiv``, and two chains' programs run on two cores wait for each other's GIL. The XLA FFI
(``jax.ffi``; https://docs.jax.dev/en/latest/ffi.html) lets the program call a C function directly.

``native_ffi.cc`` holds two such handlers (values; states with forward sensitivities). It is built
once per machine with the C++ compiler against the FFI headers that jaxlib ships
(``jax.ffi.include_dir()``), kept beside the generated modules under a key that hashes its source,
the flags, the compiler and the jaxlib version, and registered with XLA once per process. The
generated modules stay cffi extensions; each one's ``itn_solve`` is registered with the handlers
under the module's key (:func:`add_solver`), and programs name solvers by that key, not by address.

Where the handlers cannot be built (no C++ compiler, no headers: :func:`handlers` returns ``None``
and :func:`unavailable_reason` says why) :mod:`~immunetwin.engines.native_jax` uses
``jax.pure_callback``; both give the same numbers (``tests/engines/test_native_ffi.py``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from immunetwin.engines import native

__all__ = ["SENSITIVITIES", "VALUES", "add_solver", "handlers", "unavailable_reason"]

#: Names of the FFI targets registered with XLA.
VALUES = "immunetwin_native_values"
SENSITIVITIES = "immunetwin_native_sensitivities"

_SOURCE = Path(__file__).with_name("native_ffi.cc")
_FLAGS: tuple[str, ...] = ("-std=c++17", "-O2", "-fPIC", "-shared", "-pthread")


def _compiler() -> str:
    return os.environ.get("CXX", "") or "g++"


def _version(cxx: str) -> str:
    try:
        done = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.splitlines()[0] if done.returncode == 0 and done.stdout else ""


def _build(target: Path, source: str, include: str, cxx: str) -> Path:
    """Compile the shim into ``target`` (a private temporary file, then moved in atomically)."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(prefix="immunetwin-ffi-") as tmp:
        src = Path(tmp) / "native_ffi.cc"
        src.write_text(source)
        out = Path(tmp) / target.name
        done = subprocess.run(
            [cxx, *_FLAGS, f"-I{include}", str(src), "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise OSError(f"{cxx} could not build the FFI handlers: {last}")
        staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copy2(out, staged)
        os.replace(staged, target)
    return target


@lru_cache(maxsize=1)
def _load() -> tuple[Any, str]:
    """(the loaded shim, '') or (None, why not): built or taken from the cache, its targets registered."""
    import jax
    import jaxlib

    cxx = _compiler()
    version = _version(cxx)
    if not version:
        return None, f"no C++ compiler ('{cxx}' did not run; set CXX)"
    try:
        include = jax.ffi.include_dir()
    except AttributeError:
        return None, "this JAX has no jax.ffi"
    if not (Path(include) / "xla" / "ffi" / "api" / "ffi.h").is_file():
        return None, f"jaxlib ships no FFI headers in {include}"
    source = _SOURCE.read_text()
    key = hashlib.sha256(
        "\n".join([source, repr(_FLAGS), cxx, version, jaxlib.__version__]).encode()
    ).hexdigest()[:24]
    name = f"_immunetwin_ffi_{key}.so"
    path = native._cache_dir() / name
    try:
        lib = None
        if path.is_file():
            try:
                lib = ctypes.CDLL(str(path))
            except OSError:  # a truncated or foreign file in the cache: build it again
                lib = None
        if lib is None:
            try:
                _build(path, source, include, cxx)
            except PermissionError:  # the cache folder is not writable: this process's own folder
                path = _build(Path(tempfile.mkdtemp(prefix="immunetwin-ffi-")) / name, source, include, cxx)
            lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    lib.itn_ffi_add.argtypes = [
        ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
    ]  # fmt: skip
    lib.itn_ffi_add.restype = None
    jax.ffi.register_ffi_target(VALUES, jax.ffi.pycapsule(lib.ItnValues), platform="cpu")
    jax.ffi.register_ffi_target(SENSITIVITIES, jax.ffi.pycapsule(lib.ItnSensitivities), platform="cpu")
    return lib, ""


def handlers() -> Any:
    """The loaded handlers (built on first use), or ``None`` where they cannot be built here."""
    return _load()[0]


def unavailable_reason() -> str:
    """Why :func:`handlers` is ``None`` ('' when it is not)."""
    return _load()[1]


def add_solver(lib: Any, solver: native.NativeSolver, columns: tuple[int, ...] | None = None) -> str:
    """Register ``solver`` with the handlers (``lib`` from :func:`handlers`) under its key, with the
    quantity ``columns`` its outputs hold (default: all). Returns the key programs name it by."""
    cols = np.asarray(range(solver.n_quantities) if columns is None else columns, dtype=np.int64)
    fn = int(solver.ffi.cast("uintptr_t", solver.ffi.addressof(solver.lib, "itn_solve")))
    key = f"{solver.key}-{hashlib.sha256(cols.tobytes()).hexdigest()[:12]}"
    lib.itn_ffi_add(
        key.encode(), ctypes.c_void_p(fn), solver.n_states, solver.n_constants,
        cols.ctypes.data_as(ctypes.c_void_p), cols.size,
    )  # fmt: skip
    return key
