"""Process-level runtime switches, called explicitly by applications (never at import time)."""

from __future__ import annotations

from pathlib import Path

import jax
import platformdirs

__all__ = ["default_cache_dir", "enable_compilation_cache"]


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
