r"""Random-walk Metropolis with many chains in lockstep, adapted across chains during warm-up.

Each chain proposes ``x' = x + s\,L z`` with ``z ~ N(0, I)`` and accepts with probability
``min(1, p(x') / p(x))`` (Metropolis et al. 1953; Hastings 1970). The proposal's shape ``L L^T`` and
scale ``s`` are learnt in warm-up only, and then held fixed, so the kept draws are an ordinary
Metropolis chain with a fixed kernel:

* **scale**: ``log s`` follows the Robbins-Monro recursion ``log s <- log s + (i + 1)^{-0.6} (α - α*)``
  with ``α`` the chain's acceptance probability at iteration ``i`` of the window (Andrieu & Thoms 2008,
  Stat Comput 18:343, Algorithm 4), ``α*`` the target (default 0.234, the asymptotically optimal
  rate of Roberts, Gelman & Gilks 1997, Ann Appl Probab 7:110);
* **shape**: in Stan's warm-up windows (an initial window of 75 iterations, slow windows of 25, 50,
  100, ... iterations, a terminal window of 50; Stan Reference Manual, "HMC algorithm parameters"),
  at the end of each slow window ``L L^T`` becomes the covariance of the second half of that window's
  draws of **all** chains taken together, regularised as Stan regularises its metric,
  ``(n / (n + 5)) Σ + 10^{-3} (5 / (n + 5)) I`` (the covariance of the adaptive Metropolis algorithm,
  Haario, Saksman & Tamminen 2001, Bernoulli 7:223, learnt from parallel chains as in Craiu, Rosenthal
  & Yang 2009, JASA 104:1454); ``s`` restarts from ``2.38 / sqrt(d)``, the optimal scale for a
  Gaussian target whose covariance the proposal matches (Roberts et al. 1997);
* after the terminal window every chain takes the mean of the chains' ``log s``.

Only the adaptation sees more than one chain; after it the chains are independent Markov chains with
one shared, fixed kernel, so R-hat and ESS mean what they mean for any set of chains.

Why: a gradient-free step is one solve of the model, and the chains' solves go out as one batched
call, so many chains cost little more than one (on the native backend one call solves a chain per
SIMD lane). On a low-dimensional posterior many short chains then reach a converged posterior sooner
than a few NUTS chains, whose gradients cost several solves per leapfrog step and whose trees differ
in depth from chain to chain. On a posterior with strongly curved or badly scaled directions the
random walk needs very many steps (``Boehm_JProteomeRes2014``, 9 parameters, did not converge in
32 x 15,000 draws), and NUTS is the right sampler (``benchmarks/README.md``).

Chain ``c`` draws its random numbers from ``fold_in(split(key, chains)[c], i)`` at iteration ``i``,
so its draws depend on its key and start and on the pooled adaptation, not on how the chains are
grouped into batches or threads (up to rounding of the batched arithmetic).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from immunetwin.errors import InputError

__all__ = ["MetropolisDraws", "Window", "metropolis", "warmup_windows"]

#: Stan's default warm-up windows: initial (scale only), first slow window, terminal (scale only).
INITIAL_WINDOW, BASE_WINDOW, TERMINAL_WINDOW = 75, 25, 50

#: Exponent of the Robbins-Monro gain ``(i + 1)^{-0.6}`` (Andrieu & Thoms 2008 take 0.5-1).
_GAIN_DECAY = 0.6


@dataclass(frozen=True)
class Window:
    """A warm-up window: ``length`` iterations; with ``update_shape`` the pooled covariance of its
    second half becomes the proposal's shape at its end."""

    length: int
    update_shape: bool


@dataclass(frozen=True, eq=False)
class MetropolisDraws:
    """What :func:`metropolis` returns.

    Attributes:
        x: kept draws ``(chains, draws, dim)``.
        log_density: the log density at each kept draw ``(chains, draws)`` (``-inf`` where a chain
            has not yet found a point of finite density).
        aux: what ``log_density`` returned beside the density at each kept draw
            ``(chains, draws, *aux_shape)`` (zeros where the density is ``-inf``).
        accept_prob: the acceptance probability of each kept iteration's proposal ``(chains, draws)``.
        scale: the proposal's scale ``s`` after warm-up.
        shape: the proposal's covariance ``L L^T`` (before the scale) after warm-up ``(dim, dim)``.
    """

    x: np.ndarray
    log_density: np.ndarray
    aux: np.ndarray
    accept_prob: np.ndarray
    scale: float
    shape: np.ndarray


def warmup_windows(warmup: int) -> tuple[Window, ...]:
    """Stan's windowed adaptation of ``warmup`` iterations: an initial window, slow windows that
    double in length (the last one stretched to the terminal window), and a terminal window.

    As Stan does, a warm-up shorter than the three default windows together (150) is split 15 % /
    75 % / 10 %.
    """
    if warmup < 0:
        raise InputError(f"warmup must be >= 0, got {warmup}")
    first, base, last = INITIAL_WINDOW, BASE_WINDOW, TERMINAL_WINDOW
    if warmup < first + base + last:
        first, last = int(0.15 * warmup), int(0.1 * warmup)
        base = warmup - first - last
    out = [Window(first, False)] if first else []
    start, size, slow_end = first, base, warmup - last
    while start < slow_end:
        size = size if start + 3 * size <= slow_end else slow_end - start
        out.append(Window(size, True))
        start, size = start + size, 2 * size
    if last:
        out.append(Window(last, False))
    return tuple(out)


def _segment_program(
    log_density: Callable[[Any], tuple[Any, Any]],
    dim: int,
    aux_shape: tuple[int, ...],
    buffer: int,
    target: float,
) -> Callable[..., tuple[Any, ...]]:
    """One batch of chains run for ``n`` iterations (a dynamic count, so warm-up windows of any
    length and the draws share one compiled program and one copy of the model's solve)."""
    batch_density = jax.vmap(log_density)

    def segment(
        x: Any,
        lp: Any,
        aux: Any,
        log_s: Any,
        keys: Any,
        chol: Any,
        it0: Any,
        n: Any,
        adapt: Any,
        collect_from: Any,
    ) -> tuple[Any, ...]:
        chains = x.shape[0]

        def body(i: Any, carry: tuple[Any, ...]) -> tuple[Any, ...]:
            x, lp, aux, log_s, count, s1, s2, xs, lps, auxs, accs = carry
            ks = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, it0 + i)))(keys)
            z = jax.vmap(lambda k: jax.random.normal(k, (dim,), x.dtype))(ks[:, 0])
            proposal = x + jnp.exp(log_s)[:, None] * (z @ chol.T)
            lpp, auxp = batch_density(proposal)
            log_ratio = jnp.where(jnp.isfinite(lpp), lpp - lp, -jnp.inf)
            log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
            alpha = jnp.exp(jnp.minimum(log_ratio, 0.0))
            log_u = jnp.log(jax.vmap(lambda k: jax.random.uniform(k, (), x.dtype))(ks[:, 1]))
            accept = log_u < log_ratio
            x = jnp.where(accept[:, None], proposal, x)
            lp = jnp.where(accept, lpp, lp)
            aux = jnp.where(accept.reshape((-1,) + (1,) * len(aux_shape)), auxp, aux)
            gain = (i + 1.0) ** -_GAIN_DECAY
            log_s = jnp.where(adapt, log_s + gain * (alpha - target), log_s)
            w = (i >= collect_from).astype(x.dtype)
            count, s1 = count + w, s1 + w * x
            s2 = s2 + w * x[:, :, None] * x[:, None, :]
            at = jnp.minimum(i, buffer - 1)
            xs = lax.dynamic_update_index_in_dim(xs, x, at, 0)
            lps = lax.dynamic_update_index_in_dim(lps, lp, at, 0)
            auxs = lax.dynamic_update_index_in_dim(auxs, aux, at, 0)
            accs = lax.dynamic_update_index_in_dim(accs, alpha, at, 0)
            return x, lp, aux, log_s, count, s1, s2, xs, lps, auxs, accs

        dt = x.dtype
        init = (
            x, lp, aux, log_s, jnp.zeros((), dt), jnp.zeros((chains, dim), dt), jnp.zeros((chains, dim, dim), dt),
            jnp.zeros((buffer, chains, dim), dt), jnp.zeros((buffer, chains), dt),
            jnp.zeros((buffer, chains, *aux_shape), dt), jnp.zeros((buffer, chains), dt),
        )  # fmt: skip
        return lax.fori_loop(0, n, body, init)

    return segment


def _pooled_shape(count: float, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Covariance of all chains' draws taken together, regularised towards the identity as Stan does.

    Taken together, not within each chain and then averaged: a direction the chains have not yet
    explored gets a within-chain variance that is far too small (on a 10-dimensional Gaussian with sds
    from 0.01 to 10, after 2,000 warm-up iterations one eigenvalue of the whitened estimate was 0.02,
    and that direction's ESS 27 of 32,000 draws); across chains started apart it does not."""
    chains, dim = s1.shape
    n = count * chains
    mean = s1.sum(0) / n
    cov = (s2.sum(0) / n - np.outer(mean, mean)) * n / max(n - 1.0, 1.0)
    return (n / (n + 5.0)) * cov + 1e-3 * (5.0 / (n + 5.0)) * np.eye(dim)


def metropolis(
    log_density: Callable[[Any], tuple[Any, Any]],
    *,
    key: Any,
    init: np.ndarray,
    warmup: int,
    draws: int,
    initial_sd: np.ndarray,
    target_accept: float = 0.234,
    groups: int = 1,
    workers: int | None = None,
) -> MetropolisDraws:
    """Run ``init.shape[0]`` chains of adaptive random-walk Metropolis (see the module docstring).

    Args:
        log_density: ``x (dim,) -> (log p(x), aux)``: the log density up to a constant, ``-inf`` (or
            NaN) where ``x`` is not in the support, and an array computed with it that is kept at
            each draw (the pointwise log-likelihood, say); traced once and batched with ``jax.vmap``
            over a group's chains.
        key: ``jax.random.PRNGKey``; chain ``c`` uses ``jax.random.split(key, chains)[c]``.
        init: starting points ``(chains, dim)``. The first warm-up iteration accepts its proposal
            wherever the proposal's density is finite (the start's density is not evaluated: that
            would be a second copy of the model's solve in the compiled program).
        warmup, draws: warm-up iterations (adaptation; not kept) and kept draws per chain.
        initial_sd: the proposal's standard deviations ``(dim,)`` before the first slow window.
        target_accept: the acceptance rate the scale adapts to.
        groups: batches the chains are split into (equal sizes; the last one short of chains is
            padded with copies of its last chain, whose draws are dropped).
        workers: threads running the groups at once (default: one per group; one per core is right
            where the solves hold no Python lock, as the native backend's FFI calls and the XLA
            engine's do not).

    Returns:
        The kept draws and the adapted proposal (:class:`MetropolisDraws`).
    """
    init = np.asarray(init, dtype=float)
    if init.ndim != 2 or init.shape[0] < 1:
        raise InputError(f"init must have shape (chains, dim), got {init.shape}")
    chains, dim = init.shape
    if draws < 1:
        raise InputError(f"draws must be >= 1, got {draws}")
    if not 0.0 < target_accept < 1.0:
        raise InputError(f"target_accept must lie in (0, 1), got {target_accept}")
    initial_sd = np.asarray(initial_sd, dtype=float)
    if initial_sd.shape != (dim,) or not np.all(np.isfinite(initial_sd) & (initial_sd > 0)):
        raise InputError(f"initial_sd must be {dim} positive finite numbers, got {initial_sd}")
    windows = warmup_windows(warmup)
    if groups < 1 or (workers is not None and workers < 1):
        raise InputError(f"groups and workers must be >= 1, got {groups} and {workers}")
    size = math.ceil(chains / min(groups, chains))
    starts = range(0, chains, size)
    rows = [np.minimum(np.arange(a, a + size), chains - 1) for a in starts]  # padded with the last chain
    real = [min(size, chains - a) for a in starts]
    threads = min(len(rows), workers or len(rows))
    x64 = bool(jax.config.jax_enable_x64)
    chain_keys = jax.random.split(key, chains)
    if jax.dtypes.issubdtype(chain_keys.dtype, jax.dtypes.prng_key):  # a typed key (jax.random.key)
        chain_keys = jax.random.key_data(chain_keys)
    chain_keys = np.asarray(chain_keys)
    aux_shape = tuple(jax.eval_shape(log_density, jax.ShapeDtypeStruct((dim,), init.dtype))[1].shape)
    example = (
        init[rows[0]],
        np.zeros(size),
        np.zeros((size, *aux_shape)),
        np.zeros(size),
        chain_keys[rows[0]],
    )
    segment = jax.jit(_segment_program(log_density, dim, aux_shape, draws, target_accept))
    program = segment.lower(*example, np.eye(dim), 0, 0, True, 0).compile()
    x, lp, aux = init.copy(), np.full(chains, -np.inf), np.zeros((chains, *aux_shape))
    log_s = np.full(chains, math.log(2.38 / math.sqrt(dim)))
    chol = np.diag(initial_sd)

    def run(n: int, it0: int, adapt: bool, collect_from: int) -> list[tuple[np.ndarray, ...]]:
        def one(r: np.ndarray) -> tuple[np.ndarray, ...]:
            with jax.enable_x64(x64):
                out = program(x[r], lp[r], aux[r], log_s[r], chain_keys[r], chol, it0, n, adapt, collect_from)
                return tuple(np.asarray(a) for a in out)

        if threads == 1:
            return [one(r) for r in rows]
        with ThreadPoolExecutor(threads, thread_name_prefix="immunetwin-metropolis") as pool:
            return list(pool.map(one, rows))

    def gather(outs: list[tuple[np.ndarray, ...]], i: int, axis: int = 0) -> np.ndarray:
        """Field ``i`` of each group's output, the padding dropped, in chain order."""
        parts = [np.take(o[i], np.arange(n), axis=axis) for o, n in zip(outs, real, strict=True)]
        return np.concatenate(parts, axis=axis)

    it = 0
    for w in windows:
        outs = run(w.length, it, True, w.length // 2 if w.update_shape else w.length)
        it += w.length
        x, lp, aux, log_s = gather(outs, 0), gather(outs, 1), gather(outs, 2), gather(outs, 3)
        if w.update_shape:
            count = float(outs[0][4])
            chol = np.linalg.cholesky(_pooled_shape(count, gather(outs, 5), gather(outs, 6)))
            log_s = np.full(chains, math.log(2.38 / math.sqrt(dim)))
    log_s = np.full(chains, float(np.mean(log_s)))
    outs = run(draws, it, False, draws)
    return MetropolisDraws(
        x=np.swapaxes(gather(outs, 7, axis=1), 0, 1),
        log_density=gather(outs, 8, axis=1).T,
        aux=np.swapaxes(gather(outs, 9, axis=1), 0, 1),
        accept_prob=gather(outs, 10, axis=1).T,
        scale=float(math.exp(log_s[0])),
        shape=chol @ chol.T,
    )
