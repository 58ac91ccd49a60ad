"""Run the chains of a NUTS kernel (NumPyro ``MCMC``) in one of three ways.

* ``"vectorized"``: all chains in lockstep as one batched program (``jax.vmap``). Right on one
  device, where a batched step costs little more than one chain's.
* ``"sequential"``: one chain after another, in one program.
* ``"parallel"``: each chain as one compiled program (the kernel's initial state, warm-up and draws in
  one loop), compiled once and run by several threads at once, one per core this process may use (or
  ``workers``), each running its share of the chains one after another. XLA:CPU runs one device's
  programs from several threads at once, so the chains share one compilation instead of each compiling
  its own (NumPyro's ``MCMC`` builds new functions per run, and a chain's init and sampling loop each
  cost 3.5-8 s to compile for ``viral_immune``). The threads run at once where the potential holds no
  Python lock: the XLA engine, and the native backend through its FFI calls
  (:mod:`immunetwin.engines.native_ffi`). ``viral_immune`` on one patient, native, dense adapted
  metric, rtol 1e-6, 4 x 1,000 draws after 1,000 warm-up on the 2-core AMD EPYC: 46.9 s, against 62.5 s
  with one ``MCMC`` per chain spread over two devices (``benchmarks/README.md``). A chain's draws depend
  on its key and start only, not on the number of threads or devices; they agree with NumPyro's
  ``MCMC`` on one chain to rounding (the same transitions from the same key; rounding differences
  grow over the warm-up's adaptation, as between any two compilations of a sampler), and differ from
  the ``vectorized`` draws at rounding level and then beyond, because XLA:CPU rounds a batch's partial
  vector blocks differently (see :data:`immunetwin.engines.ode.LANES`). The progress bar is not shown.
  Only for a kernel of a ``potential_fn``: a NumPyro *model* is traced through effect handlers kept in
  one stack for the whole process, which two threads tracing at once corrupt (seen: "all sites must
  have unique names but got `mu` duplicated").

Chain ``c`` always gets the key ``jax.random.split(key, chains)[c]``, as NumPyro gives it in its
batched methods.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from numpyro.infer import MCMC, NUTS

from immunetwin.errors import InputError
from immunetwin.runtime import available_cores

__all__ = ["CHAIN_METHODS", "ChainMethod", "CompiledInitNUTS", "check_chain_method", "run_chains"]

ChainMethod = Literal["vectorized", "sequential", "parallel"]
CHAIN_METHODS: tuple[str, ...] = ("vectorized", "sequential", "parallel")


def check_chain_method(chain_method: str) -> None:
    """Refuse an unknown ``chain_method`` by name."""
    if chain_method not in CHAIN_METHODS:
        known = ", ".join(f"'{m}'" for m in CHAIN_METHODS)
        raise InputError(f"chain_method must be one of {known}, got '{chain_method}'")


class CompiledInitNUTS(NUTS):
    """NumPyro's NUTS whose initial state (the first potential and gradient, the first momentum,
    the warm-up adapter's state) is computed by one compiled program.

    NumPyro runs that initialisation op by op, and in a fresh process every operation is an XLA
    compilation of its own: a run of ``viral_tiv`` on the native backend (4 vectorised chains, 5 + 5
    iterations, the 2-core AMD EPYC) made 307 compilations inside NumPyro's chain loop, 12.6 s; with
    the initialisation under ``jax.jit``, 24 (5.5 s), and with 4 chains spread over 2 devices the
    whole call took 17.7 s instead of 27.8 s (``benchmarks/README.md``). The same NumPyro function runs, traced instead of
    executed eagerly; it is safe to trace for the reason NumPyro gives for ``vmap``-ing it: the
    variables it sets for the sampler (tree depth, step counts, the adapter's update) do not depend on
    the traced arguments. Values agree with the eager initialisation to rounding.
    """

    def _init_state(self, rng_key: Any, model_args: Any, model_kwargs: Any, init_params: Any) -> Any:
        out = super()._init_state(rng_key, model_args, model_kwargs, init_params)
        raw = self._init_fn
        if raw is not None and not getattr(raw, "compiled_init", False):

            def init_fn(
                params: Any,
                *,
                rng_key: Any,
                inverse_mass_matrix: Any = None,
                model_args: Any = (),
                model_kwargs: Any = None,
                **static: Any,
            ) -> Any:
                def traced(p: Any, key: Any, mass: Any, args: Any) -> Any:
                    return raw(
                        p, rng_key=key, inverse_mass_matrix=mass, model_args=args,
                        model_kwargs=model_kwargs or {}, **static,
                    )  # fmt: skip

                return jax.jit(traced)(params, rng_key, inverse_mass_matrix, model_args)

            init_fn.compiled_init = True  # type: ignore[attr-defined]
            self._init_fn = init_fn
        return out


def _chain(tree: Any, c: int) -> Any:
    return jax.tree.map(lambda a: a[c], tree)


def run_chains(
    make_kernel: Callable[[], Any],
    *,
    key: Any,
    init: Any,
    chains: int,
    warmup: int,
    draws: int,
    chain_method: ChainMethod,
    progress: bool,
    extra_fields: Sequence[str],
    workers: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Run ``chains`` chains of the kernel that ``make_kernel()`` builds (a fresh one per program:
    NumPyro kernels keep state) from ``init`` (a pytree whose leaves lead with the chain axis; for
    ``"parallel"``, an array ``(chains, dim)``). ``workers``: threads of the ``"parallel"`` method
    (default: the cores this process may use).

    Returns:
        The samples and the ``extra_fields``, each leaf with leading axes ``(chains, draws)``.
    """
    check_chain_method(chain_method)
    if chain_method != "parallel":
        mcmc = MCMC(
            make_kernel(),
            num_warmup=warmup,
            num_samples=draws,
            num_chains=chains,
            chain_method=chain_method,
            progress_bar=progress,
        )
        mcmc.run(key, init_params=init if chains > 1 else _chain(init, 0), extra_fields=tuple(extra_fields))
        return mcmc.get_samples(group_by_chain=True), mcmc.get_extra_fields(group_by_chain=True)

    if workers is not None and workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    kernel = make_kernel()
    if getattr(kernel, "model", None) is not None:
        raise InputError(
            "chain_method='parallel' needs a kernel of a potential_fn: NumPyro's effect handlers, through"
            " which a model is traced, are not safe in two threads at once"
        )
    keys = jax.random.split(key, chains)
    starts = np.asarray(init)
    x64 = bool(jax.config.jax_enable_x64)  # JAX's context settings are per thread: carry this one over
    fields = tuple(dict.fromkeys(("z", "diverging", *extra_fields)))  # as MCMC collects them
    program = jax.jit(_chain_program(kernel, warmup, draws, fields)).lower(keys[0], starts[0]).compile()
    threads = min(chains, workers or available_cores())

    def one(c: int) -> tuple[Any, ...]:
        with jax.enable_x64(x64):
            return tuple(np.asarray(a) for a in program(keys[c], starts[c]))

    with ThreadPoolExecutor(threads, thread_name_prefix="immunetwin-chains") as pool:
        runs = list(pool.map(one, range(chains)))
    collected = {f: np.stack([r[i] for r in runs]) for i, f in enumerate(fields)}
    return collected.pop("z"), collected


def _chain_program(
    kernel: Any, warmup: int, draws: int, fields: Sequence[str]
) -> Callable[[Any, Any], tuple[Any, ...]]:
    """One chain as one function of its key and start: the kernel's initial state, ``warmup +
    draws`` transitions in one loop, and the ``fields`` of the last ``draws`` states (as NumPyro's
    ``MCMC`` runs and collects one chain: the same transitions from the same key)."""
    get = [operator.attrgetter(f) for f in fields]

    def run(key: Any, start: Any) -> tuple[Any, ...]:
        state = kernel.init(key, warmup, init_params=start, model_args=(), model_kwargs={})
        buffers = tuple(jnp.zeros((draws, *jnp.shape(g(state))), jnp.result_type(g(state))) for g in get)

        def step(i: Any, carry: tuple[Any, tuple[Any, ...]]) -> tuple[Any, tuple[Any, ...]]:
            state, out = carry
            state = kernel.sample(state, (), {})
            at = jnp.maximum(i - warmup, 0)  # warm-up states land in row 0, which the first draw overwrites
            rows = (
                lax.dynamic_update_index_in_dim(b, g(state), at, 0) for b, g in zip(out, get, strict=True)
            )
            return state, tuple(rows)

        return lax.fori_loop(0, warmup + draws, step, (state, buffers))[1]

    return run
