"""Run the chains of a NUTS kernel (NumPyro ``MCMC``) in one of three ways.

* ``"vectorized"``: all chains in lockstep as one batched program (``jax.vmap``). Right on one
  device, where a batched step costs little more than one chain's.
* ``"sequential"``: one chain after another, in one program.
* ``"parallel"``: one program per chain, the chains spread over the process's JAX devices (for
  example the CPU cores that :func:`immunetwin.runtime.use_all_cpu_cores` shows as devices), one
  thread per device running its chains one after another. NumPyro's own ``parallel`` method needs as
  many devices as chains; this one queues the rest. The threads run at once where the potential holds
  no Python lock: the XLA engine, and the native backend through its FFI calls
  (:mod:`immunetwin.engines.native_ffi`; through ``jax.pure_callback`` each solve took the GIL and the
  chains mostly waited for each other). ``viral_tiv`` on one patient, native, dense adapted metric,
  4 x 1,000 draws after 1,000 warm-up on the 2-core AMD EPYC: 29.0 s on two devices against 48.6 s
  vectorised on one (``benchmarks/README.md``). Each chain is the same single-chain program with
  the same key whatever the number of devices, so its draws do not depend on the device count (on one
  kind of device); they differ from the ``vectorized`` draws at rounding level and then beyond,
  because XLA:CPU rounds a batch's partial vector blocks differently (see
  :data:`immunetwin.engines.ode.LANES`). The progress bar is not shown. Only for a kernel of a
  ``potential_fn``: a NumPyro *model* is traced through effect handlers kept in one stack for the
  whole process, which two threads tracing at once corrupt (seen: "all sites must have unique names
  but got `mu` duplicated").

Chain ``c`` always gets the key ``jax.random.split(key, chains)[c]``, as NumPyro gives it in its
batched methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import jax
import numpy as np
from numpyro.infer import MCMC, NUTS

from immunetwin.errors import InputError

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
) -> tuple[Any, dict[str, Any]]:
    """Run ``chains`` chains of the kernel that ``make_kernel()`` builds (a fresh one per program:
    NumPyro kernels keep state) from ``init`` (a pytree whose leaves lead with the chain axis).

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

    keys = jax.random.split(key, chains)
    devices = jax.local_devices()
    x64 = bool(jax.config.jax_enable_x64)  # JAX's context settings are per thread: carry this one over

    def one(c: int) -> tuple[Any, dict[str, Any]]:
        mcmc = MCMC(make_kernel(), num_warmup=warmup, num_samples=draws, num_chains=1, progress_bar=False)
        mcmc.run(keys[c], init_params=_chain(init, c), extra_fields=tuple(extra_fields))
        samples = jax.tree.map(np.asarray, mcmc.get_samples(group_by_chain=True))
        return samples, {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}

    def on_device(d: int) -> list[tuple[int, tuple[Any, dict[str, Any]]]]:
        with jax.enable_x64(x64), jax.default_device(devices[d]):
            return [(c, one(c)) for c in range(d, chains, len(devices))]

    width = min(len(devices), chains)
    with ThreadPoolExecutor(width, thread_name_prefix="immunetwin-chains") as pool:
        done = dict(item for part in pool.map(on_device, range(width)) for item in part)
    runs = [done[c] for c in range(chains)]
    samples = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *(r[0] for r in runs))
    extra = {k: np.concatenate([r[1][k] for r in runs], axis=0) for k in runs[0][1]}
    return samples, extra
