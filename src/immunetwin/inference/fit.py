"""Maximum a posteriori / maximum likelihood estimation: multi-start, gradient-based, bounded.

``fit_map`` maximises ``log p(y | theta) + log p(theta)`` (``prior=False``: the likelihood alone) over
``theta`` on the scales the problem declares, within its bounds, from ``starts`` points: the nominal
point first, then points drawn uniformly within the bounds (on the parameter scale) with an explicit
JAX random key. Each start runs a local optimiser, the ``optimizer`` strategy:

* ``"L-BFGS-B"`` (default): limited-memory BFGS with bounds (Byrd et al. 1995, SIAM J Sci Comput
  16:1190; scipy's implementation), a line search along a projected quasi-Newton direction.
* ``"fides"``: an interior trust-region reflective method (Coleman & Li 1996, SIAM J Optim 6:418)
  with a BFGS Hessian, as implemented by fides (Fröhlich & Sorger 2022, PLoS Comput Biol
  18:e1010322), which was written for calibrating ODE models. A step into a region where the
  model cannot be solved shrinks the trust region instead of ending the line search. On
  ``Crauste_CellSystems2017`` (12 parameters on log10 scales, the optimum on two bounds, a valley
  flat over decades of three parameters) L-BFGS-B's best of 1,000 random starts stopped at
  -191.22 (published optimum -190.964); fides's best of 300 starts at -190.979 and -190.964 for
  two seeds with the default tolerance, and at -190.9643 for both with ``tolerance=1e-12``
  (``benchmarks/README.md``, "Crauste's optimum"). Not better everywhere: on Boehm's problem
  L-BFGS-B's 20 starts found the published optimum and fides's did not.

Both run on the value and gradient of the compiled objective: forward sensitivities
(``gradient="forward"``), or central finite differences of ``2 dim`` points solved as one batch
(``gradient="finite-difference"``, the choice of pyPESTO with libroadrunner), which compiles no
derivative program: on a 14-state model the forward-sensitivity program takes minutes to compile on
2 cores, the batched value seconds. Multi-start
local optimisation is the method the PEtab benchmark study found most reliable for ODE models
(Raue et al. 2013, PLoS ONE 8:e74335; Villaverde et al. 2019, Bioinformatics 35:830).

The result says how many starts reached the best value (within ``0.1`` log-units): one lone start at
the optimum is a warning sign (a rugged landscape; run more starts).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import fides
import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize

from immunetwin.errors import InputError
from immunetwin.inference.likelihood import Objective

__all__ = ["OPTIMIZERS", "MapFit", "Optimizer", "StartResult", "fit_map", "hessian"]

Optimizer = Literal["L-BFGS-B", "fides"]
#: The local optimisers of :func:`fit_map` (see the module docstring).
OPTIMIZERS: tuple[str, ...] = ("L-BFGS-B", "fides")
#: fides's exit flags that are convergence (the others: iterations, time, trust region too small).
_FIDES_CONVERGED = frozenset({fides.ExitFlag.FTOL, fides.ExitFlag.XTOL, fides.ExitFlag.GTOL})

#: Relative step of the finite-difference gradient (on the parameter scale); with the calibration
#: tolerances (rtol 1e-8) the solver's noise in the gradient stays near 1e-3 of a log-unit per unit.
FD_STEP = 1e-4
#: Relative step of the finite-difference Hessian.
HESSIAN_STEP = 1e-3

#: Batches of a lockstep fit are padded to a multiple of this (the native backend's lanes).
_LOCKSTEP_WIDTH = 4

_FAILED = 1e30  # objective value used where the solve fails (keeps L-BFGS-B's line search finite)


@dataclass(frozen=True)
class StartResult:
    """One local optimisation: where it started and ended, and why it stopped."""

    start: np.ndarray
    theta: np.ndarray
    value: float  # maximised objective (log posterior, or log likelihood with prior=False)
    success: bool
    message: str
    evaluations: int


@dataclass(frozen=True)
class MapFit:
    """The best of several local optimisations.

    Attributes:
        free_ids: estimated parameter ids (order of ``theta``).
        theta: best point on the parameter scales.
        values: best point as linear values by id.
        objective: best maximised value; ``log_likelihood`` and ``log_prior`` at ``theta``.
        starts: every start, best first.
        at_best: number of starts that ended within ``0.1`` of the best value.
        seconds: wall time of the optimisation (compilation included on a first call).
    """

    free_ids: tuple[str, ...]
    theta: np.ndarray
    values: dict[str, float]
    objective: float
    log_likelihood: float
    log_prior: float
    with_prior: bool
    starts: tuple[StartResult, ...]
    at_best: int
    seconds: float

    @property
    def converged(self) -> bool:
        """The best start stopped on a convergence criterion and at least one other start agrees."""
        return bool(self.starts[0].success) and self.at_best >= min(2, len(self.starts))


def _start_points(objective: Objective, starts: int, key: Any, include_nominal: bool) -> np.ndarray:
    lo, hi = objective.problem.lower, objective.problem.upper
    n = objective.dim
    draws = np.asarray(
        jax.random.uniform(key, (starts, n), dtype=jnp.float64 if jax.config.x64_enabled else None)
    )
    points = lo + (hi - lo) * draws
    if include_nominal and starts > 0:
        nominal = objective.problem.nominal
        if np.all(np.isfinite(nominal)):
            points[0] = np.clip(nominal, lo, hi)
    return points


def fit_map(
    objective: Objective,
    *,
    key: Any,
    starts: int = 10,
    prior: bool = True,
    include_nominal: bool = True,
    max_iterations: int = 500,
    tolerance: float = 1e-9,
    gradient: Literal["forward", "finite-difference"] = "forward",
    lockstep: bool | None = None,
    optimizer: Optimizer = "L-BFGS-B",
) -> MapFit:
    """Maximise the log posterior (or log likelihood, ``prior=False``) from ``starts`` points.

    Args:
        objective: a compiled problem (:func:`~immunetwin.inference.compile_objective`).
        key: ``jax.random.PRNGKey`` for the start points.
        starts: number of local optimisations (the first at the nominal point when
            ``include_nominal``).
        prior: include the parameter priors (MAP) or not (maximum likelihood).
        max_iterations, tolerance: the most iterations of each start, and its relative tolerance on
            the objective (L-BFGS-B's ``ftol``; fides's ``frtol``, with ``fatol`` 0) and ten times
            it on the gradient (``gtol``; fides's ``gatol``).
        gradient: ``"forward"`` sensitivities or ``"finite-difference"`` (see the module docstring).
        lockstep: run the starts together, each in its own thread, the points they ask for solved
            as one batch (for the native backend, lanes of one native call: three starts cost about
            what one does). Each start's path is its own (a point's value does not depend on its
            companions, up to rounding), so the result is that of the starts one after another,
            up to rounding, which a long path can carry to another optimum (Boehm, 20 starts:
            -149.5 in lockstep, -138.2 one after another). Default: on for ``backend="native"``
            with forward gradients, off otherwise. With fides, whose iterations are Python,
            many starts ran faster one after another (Crauste, 300 starts: 66 s against 144 s).
        optimizer: the local optimiser of every start, ``"L-BFGS-B"`` or ``"fides"`` (see the
            module docstring).

    Returns:
        A :class:`MapFit`, best start first.
    """
    if starts < 1:
        raise InputError(f"starts must be at least 1, got {starts}")
    if objective.dim == 0:
        raise InputError(f"problem '{objective.problem.name}' estimates no parameters")
    if gradient not in ("forward", "finite-difference"):
        raise InputError(f"unknown gradient '{gradient}' (forward, finite-difference)")
    if optimizer not in OPTIMIZERS:
        raise InputError(f"unknown optimizer '{optimizer}' ({', '.join(OPTIMIZERS)})")
    t_start = time.perf_counter()
    lo, hi = objective.problem.lower, objective.problem.upper
    with jax.enable_x64(True):
        if gradient == "forward":
            value_and_grad = objective.jitted("value_and_grad" if prior else "value_and_grad_likelihood")
        else:
            value_and_grad = _finite_difference(objective, prior)
        points = _start_points(objective, starts, key, include_nominal)
        if lockstep is None:
            lockstep = objective.backend == "native" and gradient == "forward" and len(points) > 1
        local = _lbfgsb if optimizer == "L-BFGS-B" else _fides

        def run(x0: np.ndarray, evaluate: Any) -> StartResult:
            return local(x0, evaluate, lo, hi, max_iterations, tolerance)

        if lockstep:
            batch = objective.jitted("batch_value_and_grad" if prior else "batch_value_and_grad_likelihood")
            results = _run_lockstep(run, points, batch)
        else:

            def one(x: np.ndarray) -> tuple[float, np.ndarray]:
                v, g = value_and_grad(jnp.asarray(x))
                return float(v), np.asarray(g, dtype=float)

            results = [run(x0, one) for x0 in points]
        results.sort(key=lambda r: -r.value if math.isfinite(r.value) else math.inf)
        best = results[0]
        if not math.isfinite(best.value):
            raise InputError(
                f"every start of '{objective.problem.name}' failed to solve (all {starts} starts give -inf)"
            )
        # the objective at the optimum is known; only the prior (no ODE solve, no compile to speak of)
        # is evaluated to split it into likelihood and prior
        lp = float(objective.jitted("log_prior")(jnp.asarray(best.theta)))
        llh = best.value - lp if prior else best.value
    at_best = sum(1 for r in results if math.isfinite(r.value) and best.value - r.value <= 0.1)
    return MapFit(
        free_ids=objective.problem.free_ids,
        theta=best.theta,
        values=objective.problem.values(best.theta),
        objective=best.value,
        log_likelihood=llh,
        log_prior=lp,
        with_prior=prior,
        starts=tuple(results),
        at_best=at_best,
        seconds=time.perf_counter() - t_start,
    )


def _lbfgsb(
    x0: np.ndarray, evaluate: Any, lo: np.ndarray, hi: np.ndarray, max_iterations: int, tolerance: float
) -> StartResult:
    """One L-BFGS-B run maximising ``evaluate(x) -> (value, gradient)`` from ``x0``.

    A point whose solve fails is given a huge finite objective and a zero gradient. scipy's line
    search then backs off, but where the first trial step of a start fails, L-BFGS-B takes the
    failed search for convergence and stops at the start (with ``inf`` or any gradient alike): on
    ``Crauste_CellSystems2017``, 134 of the 700 solvable starts among 1,000 random ones ended where
    they began (the other 300 do not solve at all). fides (:func:`_fides`) shrinks its trust
    region instead."""

    def negative(x: np.ndarray) -> tuple[float, np.ndarray]:
        v, g = evaluate(x)
        if not (math.isfinite(v) and np.all(np.isfinite(g))):
            return _FAILED, np.zeros_like(x)
        return -v, -g

    options = {"maxiter": max_iterations, "ftol": tolerance, "gtol": tolerance * 10}
    bounds = list(zip(lo, hi, strict=True))
    res = minimize(negative, x0, jac=True, method="L-BFGS-B", bounds=bounds, options=options)
    value = -float(res.fun) if float(res.fun) < _FAILED else -math.inf
    # a start that never solved "converges" on its zero gradient: not a success
    success = bool(res.success) and math.isfinite(value)
    return StartResult(np.asarray(x0), np.asarray(res.x), value, success, str(res.message), int(res.nfev))


def _fides(
    x0: np.ndarray, evaluate: Any, lo: np.ndarray, hi: np.ndarray, max_iterations: int, tolerance: float
) -> StartResult:
    """One fides run (trust-region reflective, BFGS Hessian) maximising ``evaluate`` from ``x0``.

    A point whose solve fails has an infinite objective: fides rejects that step and shrinks its
    trust region. A start whose own solve fails ends at once with ``-inf``."""
    calls = 0

    def negative(x: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal calls
        calls += 1
        v, g = evaluate(x)
        if not (math.isfinite(v) and np.all(np.isfinite(g))):
            return math.inf, np.full_like(x, math.nan)
        return -v, -np.asarray(g, dtype=float)

    options = {
        fides.Options.MAXITER: max_iterations,
        fides.Options.FATOL: 0.0,
        fides.Options.FRTOL: tolerance,
        fides.Options.GATOL: tolerance * 10,
    }
    # fides logs to a handler of its own; the exit flag is in the result instead
    opt = fides.Optimizer(
        negative, ub=hi, lb=lo, verbose=logging.ERROR, options=options, hessian_update=fides.BFGS()
    )
    try:
        fval, x, _, _ = opt.minimize(np.asarray(x0, dtype=float))
    except RuntimeError as err:  # fides refuses a start whose own solve fails
        fval, x, message = opt.fval_min, opt.x_min, str(err)
        if not math.isfinite(fval):
            x = x0
    else:
        message = fides.ExitFlag(opt.exitflag).name
    value = -float(fval) if math.isfinite(fval) else -math.inf
    converged = fides.ExitFlag(opt.exitflag) in _FIDES_CONVERGED
    return StartResult(np.asarray(x0), np.asarray(x), value, converged, message, calls)


class _Rendezvous:
    """Points asked for by several threads, evaluated as one batch once every running thread has
    asked (so a batch's make-up does not depend on thread timing)."""

    def __init__(self, batch: Any, parties: int, width: int) -> None:
        self._batch, self._active, self._width = batch, parties, width
        self._cond = threading.Condition()
        self._pending: dict[int, np.ndarray] = {}
        self._results: dict[int, Any] = {}

    def evaluate(self, who: int, x: np.ndarray) -> tuple[float, np.ndarray]:
        with self._cond:
            self._pending[who] = np.asarray(x, dtype=float)
            self._flush()
            while who not in self._results:
                self._cond.wait()
            out = self._results.pop(who)
        if isinstance(out, BaseException):
            raise out
        return out

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            self._flush()

    def _flush(self) -> None:
        if not self._pending or len(self._pending) < self._active:
            return
        who = sorted(self._pending)
        xs = np.stack([self._pending[k] for k in who])
        self._pending.clear()
        pad = -len(who) % self._width  # a few fixed batch sizes: one program each
        xs = np.concatenate([xs, np.repeat(xs[-1:], pad, axis=0)])
        try:
            values, grads = (np.asarray(a, dtype=float) for a in self._batch(jnp.asarray(xs)))
            for i, k in enumerate(who):
                self._results[k] = (float(values[i]), grads[i])
        except BaseException as exc:  # every waiting start sees the failure
            for k in who:
                self._results[k] = exc
        self._cond.notify_all()


def _run_lockstep(run: Any, points: list[np.ndarray], batch: Any) -> list[StartResult]:
    """``run(x0, evaluate)`` for every start in its own thread, evaluations batched."""
    meet = _Rendezvous(batch, len(points), _LOCKSTEP_WIDTH)

    def start(who: int) -> StartResult:
        # thread-local, and the batch is traced and run in these threads (a leaving one included)
        with jax.enable_x64(True):
            try:
                return run(points[who], lambda x: meet.evaluate(who, x))
            finally:
                meet.leave()

    with ThreadPoolExecutor(max_workers=len(points)) as pool:
        return list(pool.map(start, range(len(points))))


def _finite_difference(objective: Objective, prior: bool) -> Any:
    """``x -> (f(x), central-difference gradient)`` from one batched solve of ``2 dim + 1`` points
    (one-sided where a bound is within a step)."""
    batch = objective.jitted("batch_terms")
    lo, hi = objective.problem.lower, objective.problem.upper

    def value_and_grad(x: Any) -> tuple[float, np.ndarray]:
        x = np.asarray(x, dtype=float)
        h = FD_STEP * np.maximum(1.0, np.abs(x))
        up, down = np.minimum(x + h, hi), np.maximum(x - h, lo)
        eye = np.eye(len(x))
        points = np.vstack([x, x + eye * (up - x), x - eye * (x - down)])
        ll, lp = (np.asarray(v) for v in batch(jnp.asarray(points)))
        f = ll + lp if prior else ll
        d = len(x)
        return float(f[0]), (f[1 : d + 1] - f[d + 1 :]) / (up - down)

    return value_and_grad


def hessian(objective: Objective, theta: Any, *, prior: bool = True) -> np.ndarray:
    """Hessian of the log posterior (``prior=False``: log likelihood) at ``theta`` by central second
    differences, all ``2 d^2 + 1`` points solved in one batch (no derivative program to compile):

    .. math::

        H_{jj} \\approx \\frac{f(x + h_j e_j) - 2 f(x) + f(x - h_j e_j)}{h_j^2},\\quad
        H_{jk} \\approx \\frac{f(x^{++}) - f(x^{+-}) - f(x^{-+}) + f(x^{--})}{4 h_j h_k}

    with ``h_j = HESSIAN_STEP * max(1, |x_j|)`` (Nocedal & Wright 2006, *Numerical Optimization*,
    eq. 8.21). Steps do not respect the bounds: the point must lie at least a step inside them, or the
    entry is NaN where a solve fails. Call inside ``jax.enable_x64(True)``.
    """
    x = np.asarray(theta, dtype=float)
    d = len(x)
    h = HESSIAN_STEP * np.maximum(1.0, np.abs(x))
    eye = np.eye(d) * h
    pairs = [(j, k) for j in range(d) for k in range(j + 1, d)]
    points = [x] + [x + eye[j] for j in range(d)] + [x - eye[j] for j in range(d)]
    for j, k in pairs:
        points += [x + eye[j] + eye[k], x + eye[j] - eye[k], x - eye[j] + eye[k], x - eye[j] - eye[k]]
    ll, lp = (np.asarray(v) for v in objective.jitted("batch_terms")(jnp.asarray(np.array(points))))
    f = ll + lp if prior else ll
    out = np.empty((d, d))
    for j in range(d):
        out[j, j] = (f[1 + j] - 2 * f[0] + f[1 + d + j]) / h[j] ** 2
    for n, (j, k) in enumerate(pairs):
        pp, pm, mp, mm = f[1 + 2 * d + 4 * n : 1 + 2 * d + 4 * n + 4]
        out[j, k] = out[k, j] = (pp - pm - mp + mm) / (4 * h[j] * h[k])
    return out
