"""The adaptive integration loop for one patient (vmapped for cohorts).

One ``lax.while_loop`` takes adaptive steps of a method from :mod:`immunetwin.engines.solvers` and

* writes outputs by the method's dense output (outputs do not shorten steps), one output per loop
  iteration from the stored last step, in the same iteration as the next step attempt when no other
  output is pending: under ``vmap`` a nested loop or ``lax.cond`` over the output buffer becomes a
  select over the whole (T, n) buffer at every iteration, which dominated the cost;
* *stops exactly* at every schedule time (bolus doses, input switches): the step is clipped to land
  there, the discontinuity is applied, and the method restarts from the new state;
* locates event triggers (false -> true) inside a step by bisection on the dense output, retakes the
  step to end at the located time, and fires the event cascade there (SBML semantics, no delays);
* never returns a silent NaN: a failed solve stops with a status code (``STATUS``), and the outputs
  from the failure on are NaN *and* flagged by that status.

The same loop runs one patient (:func:`solve_one`; ``jax.vmap``/``jax.jvp`` over it work as usual) or a
block of patients laid out *batch-last* (:func:`solve_batch`: states ``(n, B)``, per-patient scalars
``(B,)``). Batch-last keeps every per-patient quantity a contiguous row, so the stage combinations are
plain matrix-vector products and nothing is transposed inside the loop; the loop also freezes finished
patients itself and writes outputs by a scatter, instead of the whole-carry select (output buffer
included) that ``vmap`` of a ``while_loop`` adds to every iteration. That halves the CPU cost of a
step of the 14-state ``viral_immune`` against ``vmap(solve_one)`` (see ``benchmarks/README.md``).
A block runs its patients through a fixed number of *lanes*: a lane whose patient has finished takes
the next waiting one, so a block costs about the sum of its patients' steps instead of its size times
its slowest patient's (the usual loss of lock-step batching when patients differ, as prior-drawn ones
do: mean 301, most 709 steps).

The step-size controller is the standard one (Hairer, Nørsett & Wanner 1993, *Solving ODEs I*,
section II.4): $h_{new} = h \\min(f_{max}, \\max(f_{min}, 0.9\\,\\mathrm{err}^{-1/q}))$ with the weighted
RMS norm $\\mathrm{err} = \\lVert e_i / (atol + rtol \\max(|y_i|, |\\hat y_i|)) \\rVert_{RMS}$.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from immunetwin.engines.solvers import ODE, AbstractMethod, dense_jacobian
from immunetwin.errors import InputError

__all__ = ["STATUS", "Controls", "solve_batch", "solve_one"]

#: Status codes of a solve, shared by every result.
STATUS = {
    0: "success",
    1: "max_steps_reached",
    2: "step_size_too_small",
    3: "non_finite_state",
}


@dataclass(frozen=True)
class Controls:
    """Tolerances and limits of the adaptive loop.

    Attributes:
        rtol: relative tolerance.
        atol: absolute tolerance.
        max_steps: most steps (accepted + rejected) before giving up with ``max_steps_reached``.
        event_bisections: bisection steps used to locate an event inside a step.
    """

    rtol: float = 1e-6
    atol: float = 1e-9
    max_steps: int = 100_000
    event_bisections: int = 40

    def __post_init__(self) -> None:
        if not (0.0 < self.rtol < 1.0) or not (self.atol > 0.0) or not math.isfinite(self.atol):
            raise InputError(
                f"tolerances must satisfy 0 < rtol < 1 and atol > 0, got rtol={self.rtol}, atol={self.atol}"
            )
        if self.max_steps < 1 or self.event_bisections < 1:
            raise InputError("max_steps and event_bisections must be positive")


class _Loop(NamedTuple):
    t: Any
    y: Any
    c: Any
    h: Any
    k: Any  # next stop index
    j: Any  # next output index
    ys: Any  # (T, n) outputs
    trig: Any  # (E,) trigger values last seen
    steps: Any
    status: Any
    retake: Any  # this step was shortened to end at a located event time
    # the last accepted step, kept for writing the outputs inside it (dense output)
    t_prev: Any
    h_prev: Any
    y_prev: Any
    y_end: Any  # state at the end of that step, before stops and events there
    dense: Any


def _norm(err: Any, y0: Any, y1: Any, ctl: Controls) -> Any:
    if err.shape[0] == 0:
        return jnp.zeros((), err.dtype)
    scale = ctl.atol + ctl.rtol * jnp.maximum(jnp.abs(y0), jnp.abs(y1))
    return jnp.sqrt(_mean_rows((err / scale) ** 2))


def _mean_rows(x: Any) -> Any:
    """Mean over the state axis (axis 0) as a sum of rows: on a batch-last block an element-wise
    fusion, which XLA:CPU runs faster than a ``reduce`` over the leading axis (measured: about 8 % of
    a ``viral_immune`` step)."""
    total = x[0]
    for i in range(1, x.shape[0]):
        total = total + x[i]
    return total / x.shape[0]


def _initial_step(rhs: Any, t0: Any, y0: Any, c: Any, span: Any, order: int, ctl: Controls) -> Any:
    """Hairer, Nørsett & Wanner 1993, section II.4, 'starting step size'."""
    if y0.shape[0] == 0:
        return span
    scale = ctl.atol + ctl.rtol * jnp.abs(y0)
    f0 = rhs(t0, y0, c)
    d0 = jnp.sqrt(_mean_rows((y0 / scale) ** 2))
    d1 = jnp.sqrt(_mean_rows((f0 / scale) ** 2))
    h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
    h0 = jnp.minimum(h0, span)
    f1 = rhs(t0 + h0, y0 + h0 * f0, c)
    d2 = jnp.sqrt(_mean_rows(((f1 - f0) / scale) ** 2)) / h0
    dm = jnp.maximum(d1, d2)
    h1 = jnp.where(dm <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3), (0.01 / dm) ** (1.0 / (order + 1)))
    h = jnp.minimum(100 * h0, h1)
    return jnp.where(jnp.isfinite(h) & (h > 0), jnp.minimum(h, span), 1e-6)


def _cascade(fns: Any, t: Any, y: Any, c: Any, trig: Any, n_events: int) -> tuple[Any, Any]:
    """Fire every event whose trigger turned true, repeatedly, until none does (bounded)."""
    if n_events == 0:
        return y, trig

    def body(_: Any, carry: tuple[Any, Any]) -> tuple[Any, Any]:
        y, prev = carry
        now = fns.triggers(t, y, c)
        fire = (~prev) & now
        return fns.apply_events(t, y, c, fire), now

    return jax.lax.fori_loop(0, n_events + 1, body, (y, trig))


def _locate(
    fns: Any,
    method: AbstractMethod,
    t: Any,
    y: Any,
    y1: Any,
    dense: Any,
    h: Any,
    c: Any,
    trig: Any,
    ctl: Controls,
) -> Any:
    """Smallest theta in (0, 1] at which some trigger is true that was false (bisection)."""

    def crossing(theta: Any) -> Any:
        yi = method.interpolate(y, y1, dense, theta, h)
        return jnp.any((~trig) & fns.triggers(t + theta * h, yi, c), axis=0)

    def body(_: Any, lohi: tuple[Any, Any]) -> tuple[Any, Any]:
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        hit = crossing(mid)
        return jnp.where(hit, lo, mid), jnp.where(hit, mid, hi)

    _, hi = jax.lax.fori_loop(0, ctl.event_bisections, body, (jnp.zeros_like(h), jnp.ones_like(h)))
    return hi


_FEW_STOPS = 8  # schedules up to this many entries are read by selects, longer ones by a gather


class _Layout(NamedTuple):
    """The model's functions over the loop's layout: per patient, or batch-last (``vmap`` on axis -1)."""

    rhs: Callable[..., Any]
    triggers: Callable[..., Any]
    apply_events: Callable[..., Any]
    ode: ODE
    pick: Callable[[Any, Any], Any]  # pick(a, i) = a[i] per patient (rows of a schedule table)
    # put(ys, rows, j, v): ys[rows, j] = v per lane (rows: the lanes' patients); j out of range: none
    put: Callable[[Any, Any, Any, Any], Any]
    outputs: Callable[[int, Any], Any]  # the output buffer, NaN: (T, n) or, batched, (B, T, n)


def _layout(fns: Any, n: int, batched: bool) -> _Layout:
    def pick(a: Any, i: Any) -> Any:
        return a[i]

    if not batched:
        return _Layout(
            fns.rhs,
            fns.triggers,
            fns.apply_events,
            ODE(fns.rhs, fns.jac, fns.jac_pattern),
            pick,
            lambda ys, rows, j, v: ys.at[j].set(v, mode="drop"),
            lambda t, y0: jnp.full((t, *y0.shape), jnp.nan, y0.dtype),
        )

    def last(f: Callable[..., Any]) -> Callable[..., Any]:
        return jax.vmap(f, in_axes=-1, out_axes=-1)

    def put(ys: Any, rows: Any, j: Any, v: Any) -> Any:
        # patient-major buffer: each write is one contiguous row, and the buffer is never transposed
        return ys.at[rows, j].set(v.T, mode="drop")

    def pick_rows(a: Any, i: Any) -> Any:
        # a few schedule rows (the usual case): selects, element-wise; XLA:CPU's gather costs ~10x more
        if a.shape[0] > _FEW_STOPS:
            return last(pick)(a, i)
        out = a[0]
        for r in range(1, a.shape[0]):
            out = jnp.where(i == r, a[r], out)
        return out

    jac, pattern = (fns.jac, fns.jac_pattern) if fns.jac is not None else dense_jacobian(fns.rhs, n)
    return _Layout(
        last(fns.rhs),
        last(fns.triggers),
        last(fns.apply_events),
        ODE(last(fns.rhs), last(jac), pattern),
        pick_rows,
        put,
        lambda t, y0: jnp.full((y0.shape[1], t, y0.shape[0]), jnp.nan, y0.dtype),
    )


def solve_one(
    fns: Any,
    method: AbstractMethod,
    ctl: Controls,
    y0: Any,
    c0: Any,
    trig0: Any,
    ts: Any,
    stop_times: Any,
    stop_dy: Any,
    stop_mask: Any,
    stop_c: Any,
) -> tuple[Any, Any, Any]:
    """Integrate one patient from ``ts[0]`` to ``ts[-1]``.

    Args:
        fns: generated model functions (``rhs``, ``triggers``, ``apply_events``).
        method: the one-step method.
        ctl: tolerances and limits.
        y0: stored states at ``ts[0]`` *before* doses and events at that time.
        c0: constants.
        trig0: event trigger values before the start (SBML ``initialValue``).
        ts: output times, increasing, ``ts[0]`` is the start.
        stop_times: (K,) schedule times in increasing order, padded with +inf.
        stop_dy: (K, n) amounts added to the states at each stop.
        stop_mask: (K, nc) which constants switch at each stop; ``stop_c`` (K, nc) their new values.

    Returns:
        (ys, status, steps): outputs (T, n), status code, number of steps taken.
    """
    layout, tab = _layout(fns, y0.shape[0], batched=False), (stop_times, stop_dy, stop_mask, stop_c)
    steps = _steps(layout, method, ctl, trig0, ts)
    init = steps.start(y0, c0, tab, layout.outputs(ts.shape[0], y0))
    out = jax.lax.while_loop(lambda s: jnp.any(steps.running(s)), lambda s: steps.body(s, tab, None), init)
    return out.ys, out.status, out.steps


def solve_batch(
    fns: Any,
    method: AbstractMethod,
    ctl: Controls,
    y0: Any,
    c0: Any,
    trig0: Any,
    ts: Any,
    stop_times: Any,
    stop_dy: Any,
    stop_mask: Any,
    stop_c: Any,
    lanes: int | None = None,
) -> tuple[Any, Any, Any]:
    """:func:`solve_one` for B patients in one loop, batch-last: ``y0`` (n, B), ``c0`` (nc, B),
    ``stop_times`` (K, B), ``stop_dy`` (K, n, B), ``stop_mask`` and ``stop_c`` (K, nc, B); ``trig0``
    and ``ts`` are shared. Returns outputs (B, T, n), status (B,) and steps (B,).

    The patients are stepped ``lanes`` at a time (default: all at once): a lane whose patient has
    finished takes the next waiting one, so a batch costs about the *sum* of its patients' steps
    rather than B times its slowest patient's (patients drawn from priors: mean 301, most 709
    steps). A patient's result does not depend on its lane, on when it started, or on B; it can
    depend on ``lanes`` in the last bits (XLA computes a small ``dot`` by its own loop and a large one
    by Eigen, which sum in different orders), so callers keep ``lanes`` fixed.
    """
    if lanes is not None and lanes < 1:
        raise InputError(f"lanes must be a positive number of patients, got {lanes}")
    tables = (stop_times, stop_dy, stop_mask, stop_c)
    lanes = y0.shape[1] if lanes is None else min(lanes, y0.shape[1])
    return _solve_lanes(
        _layout(fns, y0.shape[0], batched=True), method, ctl, lanes, y0, c0, trig0, ts, tables
    )


class _Steps(NamedTuple):
    """The loop's pieces for one layout: ``start`` (patients' initial loop state), ``body`` (one
    output write and one step attempt), ``running`` (which patients still need iterations) and
    ``blank`` (lanes holding no patient)."""

    start: Callable[..., _Loop]
    body: Callable[..., _Loop]
    running: Callable[[_Loop], Any]
    blank: Callable[..., _Loop]


def _steps(fns: _Layout, method: AbstractMethod, ctl: Controls, trig0: Any, ts: Any) -> _Steps:
    """The adaptive loop's pieces; the schedule tables ``tab`` = (stop_times (K, ...), stop_dy,
    stop_mask, stop_c) are arguments, so that a lane can take another patient's schedule."""
    ode, pick = fns.ode, fns.pick
    n_events = int(trig0.shape[0])
    n_out = ts.shape[0]
    t_end = ts[-1]

    def apply_stop(tab: Any, t: Any, y: Any, c: Any, k: Any, landed: Any) -> tuple[Any, Any, Any]:
        """Apply the schedule entry at time t, if the step landed on one (entries are one per time)."""
        stop_times, stop_dy, stop_mask, stop_c = tab
        n_stops = stop_times.shape[0]
        kk = jnp.minimum(k, n_stops - 1)
        hit = landed & (k < n_stops) & (pick(stop_times, kk) <= t)
        y = jnp.where(hit, y + pick(stop_dy, kk), y)
        c = jnp.where(hit & pick(stop_mask, kk), pick(stop_c, kk), c)
        return y, c, k + hit

    def start(y0: Any, c0: Any, tab: Any, ys: Any) -> _Loop:
        """The loop state of patients at ``ts[0]``."""
        batch = y0.shape[1:]
        t0 = jnp.broadcast_to(ts[0], batch)
        trig = jnp.broadcast_to(trig0.reshape(trig0.shape + (1,) * len(batch)), trig0.shape + batch)
        zero = jnp.zeros(batch, int)
        y, c, k = apply_stop(tab, t0, y0, c0, zero, jnp.ones(batch, bool))
        y, trig = _cascade(fns, t0, y, c, trig, n_events)
        span = jnp.maximum(t_end - t0, 1e-300)
        h = _initial_step(fns.rhs, t0, y, c, span, method.order, ctl).astype(t0.dtype)
        dense = _dense_shape(ode, method, ts, y0, c0)
        dense0 = jnp.zeros(dense.shape, dense.dtype)
        false = jnp.zeros(batch, bool)
        return _Loop(t0, y, c, h, k, zero, ys, trig, zero, zero, false, t0, jnp.ones_like(h), y, y, dense0)

    def blank(y0: Any, c0: Any, tab: Any, ys: Any) -> _Loop:
        """Lanes that hold no patient: shaped and typed like :func:`start`'s (a mismatch fails the
        loop's trace), finished (``j`` = T). Built without tracing ``start``, for compile time."""
        batch = y0.shape[1:]
        real = jnp.zeros(batch, ts.dtype)
        y = jnp.zeros(y0.shape, jnp.result_type(y0.dtype, tab[1].dtype))
        c = jnp.zeros(c0.shape, jnp.result_type(c0.dtype, tab[3].dtype))
        zero, false = jnp.zeros(batch, int), jnp.zeros(batch, bool)
        dense = _dense_shape(ode, method, ts, y0, c0)
        trig = jnp.zeros(trig0.shape + batch, bool)
        done = jnp.full(batch, n_out)
        dense0 = jnp.zeros(dense.shape, dense.dtype)
        return _Loop(real, y, c, real, zero, done, ys, trig, zero, zero, false, real, real, y, y, dense0)

    def running(s: _Loop) -> Any:
        return (s.j < n_out) & (s.status == 0)

    def body(s: _Loop, tab: Any, rows: Any) -> _Loop:
        # A patient that has finished is frozen here: it neither writes nor steps.
        batch = s.t.shape
        stop_times = tab[0]
        n_stops = stop_times.shape[0]
        active = running(s)
        # 1. one pending output (t_j <= t). Outputs inside the last step come from its dense output;
        #    an output at t itself is the state after stops and events.
        jj = jnp.minimum(s.j, n_out - 1)
        t_out = ts[jj]
        write = active & (t_out <= s.t)
        theta = jnp.clip((t_out - s.t_prev) / s.h_prev, 0.0, 1.0)
        inside = method.interpolate(s.y_prev, s.y_end, s.dense, theta, s.h_prev)
        value = jnp.where(t_out < s.t, inside, s.y)
        ys = fns.put(s.ys, rows, jnp.where(write, jj, n_out), value)
        j = s.j + write

        # 2. one step attempt towards the next stop (schedule time or the end), unless another output
        #    is still pending at t (it is written first: the step replaces the last step's dense output)
        stepping = active & (j < n_out) & (ts[jnp.minimum(j, n_out - 1)] > s.t)
        next_stop = jnp.where(s.k < n_stops, pick(stop_times, jnp.minimum(s.k, n_stops - 1)), jnp.inf)
        t_stop = jnp.minimum(next_stop, t_end)
        remaining = t_stop - s.t
        clipped = s.h >= remaining * (1.0 - 1e-12)
        h_try = jnp.where(clipped, remaining, s.h)
        h_try = jnp.where(stepping, h_try, jnp.maximum(h_try, 1e-300))  # not stepping: step nowhere
        y1, err, dense = method.step(ode, s.t, s.y, s.c, h_try)
        en = _norm(err, s.y, y1, ctl)
        finite = jnp.isfinite(en) & jnp.all(jnp.isfinite(y1), axis=0)
        ok = finite & (en <= 1.0)
        if n_events:
            trig_end = fns.triggers(s.t + h_try, y1, s.c)
            crosses = jnp.any((~s.trig) & trig_end, axis=0)
            ev_theta = _locate(fns, method, s.t, s.y, y1, dense, h_try, s.c, s.trig, ctl)
            # after one retake to the located time, the event fires at the end of the retaken step
            early = ok & crosses & (ev_theta < 1.0 - 1e-9) & ~s.retake & stepping
        else:
            ev_theta = jnp.ones_like(h_try)
            early = jnp.zeros(batch, bool)
        accept = stepping & ok & ~early
        t1 = jnp.where(clipped, t_stop, s.t + h_try)

        # the new point: schedule entry, then events
        y_new, c_new, k_new = apply_stop(tab, t1, y1, s.c, s.k, accept & clipped)
        if n_events:
            y_new, trig_new = _cascade(fns, t1, y_new, c_new, s.trig, n_events)
        else:
            trig_new = s.trig

        # step size for the next try
        safe_en = jnp.where(finite, en, jnp.inf)
        fac = jnp.clip(0.9 * safe_en ** (-1.0 / method.order), 0.2, 6.0)
        fac = jnp.where(ok, fac, jnp.minimum(fac, 0.9))
        h_next = h_try * fac
        h_next = jnp.where(accept & clipped, jnp.maximum(h_next, s.h), h_next)
        h_next = jnp.where(
            early, jnp.maximum(ev_theta * h_try, 1e-14 * jnp.maximum(1.0, jnp.abs(s.t))), h_next
        )
        h_next = jnp.where(finite, h_next, h_try * 0.25)
        h_next = jnp.where(stepping, h_next, s.h)

        tiny = stepping & (h_next < 1e-14 * jnp.maximum(1.0, jnp.abs(s.t)))
        status = jnp.where(tiny, jnp.where(finite, 2, 3), 0)
        steps = s.steps + stepping
        status = jnp.where((status == 0) & (steps >= ctl.max_steps), 1, status)
        return _Loop(
            t=jnp.where(accept, t1, s.t),
            y=jnp.where(accept, y_new, s.y),
            c=jnp.where(accept, c_new, s.c),
            h=h_next,
            k=jnp.where(accept, k_new, s.k),
            j=j,
            ys=ys,
            trig=jnp.where(accept, trig_new, s.trig),
            steps=steps,
            status=jnp.where(active, jnp.where(j >= n_out, 0, status), s.status),
            retake=jnp.where(stepping, early | (s.retake & ~accept), s.retake),
            t_prev=jnp.where(accept, s.t, s.t_prev),
            h_prev=jnp.where(accept, t1 - s.t, s.h_prev),
            y_prev=jnp.where(accept, s.y, s.y_prev),
            y_end=jnp.where(accept, y1, s.y_end),
            dense=jnp.where(accept, dense, s.dense),
        )

    return _Steps(start, body, running, blank)


def _dense_shape(ode: ODE, method: AbstractMethod, ts: Any, y0: Any, c0: Any) -> Any:
    """The shape and dtype of ``method``'s dense output for states like ``y0``."""
    return method.dense_shape(ode, jnp.broadcast_to(ts[0], y0.shape[1:]), y0, c0)


#: A batch's lanes take new patients every this many loop iterations (when some lane is free).
REFILL_EVERY = 16


class _Queue(NamedTuple):
    loop: _Loop  # lane states (..., L); loop.ys is the whole batch's (B, T, n) buffer
    pid: Any  # (L,) the patient in each lane; B for none
    next: Any  # () the next waiting patient
    tab: tuple[Any, ...]  # the lanes' schedule tables (K, ..., L)
    status: Any  # (B,) per patient, recorded when its lane is freed or at the end
    steps: Any  # (B,)


def _solve_lanes(
    fns: _Layout,
    method: AbstractMethod,
    ctl: Controls,
    lanes: int,
    y0: Any,
    c0: Any,
    trig0: Any,
    ts: Any,
    tables: tuple[Any, ...],
) -> tuple[Any, Any, Any]:
    """B batch-last patients through ``lanes`` lanes: a lane whose patient has finished takes the next
    waiting patient (at most every :data:`REFILL_EVERY` iterations). Every patient, the first ones
    included, is started by the same code inside the loop, so its result does not depend on its
    lane, on when it started, or on the batch size."""
    b = y0.shape[1]
    steps = _steps(fns, method, ctl, trig0, ts)
    lane_tab = tuple(x[..., :lanes] for x in tables)
    blank = steps.blank(y0[:, :lanes], c0[:, :lanes], lane_tab, fns.outputs(ts.shape[0], y0))
    none = jnp.full((lanes,), b)

    def record(q: _Queue) -> tuple[Any, Any]:
        rows = jnp.where((q.pid < b) & ~steps.running(q.loop), q.pid, b)
        return (
            q.status.at[rows].set(q.loop.status, mode="drop"),
            q.steps.at[rows].set(q.loop.steps, mode="drop"),
        )

    def refill(q: _Queue) -> _Queue:
        status, done = record(q)
        free = ~steps.running(q.loop)
        new = q.next + jnp.cumsum(free) - 1
        take = free & (new < b)
        g = jnp.minimum(new, b - 1)
        tab = tuple(x[..., g] for x in tables)
        fresh = steps.start(y0[:, g], c0[:, g], tab, q.loop.ys)
        loop = jax.tree.map(
            lambda a, o: jnp.where(take, a, o), fresh._replace(ys=None), q.loop._replace(ys=None)
        )
        tab = tuple(jnp.where(take, a, o) for a, o in zip(tab, q.tab, strict=True))
        pid = jnp.where(take, new, jnp.where(free, b, q.pid))
        nxt = jnp.minimum(q.next + jnp.sum(free), b)
        return _Queue(loop._replace(ys=q.loop.ys), pid, nxt, tab, status, done)

    def burst(q: _Queue) -> _Queue:
        def go(c: tuple[Any, _Queue]) -> Any:
            return (c[0] < REFILL_EVERY) & jnp.any(steps.running(c[1].loop))

        def one(c: tuple[Any, _Queue]) -> tuple[Any, _Queue]:
            i, q = c
            return i + 1, q._replace(loop=steps.body(q.loop, q.tab, q.pid))

        return jax.lax.while_loop(go, one, (0, q))[1]

    def outer(q: _Queue) -> _Queue:
        waiting = (q.next < b) & jnp.any(~steps.running(q.loop))
        return burst(jax.lax.cond(waiting, refill, lambda q: q, q))

    zeros = jnp.zeros((b,), int)
    q = _Queue(blank, none, jnp.zeros((), int), lane_tab, zeros, zeros)
    q = jax.lax.while_loop(lambda q: jnp.any(steps.running(q.loop)) | (q.next < b), outer, q)
    status, done = record(q)
    return q.loop.ys, status, done
