"""Process-level runtime switches, called explicitly by applications (never at import time), and the
raw integers of a random key (for provenance records and host-side generators)."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import jax
import numpy as np
import platformdirs

from immunetwin.errors import InputError

__all__ = [
    "SMALL_LOOP_BYTES",
    "available_cores",
    "compile_small_loops_whole",
    "default_cache_dir",
    "enable_compilation_cache",
    "key_data",
    "pin_to_cores",
    "use_all_cpu_cores",
]

#: Loops whose buffers XLA:CPU compiles into one kernel after :func:`compile_small_loops_whole`.
SMALL_LOOP_BYTES = 1_000_000_000
_SMALL_LOOP_OPTION = "xla_cpu_small_while_loop_byte_threshold"


def default_cache_dir() -> Path:
    """The user's cache folder for compiled models (platform dependent)."""
    return Path(platformdirs.user_cache_dir("immunetwin")) / "jax"


def enable_compilation_cache(path: Path) -> Path:
    """Keep XLA compilations on disk so a model compiles once per machine, not once per process.

    Uses JAX's persistent compilation cache (every compilation is cached, however short).
    """
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one: a pinned Dask
    worker counts only its own), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def use_all_cpu_cores(count: int | None = None) -> bool:
    """Show the CPU to JAX as one device per core, so that a cohort runs on every core.

    XLA runs one solver loop on one thread; :func:`immunetwin.simulate_cohort` splits each chunk of
    patients over the devices, one loop each. Takes effect only before JAX starts its backends (the
    first computation or device query) and fixes the count for the process; a GPU backend stays the
    default and is unaffected.

    Args:
        count: CPU devices to show; default the cores this process may run on.

    Returns:
        Whether the setting took effect: False when JAX had already started, or when ``XLA_FLAGS``
        already sets ``--xla_force_host_platform_device_count`` (the user's choice wins).
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return False
    cores = available_cores()
    try:
        jax.config.update("jax_num_cpu_devices", count or cores)
    except RuntimeError:  # JAX has started: its device count is fixed for this process
        return False
    return True


def pin_to_cores(cores: Collection[int]) -> bool:
    """Run every thread of this process, and every thread it starts later, on ``cores`` only.

    Meant for one of several worker processes sharing a machine (a local Dask cluster): unpinned,
    the operating system moves each process's XLA threads across all cores, where they evict each
    other's caches. On the 2-core benchmark machine two processes of the benchmark trial ran at 580
    patients/s each unpinned and 777 each when pinned to one core apiece, with 25 % less CPU time
    (``benchmarks/README.md``). Call it before JAX starts its backends, so that XLA sizes its thread
    pool to the cores it may use.

    Args:
        cores: the CPU numbers this process may use, a subset of those it may use now.

    Returns:
        Whether the setting took effect: False where the operating system has no per-thread CPU
        affinity that Python can set (macOS, Windows).

    Raises:
        InputError: ``cores`` is empty or names a core this process may not use.
    """
    wanted = set(cores)
    if not hasattr(os, "sched_getaffinity") or not os.path.isdir("/proc/self/task"):
        return False
    allowed = os.sched_getaffinity(0)
    if not wanted or not wanted <= allowed:
        raise InputError(
            f"cannot pin this process to cores {sorted(wanted)}: it may run on {sorted(allowed)} only"
        )
    for tid in os.listdir("/proc/self/task"):  # Linux affinity is per thread; new threads inherit it
        try:
            os.sched_setaffinity(int(tid), wanted)
        except (ProcessLookupError, FileNotFoundError):  # the thread ended meanwhile
            continue
    return True


def compile_small_loops_whole(threshold_bytes: int = SMALL_LOOP_BYTES) -> bool:
    """Let XLA:CPU compile each solver loop into one kernel instead of one task per operation.

    Since JAX 0.7, XLA:CPU runs a ``while`` loop as a sequence of small tasks ("thunks"), one per fused
    operation, except loops whose buffers total under 1 kB, which it compiles whole. An adaptive ODE
    solve of one patient is hundreds of tiny operations per step, so the per-task overhead dominates:
    raising the limit made one forward-sensitivity log-likelihood gradient of ``viral_tiv`` 3x
    faster (34 -> 12 ms) and a 3-start MAP fit 2.2x faster (see ``benchmarks/README.md``); results
    agree to rounding (``tests/test_runtime.py``: 1e-12). The option is read from ``XLA_FLAGS`` when
    JAX starts its backends, so this must run before the first computation.

    Args:
        threshold_bytes: loops whose buffers total fewer bytes are compiled whole.

    Returns:
        Whether the setting took effect: False when JAX had already started, or when ``XLA_FLAGS``
        already sets the option (the user's choice wins).

    Raises:
        InputError: ``threshold_bytes`` is not a positive integer.
    """
    if isinstance(threshold_bytes, bool) or not isinstance(threshold_bytes, int) or threshold_bytes < 1:
        raise InputError(f"threshold_bytes must be a positive integer, got {threshold_bytes!r}")
    flags = os.environ.get("XLA_FLAGS", "")
    if _SMALL_LOOP_OPTION in flags or _backends_started():
        return False
    extra = f"--xla_backend_extra_options={_SMALL_LOOP_OPTION}={int(threshold_bytes)}"
    if "xla_backend_extra_options" in flags:  # one map: append our entry to the user's
        parts = flags.split()
        parts = [
            p + f",{_SMALL_LOOP_OPTION}={int(threshold_bytes)}"
            if p.startswith("--xla_backend_extra_options=")
            else p
            for p in parts
        ]
        os.environ["XLA_FLAGS"] = " ".join(parts)
    else:
        os.environ["XLA_FLAGS"] = f"{flags} {extra}".strip()
    return True


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - a JAX without this module: assume not started
        return False
    return bool(getattr(xla_bridge, "backends_are_initialized", lambda: False)())


def key_data(key: Any) -> tuple[int, ...]:
    """The raw integers of a JAX random key (old-style uint32 array or new-style typed key)."""
    try:
        data = jax.random.key_data(key)
    except (TypeError, ValueError):
        data = key
    return tuple(int(x) for x in np.asarray(data).ravel())
