"""A calibration problem compiled to jit-able, differentiable JAX functions of ``theta``.

:func:`compile_objective` turns a :class:`~immunetwin.inference.problem.Problem` into an
:class:`Objective`: ``log_likelihood(theta)``, ``log_prior(theta)`` and ``log_posterior(theta)``, all
pure JAX functions of the estimated parameters on their scales, batched over the problem's
experiments (one ``jax.vmap`` over conditions) and differentiable.

Gradients are *forward* sensitivities: the engine's adaptive loop is a ``lax.while_loop``, which JAX
differentiates in forward mode only, so ``jax.grad`` of these functions goes through a
``custom_vjp`` whose forward pass runs ``jax.jacfwd`` (one tangent per parameter, batched). For the
tens of parameters of an immune model this is the method of choice (as AMICI's forward sensitivities;
Fröhlich et al. 2017, PLoS Comput Biol 13:e1005331, for the trade-off with adjoints).

``compile_objective(..., backend="native")`` solves in the model's generated C instead and takes the
gradient from the model's forward sensitivity equations solved with it
(:mod:`immunetwin.engines.sensitivity`), the way AMICI does with CVODES; the functions stay JAX
functions of ``theta`` (:class:`Objective` hides which).

Pre-equilibration (PEtab ``preequilibrationConditionId``) integrates the pre-equilibration condition
to ``t = 1e9`` and accepts the end state as a steady state when every ``|dx/dt| <= atol + rtol |x|``
(tolerances of :class:`SteadyState`); otherwise the experiment fails and the likelihood is ``-inf``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp

from immunetwin.engines.codegen import compile_expressions, quantity_index
from immunetwin.engines.integrate import STATUS, Controls, solve_one
from immunetwin.engines.native_jax import NativeFunctions
from immunetwin.engines.ode import BACKENDS
from immunetwin.engines.solvers import AbstractMethod, Rodas5P
from immunetwin.engines.xla import jit
from immunetwin.errors import InputError, UnknownIdError
from immunetwin.inference.problem import Problem

__all__ = [
    "CALIBRATION_CONTROLS",
    "Objective",
    "SteadyState",
    "compile_objective",
    "forward_value_and_grad",
    "reverse_differentiable",
]

#: Solver tolerances for likelihoods (those of the PEtab benchmark references: AMICI at 1e-8).
CALIBRATION_CONTROLS = Controls(rtol=1e-8, atol=1e-10)

_LOG_2PI = math.log(2.0 * math.pi)
_LN10 = math.log(10.0)


@dataclass(frozen=True)
class SteadyState:
    """Acceptance of a pre-equilibrated state: ``|f(x)| <= atol + rtol * |x|`` at ``t_end``."""

    rtol: float = 1e-6
    atol: float = 1e-9
    t_end: float = 1e9


@dataclass(frozen=True, eq=False)
class Objective:
    """Compiled functions of ``theta`` (estimated parameters on their scales; see ``problem.free``).

    Attributes:
        problem: the problem compiled.
        log_likelihood: ``theta -> float`` (``-inf`` when a solve fails); jit-able, differentiable.
        log_prior: ``theta -> float``: PEtab priors of the estimated parameters, as densities of
            ``theta`` (change-of-variables term included for priors of the linear value).
        observables: ``theta -> (h, sigma, ok)``: simulated observable and noise sd per measurement row
            and per-experiment success.
        experiments: ``(preequilibration, condition)`` id pairs, the batch axis of the solves.
        status_codes: ``theta -> int[E]``, 0 where an experiment solved (see :func:`status_name`).
    """

    problem: Problem
    log_likelihood: Callable[[Any], Any]
    log_prior: Callable[[Any], Any]
    observables: Callable[[Any], tuple[Any, Any, Any]]
    experiments: tuple[tuple[str, str], ...]
    status_codes: Callable[[Any], Any]
    backend: str = "xla"
    sensitivities: Callable[..., tuple[Any, Any]] | None = None

    def diagnose(self, theta: Any) -> dict[tuple[str, str], str]:
        """Why each experiment's solve failed at ``theta`` (only the failed ones, by experiment)."""
        with jax.enable_x64(True):
            codes = np.asarray(jax.jit(self.status_codes)(jnp.asarray(theta)))
        return {e: status_name(int(c)) for e, c in zip(self.experiments, codes, strict=True) if c != 0}

    def log_posterior(self, theta: Any) -> Any:
        return self.log_likelihood(theta) + self.log_prior(theta)

    def value_and_grad(self, theta: Any, *, prior: bool = True) -> tuple[Any, Any]:
        """``(log posterior, gradient)`` (log likelihood with ``prior=False``) by forward sensitivities."""
        return self.value_and_grad_function(prior=prior)(theta)

    def value_and_grad_function(self, *, prior: bool = True) -> Callable[[Any], tuple[Any, Any]]:
        """``theta -> (log posterior, gradient)`` (log likelihood with ``prior=False``), jit- and
        vmap-able: ``jax.jacfwd`` through the XLA engine, or the native backend's sensitivity
        equations (see :func:`compile_objective`)."""
        if self.sensitivities is not None:
            sensitivities = self.sensitivities
            return lambda theta: sensitivities(theta, prior=prior)
        return forward_value_and_grad(self.log_posterior if prior else self.log_likelihood)

    def differentiable(self, *, prior: bool = True) -> Callable[[Any], Any]:
        """The log posterior (log likelihood with ``prior=False``) as a function ``jax.grad`` can
        differentiate (as NumPyro's NUTS does): a ``custom_vjp`` over :meth:`value_and_grad_function`."""
        return _reverse_from(
            self.value_and_grad_function(prior=prior), self.log_posterior if prior else self.log_likelihood
        )

    def jitted(self, what: str) -> Callable[[Any], Any]:
        """A jitted function of ``theta``, compiled once per objective and kept (so repeated fits,
        profiles and checks do not trace again): ``"log_likelihood"``, ``"log_posterior"``,
        ``"log_prior"``, ``"observables"``, ``"value_and_grad"`` (posterior),
        ``"value_and_grad_likelihood"``, ``"batch_terms"`` (``(B, dim) -> (log likelihood (B,),
        log prior (B,))``: many points in one batched solve, no derivative program to compile),
        ``"batch_value_and_grad"`` or ``"batch_value_and_grad_likelihood"`` (``(B, dim) -> ((B,),
        (B, dim))``).
        Call inside ``jax.enable_x64(True)``."""
        cache = self.__dict__.setdefault("_jitted", {})
        if what not in cache:
            fns = {
                "log_likelihood": self.log_likelihood,
                "log_posterior": self.log_posterior,
                "log_prior": self.log_prior,
                "observables": self.observables,
                "value_and_grad": self.value_and_grad_function(prior=True),
                "value_and_grad_likelihood": self.value_and_grad_function(prior=False),
                "batch_terms": jax.vmap(lambda th: (self.log_likelihood(th), self.log_prior(th))),
                "batch_value_and_grad": jax.vmap(self.value_and_grad_function(prior=True)),
                "batch_value_and_grad_likelihood": jax.vmap(self.value_and_grad_function(prior=False)),
            }
            if what not in fns:
                raise InputError(f"unknown objective function '{what}' (known: {', '.join(fns)})")
            cache[what] = jit(fns[what])
        return cache[what]

    @property
    def dim(self) -> int:
        return len(self.problem.free)


def forward_value_and_grad(f: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, Any]]:
    """``theta -> (f(theta), grad f(theta))`` by forward mode (``jax.jacfwd``, one tangent per entry)."""

    def both(x: Any) -> tuple[Any, Any]:
        v = f(x)
        return v, v

    def vg(theta: Any) -> tuple[Any, Any]:
        grad, value = jax.jacfwd(both, has_aux=True)(theta)
        return value, grad

    return vg


def reverse_differentiable(f: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``f`` with a ``custom_vjp`` whose backward pass uses forward sensitivities, so that
    ``jax.grad`` (as NumPyro's NUTS calls it) works through the engine's ``while_loop``."""
    return _reverse_from(forward_value_and_grad(f), f)


def _reverse_from(vg: Callable[[Any], tuple[Any, Any]], f: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``f`` with a ``custom_vjp`` whose forward pass is ``vg`` (value and gradient of ``f``)."""

    @jax.custom_vjp
    def g(theta: Any) -> Any:
        return f(theta)

    def fwd(theta: Any) -> tuple[Any, Any]:
        return vg(theta)

    def bwd(grad: Any, cotangent: Any) -> tuple[Any]:
        return (cotangent * grad,)

    g.defvjp(fwd, bwd)
    return g


NO_STEADY_STATE = 90
_PRE_OFFSET = 100


def status_name(code: int) -> str:
    """Plain name of an experiment status code (engine codes; 90: no steady state; 100+: pre-equilibration solve)."""
    if code == NO_STEADY_STATE:
        return "pre-equilibration did not reach a steady state"
    if code >= _PRE_OFFSET:
        return f"pre-equilibration solve failed: {STATUS.get(code - _PRE_OFFSET, code)}"
    return STATUS.get(code, f"status {code}")


# -- parameter routing ----------------------------------------------------------------------------


def _source_of(value: float | str, pindex: dict[str, int]) -> tuple[int, float]:
    if isinstance(value, str):
        return pindex[value], 0.0
    return -1, float(value)


def _declared_tables(problem: Problem, cond_ids: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per condition: (src (C,Q) int, const (C,Q), mask (C,Q)) for the model's declared vector."""
    model = problem.model
    qidx = quantity_index(model.spec)
    pindex = {p.id: j for j, p in enumerate(problem.parameters)}
    derived = set(model.spec.derived_ids) - set(model.state_ids)
    base = np.array([v for _, v in model.spec.declared], dtype=float)
    conds = {c.id: c.as_dict() for c in problem.conditions}
    species_like = set(model.state_ids)
    n_c, n_q = len(cond_ids), len(qidx)
    src = np.full((n_c, n_q), -1, dtype=np.int32)
    const = np.tile(base, (n_c, 1))
    mask = np.zeros((n_c, n_q), dtype=bool)
    for pid, j in pindex.items():
        if pid in qidx:
            if pid in derived:
                raise InputError(f"parameter table sets '{pid}', which the model computes (assignment rule)")
            src[:, qidx[pid]] = j
            mask[:, qidx[pid]] = True
    for ci, cid in enumerate(cond_ids):
        for target, value in conds[cid].items():
            if target in derived:
                raise InputError(f"condition '{cid}' sets '{target}', which the model computes")
            i = qidx[target]
            if not isinstance(value, str) and math.isnan(value):
                if target in species_like:
                    continue  # NaN for a state: keep its value
                raise InputError(f"condition '{cid}' sets '{target}' to NaN")
            src[ci, i], const[ci, i] = _source_of(value, pindex)
            mask[ci, i] = True
    return src, const, mask


def _reset_states(problem: Problem, cond_ids: list[str]) -> np.ndarray:
    """(C, n) states that a condition sets (re-initialised after pre-equilibration)."""
    spec = problem.model.spec
    conds = {c.id: c.as_dict() for c in problem.conditions}
    out = np.zeros((len(cond_ids), len(spec.states)), dtype=bool)
    for ci, cid in enumerate(cond_ids):
        for k, st in enumerate(spec.states):
            v = conds[cid].get(st.id)
            if v is not None and (isinstance(v, str) or not math.isnan(v)):
                out[ci, k] = True
    return out


def _placeholder_table(
    rows: tuple[tuple[float | str, ...], ...], pindex: dict[str, int], width: int
) -> tuple[np.ndarray, np.ndarray]:
    src = np.full((len(rows), max(width, 1)), -1, dtype=np.int32)
    const = np.zeros((len(rows), max(width, 1)))
    for r, vals in enumerate(rows):
        for k, v in enumerate(vals):
            src[r, k], const[r, k] = _source_of(v, pindex)
    return src, const


def _route(p_full: Any, src: np.ndarray, const: np.ndarray) -> Any:
    return jnp.where(src >= 0, p_full[jnp.maximum(src, 0)], const)


# -- observables ------------------------------------------------------------------------------------


def _observable_function(problem: Problem) -> tuple[Callable[..., Any], int, int]:
    """``f(t, v, p, op, np_) -> (h[n_obs], sigma[n_obs])`` and placeholder widths."""
    model_index = quantity_index(problem.model.spec)
    pindex = {p.id: j for j, p in enumerate(problem.parameters)}
    bindings: dict[str, str] = {"time": "t", "t": "t"}
    bindings |= {pid: f"p[{j}]" for pid, j in pindex.items()}
    bindings |= {qid: f"v[{i}]" for qid, i in model_index.items()}  # model values win
    width_o = width_n = 0
    formulas: dict[str, sp.Expr] = {}
    for o in problem.observables:
        for s in o.formula.free_symbols:
            if s.name.startswith("observableParameter") and s.name.endswith(f"_{o.id}"):
                k = int(s.name[len("observableParameter") : -len(o.id) - 1])
                bindings[s.name] = f"op[{k - 1}]"
                width_o = max(width_o, k)
        for s in o.noise.free_symbols:
            if s.name.startswith("noiseParameter") and s.name.endswith(f"_{o.id}"):
                k = int(s.name[len("noiseParameter") : -len(o.id) - 1])
                bindings[s.name] = f"np_[{k - 1}]"
                width_n = max(width_n, k)
        formulas[o.id] = o.formula
    exprs: list[sp.Basic] = [o.formula for o in problem.observables]
    for o in problem.observables:  # a noise formula may use observable ids
        noise = o.noise.xreplace({s: formulas[s.name] for s in o.noise.free_symbols if s.name in formulas})
        exprs.append(noise)
    try:
        fn, _ = compile_expressions("observables", ("t", "v", "p", "op", "np_"), bindings, tuple(exprs))
    except KeyError as err:
        raise UnknownIdError("symbol in an observable or noise formula", err.args[0], tuple(pindex)) from None
    n = len(problem.observables)

    def split(t: Any, v: Any, p: Any, op: Any, np_: Any) -> tuple[Any, Any]:
        out = fn(t, v, p, op, np_)
        return out[:n], out[n:]

    return split, width_o, width_n


# -- priors -----------------------------------------------------------------------------------------


def _log_prior_fn(problem: Problem) -> Callable[[Any], Any]:
    terms: list[tuple[int, str, str, float, float, float, float]] = []
    for i, p in enumerate(problem.free):
        lo, hi = problem.lower[i], problem.upper[i]
        if p.prior is None:
            terms.append((i, "parameterScaleUniform", p.scale, lo, hi, lo, hi))
        else:
            terms.append((i, p.prior.kind, p.scale, *p.prior.params, lo, hi))

    def log_prior(theta: Any) -> Any:
        total = jnp.zeros((), dtype=theta.dtype)
        for i, kind, scale, a, b, lo, hi in terms:
            th = theta[i]
            x = th if scale == "lin" else (jnp.exp(th) if scale == "log" else 10.0**th)
            # log |dx/dtheta| for densities of the linear value
            logjac = 0.0 if scale == "lin" else (th if scale == "log" else th * _LN10 + math.log(_LN10))
            inside = jnp.where((th >= lo) & (th <= hi), 0.0, -jnp.inf)
            if kind == "parameterScaleUniform":
                lp = -math.log(b - a) + jnp.where((th >= a) & (th <= b), 0.0, -jnp.inf)
            elif kind == "parameterScaleNormal":
                lp = -0.5 * _LOG_2PI - math.log(b) - 0.5 * ((th - a) / b) ** 2
            elif kind == "parameterScaleLaplace":
                lp = -math.log(2 * b) - jnp.abs(th - a) / b
            elif kind == "uniform":
                lp = -math.log(b - a) + jnp.where((x >= a) & (x <= b), 0.0, -jnp.inf) + logjac
            elif kind == "normal":
                lp = -0.5 * _LOG_2PI - math.log(b) - 0.5 * ((x - a) / b) ** 2 + logjac
            elif kind == "laplace":
                lp = -math.log(2 * b) - jnp.abs(x - a) / b + logjac
            elif kind == "logNormal":
                lx = jnp.log(x)
                lp = -0.5 * _LOG_2PI - math.log(b) - lx - 0.5 * ((lx - a) / b) ** 2 + logjac
            else:  # logLaplace
                lx = jnp.log(x)
                lp = -math.log(2 * b) - lx - jnp.abs(lx - a) / b + logjac
            total = total + lp + inside
        return total

    return log_prior


# -- noise models -----------------------------------------------------------------------------------


def to_observation_scale(x: Any, code: Any) -> Any:
    safe = jnp.where(code > 0, jnp.maximum(x, 1e-300), x)
    return jnp.where(code == 0, x, jnp.where(code == 1, jnp.log(safe), jnp.log10(safe)))


def row_log_density(y: Any, h: Any, sigma: Any, tcode: Any, laplace: Any, cens: Any) -> Any:
    """Log density of one measurement (see the module docstring of ``problem``)."""
    r = to_observation_scale(y, tcode) - to_observation_scale(h, tcode)
    normal = -0.5 * _LOG_2PI - jnp.log(sigma) - 0.5 * (r / sigma) ** 2
    lap = -jnp.log(2.0 * sigma) - jnp.abs(r) / sigma
    jac = jnp.where(tcode == 0, 0.0, jnp.where(tcode == 1, -jnp.log(y), -jnp.log(y * _LN10)))
    dens = jnp.where(laplace, lap, normal) + jac
    z = r / sigma  # censored: P(Y <= L) with L in y
    z = jnp.where(cens == 2, -z, z)
    log_cdf_normal = jax.scipy.stats.norm.logcdf(z)
    log_cdf_laplace = jnp.where(z < 0, math.log(0.5) + z, jnp.log1p(-0.5 * jnp.exp(-jnp.abs(z))))
    cdf = jnp.where(laplace, log_cdf_laplace, log_cdf_normal)
    return jnp.where(cens == 0, dens, cdf)


# -- compile ----------------------------------------------------------------------------------------


def compile_objective(
    problem: Problem,
    *,
    solver: AbstractMethod | None = None,
    controls: Controls = CALIBRATION_CONTROLS,
    steady_state: SteadyState = SteadyState(),
    backend: str = "xla",
) -> Objective:
    """Compile ``problem``'s likelihood and prior (see the module docstring).

    ``backend="xla"`` (default) solves with the JAX engine and differentiates it with ``jax.jacfwd``.
    ``backend="native"`` solves with the model's solver generated as C
    (:mod:`immunetwin.engines.native`, called from JAX as XLA FFI custom calls,
    :mod:`immunetwin.engines.native_ffi`, or by ``jax.pure_callback`` where those cannot be built) and takes gradients
    from the model's forward sensitivity equations, solved with the states by the same Rosenbrock
    method with the sensitivities in the error control (:mod:`immunetwin.engines.sensitivity`): one
    direction per estimated parameter, seeded with ``dy0/dtheta`` and ``dc/dtheta`` (automatic
    differentiation of the start values), then ``dL/dtheta = (dL/dy) S + dL/dtheta|_y`` by
    forward mode through the observables and noise model. Value-only calls solve without
    sensitivities. CPU only; no pre-equilibration, events or explicit methods (refused by name).

    Raises:
        InputError: measurement times that are not finite, or overrides of computed quantities, or
            an unknown backend, or what the native backend cannot do.
        UnknownIdError: an observable or noise formula uses an id nobody defines.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend '{backend}' ({', '.join(BACKENDS)})")
    m = problem.measurements
    if not np.all(np.isfinite(m.time)):
        row = int(m.source_rows[np.flatnonzero(~np.isfinite(m.time))[0]])
        raise InputError(f"measurement row {row}: non-finite time (steady-state data is not supported)")
    if np.any(m.time < 0):
        row = int(m.source_rows[np.flatnonzero(m.time < 0)[0]])
        raise InputError(f"measurement row {row}: negative time")
    method = solver or Rodas5P()
    fns = problem.model.functions
    spec = problem.model.spec
    pindex = {p.id: j for j, p in enumerate(problem.parameters)}

    experiments = sorted({(str(a), str(b)) for a, b in zip(m.preequilibration, m.condition, strict=True)})
    exp_index = {e: i for i, e in enumerate(experiments)}
    row_exp = np.array(
        [exp_index[(str(a), str(b))] for a, b in zip(m.preequilibration, m.condition, strict=True)]
    )
    # output times per experiment (t=0 first), padded by repeating the last time
    times = [np.unique(np.concatenate([[0.0], m.time[row_exp == e]])) for e in range(len(experiments))]
    width = max(len(t) for t in times)
    ts = np.stack([np.concatenate([t, np.full(width - len(t), t[-1])]) for t in times])
    row_k = np.array([int(np.searchsorted(times[e], t)) for e, t in zip(row_exp, m.time, strict=True)])

    cond_main = [b for _, b in experiments]
    cond_pre = [a or b for a, b in experiments]
    has_pre = np.array([bool(a) for a, _ in experiments])
    src_m, const_m, mask_m = _declared_tables(problem, cond_main)
    src_p, const_p, mask_p = _declared_tables(problem, cond_pre)
    reset = _reset_states(problem, cond_main)

    obs_fn, width_o, width_n = _observable_function(problem)
    op_src, op_const = _placeholder_table(m.observable_parameters, pindex, width_o)
    np_src, np_const = _placeholder_table(m.noise_parameters, pindex, width_n)
    obs_ids = [o.id for o in problem.observables]
    row_obs = np.array([obs_ids.index(str(o)) for o in m.observable], dtype=np.int32)
    tcode = np.array([("lin", "log", "log10").index(o.transformation) for o in problem.observables])
    lap = np.array([o.distribution == "laplace" for o in problem.observables])
    cens = np.array([("", "left", "right").index(str(c)) for c in m.censoring], dtype=np.int32)
    y = np.asarray(m.value, dtype=float)
    present = np.isfinite(y)  # missing values contribute nothing
    y_safe = np.where(present, y, 1.0)

    free_idx = np.array([pindex[p.id] for p in problem.free], dtype=np.int32)
    free_scale = np.array([("lin", "log", "log10").index(p.scale) for p in problem.free], dtype=np.int32)
    nominal = np.array(
        [p.nominal if math.isfinite(p.nominal) else 1.0 for p in problem.parameters], dtype=float
    )
    trig0 = np.array([e.initial_value for e in spec.events], dtype=bool)
    n_states, n_const = len(spec.states), len(spec.constants)
    no_stop = (
        np.full((1,), np.inf),
        np.zeros((1, n_states)),
        np.zeros((1, n_const), bool),
        np.zeros((1, n_const)),
    )
    ss_times = np.concatenate([[0.0], np.logspace(0, math.log10(steady_state.t_end), 10)])
    native_solve = None
    if backend == "native":
        if has_pre.any():
            raise InputError(
                f"backend='native' does not pre-equilibrate (problem '{problem.name}' has "
                "preequilibrationConditionId): use backend='xla'"
            )
        native_solve = NativeFunctions.build(spec, method, controls, len(problem.free))

    def p_full_of(theta: Any) -> Any:
        lin = jnp.where(free_scale == 0, theta, jnp.where(free_scale == 1, jnp.exp(theta), 10.0**theta))
        return jnp.asarray(nominal).at[free_idx].set(lin)

    def observables(theta: Any) -> tuple[Any, Any, Any]:
        p_full = p_full_of(jnp.asarray(theta))
        return _rows(*_batched(p_full), p_full)

    def _rows(values: Any, codes: Any, p_full: Any) -> tuple[Any, Any, Any]:
        ok = codes == 0
        v = values[row_exp, row_k]  # (R, Q)
        op = _route(p_full, op_src, op_const)
        nps = _route(p_full, np_src, np_const)
        h_all, s_all = jax.vmap(lambda t, vv, o, n_: obs_fn(t, vv, p_full, o, n_))(
            jnp.asarray(m.time), v, op, nps
        )
        rows = jnp.arange(len(y))
        return h_all[rows, row_obs], s_all[rows, row_obs], ok

    def _batched(p_full: Any) -> tuple[Any, Any]:
        if native_solve is not None:
            return native_solve.values(jnp.asarray(ts), *_starts(p_full))
        # experiments differ only in data (tables indexed by e), so vmap over e
        return jax.vmap(lambda e: _one_traced(p_full, e))(jnp.arange(len(experiments)))

    def _start_of(p_full: Any, e: Any) -> tuple[Any, Any]:
        """Start values and constants of experiment ``e``'s main condition."""
        d_m = _route(p_full, jnp.asarray(src_m)[e], jnp.asarray(const_m)[e])
        return fns.init(d_m, jnp.asarray(mask_m)[e], 0.0)

    def _starts(p_full: Any) -> tuple[Any, Any]:
        """Start values and constants of every experiment, (E, n) and (E, nc) (no pre-equilibration)."""
        return jax.vmap(lambda e: _start_of(p_full, e))(jnp.arange(len(experiments)))

    def _one_traced(p_full: Any, e: Any) -> tuple[Any, Any]:
        d_p = _route(p_full, jnp.asarray(src_p)[e], jnp.asarray(const_p)[e])
        y_main, c_main = _start_of(p_full, e)
        if has_pre.any():
            y_pre, c_pre = fns.init(d_p, jnp.asarray(mask_p)[e], 0.0)
            ys_ss, st_ss, _ = solve_one(
                fns,
                method,
                controls,
                y_pre,
                c_pre,
                jnp.asarray(trig0),
                jnp.asarray(ss_times),
                *map(jnp.asarray, no_stop),
            )
            y_end = ys_ss[-1]
            f = fns.rhs(ss_times[-1], y_end, c_pre)
            steady = jnp.all(jnp.abs(f) <= steady_state.atol + steady_state.rtol * jnp.abs(y_end))
            pre = jnp.asarray(has_pre)[e]
            y0 = jnp.where(pre & ~jnp.asarray(reset)[e], y_end, y_main)
            pre_code = jnp.where(
                ~pre, 0, jnp.where(st_ss != 0, _PRE_OFFSET + st_ss, jnp.where(steady, 0, NO_STEADY_STATE))
            )
        else:
            y0, pre_code = y_main, jnp.asarray(0)
        te = jnp.asarray(ts)[e]
        ys, status, _ = solve_one(
            fns, method, controls, y0, c_main, jnp.asarray(trig0), te, *map(jnp.asarray, no_stop)
        )
        values = jax.vmap(lambda t, yy: fns.observe(t, yy, c_main))(te, ys)
        return values, jnp.where(pre_code != 0, pre_code, status)

    def log_likelihood(theta: Any) -> Any:
        return _log_likelihood_of(*observables(theta))

    def _log_likelihood_of(h: Any, sigma: Any, ok: Any) -> Any:
        ll = row_log_density(
            jnp.asarray(y_safe),
            h,
            sigma,
            jnp.asarray(tcode)[row_obs],
            jnp.asarray(lap)[row_obs],
            jnp.asarray(cens),
        )
        total = jnp.sum(jnp.where(jnp.asarray(present), ll, 0.0))
        return jnp.where(jnp.all(ok), total, -jnp.inf)

    def status(theta: Any) -> Any:
        return _batched(p_full_of(jnp.asarray(theta)))[1]

    log_prior = _log_prior_fn(problem)

    def sensitivities(theta: Any, *, prior: bool = True) -> tuple[Any, Any]:
        """(log posterior or likelihood, gradient) from the native sensitivity solve."""
        assert native_solve is not None
        theta = jnp.asarray(theta)

        def starts(th: Any) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
            out = _starts(p_full_of(th))
            return out, out

        (dy0, dc), (y0, c) = jax.jacfwd(starts, has_aux=True)(theta)
        states, sens, codes = native_solve.sensitivities(jnp.asarray(ts), y0, c, dy0, dc)

        anchor = jax.lax.stop_gradient(theta)

        def total(th: Any) -> Any:
            # the states' first-order expansion in theta: its forward derivative at theta is the
            # chain rule (dL/dy) S + dL/dtheta|_y (forward mode, as the XLA path: reverse mode
            # through the noise model's jnp.where branches would meet 0 * inf)
            ys = states + jnp.einsum("etnp,p->etn", sens, th - anchor)
            p_full = p_full_of(th)
            _, c_th = _starts(p_full)
            values = jax.vmap(jax.vmap(fns.observe, (0, 0, None)))(jnp.asarray(ts), ys, c_th)
            value = _log_likelihood_of(*_rows(values, codes, p_full))
            return value + log_prior(th) if prior else value

        return forward_value_and_grad(total)(theta)

    return Objective(
        problem=problem,
        log_likelihood=log_likelihood,
        status_codes=status,
        log_prior=log_prior,
        observables=observables,
        experiments=tuple(experiments),
        backend=backend,
        sensitivities=sensitivities if native_solve is not None else None,
    )
