"""XLA options for the engine's compiled programs.

On a CPU the engine's programs are one ``while`` loop over a few hundred small element-wise fusions.
XLA:CPU's newer MLIR fusion emitters spend about twice as long compiling such a program as its classic
LLVM IR emitters (``viral_immune``, 2-core AMD EPYC: XLA compile 10.1 s -> about 5 s) for code that
runs as fast on the 14-state model and about 10 % faster on the 2-state ``tumor_immune``, whose
compile is short either way (measurements: ``benchmarks/README.md``, ``BENCHMARKS.md``). The options
are given per program (``jax.jit(..., compiler_options=...)``), so nothing else in the process is
affected; they are also part of the persistent compilation cache's key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax

__all__ = ["CPU_OPTIONS", "compiler_options", "jit"]

#: XLA debug options the engine compiles its CPU programs with.
CPU_OPTIONS: Mapping[str, Any] = MappingProxyType({"xla_cpu_use_fusion_emitters": False})


def compiler_options(backend: str | None = None) -> dict[str, Any] | None:
    """The options for programs compiled for ``backend`` (default: JAX's default backend)."""
    return dict(CPU_OPTIONS) if (backend or jax.default_backend()) == "cpu" else None


def jit(fun: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
    """``jax.jit`` with the engine's compiler options for the default backend."""
    return jax.jit(fun, compiler_options=compiler_options(), **kwargs)
