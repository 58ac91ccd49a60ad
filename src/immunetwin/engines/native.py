"""The native cohort backend: a model's solver as generated C, built with the machine's compiler.

The XLA engine (:mod:`immunetwin.engines.integrate`) steps a block of patients in lock-step, one
element-wise fusion at a time: every stage of every step reads and writes the whole block's arrays,
about 1.7 us per patient-step on a core of the 2-core AMD EPYC for the 14-state ``viral_immune``
(``benchmarks/README.md``). This module writes one model's solver as C instead:

* the model's functions (start values, right-hand side, exact Jacobian, every quantity for the
  outputs) printed from the same sympy expressions and local names as the JAX functions
  (:mod:`immunetwin.engines.codegen`) by sympy's C99 printer;
* the LU factorisation of the Rosenbrock matrix $W = I/(h\\gamma) - J$ over the Jacobian's symbolic
  sparsity pattern, unrolled, with the pivot order (Markowitz's rule,
  :func:`immunetwin.engines.solvers.elimination_order`) and fill-in of
  :func:`immunetwin.engines.solvers.sparse_lu`, and the 8 stages unrolled with the tableau's
  coefficients as literals. For ``viral_immune`` the factors hold 48 entries (75 in the natural
  order), its sensitivity system with one direction 148 (238): -15 % wall per trial chunk and -20 %
  per ``value_and_grad`` on the 2-core AMD EPYC (``benchmarks/README.md``);
* the adaptive loop of :mod:`immunetwin.engines.integrate`: the same starting step, weighted RMS error
  norm, step-size controller (Hairer, Nørsett & Wanner 1993, section II.4), exact stops at schedule
  times, dense output for the outputs and status codes (:data:`~immunetwin.engines.integrate.STATUS`).
  On the test cohorts of every shipped template it takes the same steps as the XLA engine and the
  outputs agree to 1e-7 (``tests/engines/test_native.py``); where rounding tips an accept/reject
  decision the step counts differ a little (4 of 60 prior-drawn ``viral_tiv`` simulations, by 2 to 4
  steps) and answers agree within the tolerances.

A thread steps :func:`lanes` patients at once (8 with AVX-512, else 4; a cohort too small to fill
them, and a fit, 4: :func:`lanes_for`), each one element of a GCC vector (``vector_size``): scalar
C was latency-bound (the unrolled LU solve is one long dependency chain per patient: 1.9 us per
step), four independent chains overlap (0.83 us) and, with AVX2, one instruction carries all four
(0.37 us); with AVX-512, eight lanes in one register ran 25 % faster again per core. A step forms
the dense-output rows only when an output time of some lane falls inside it (29 daily outputs
against ~345 steps), and the factorisation takes one reciprocal per pivot instead of a division per
entry below it: together 11.5 % less CPU per ``viral_immune`` patient
(``benchmarks/README.md``). A costly value of the constants alone (a division by a volume, a
constant's exponential) is computed once per change of a lane's constants, at its patient's start
and at a stop, not in each of a step's 8 right-hand sides (:func:`hoist_invariants`):
``viral_immune``'s right-hand side keeps 5 of its 12 divisions, its Jacobian 12 of 28. Where every
output column is a state (a trial's endpoints read states only), a step forms the dense-output rows of those states alone and an output copies them, without
the constants or the other quantities. Control (outputs, step size, stops) is scalar per lane, and a
lane whose patient finishes takes the next one at once, so patients never wait for a slower
companion. Consecutive rows that are one patient until their schedules part (a trial's arms until the
first treatment, :func:`shared_prefixes`) are solved once up to there and go on from the saved lane,
with the same steps and bits as each solved alone. Together these took a two-arm ``viral_immune``
trial chunk from 0.48-0.50 s to 0.32-0.33 s on one core (``benchmarks/README.md``).

The module is built once per model with cffi (API mode: a CPython extension, compiled by the C
compiler Python was built with) and kept in ``<cache>/immunetwin-native`` under a key that hashes
the generated source, the compiler flags and the Python and cffi versions. A chunk of patients is
split over this process's cores (``os.sched_getaffinity``: a pinned Dask worker uses only its own) in
threads, the extension releasing the GIL. A patient's result depends only on its own inputs: not on
the chunk, the thread count, its lane or its companions, nor on the instruction set the module was
built for (element-wise IEEE arithmetic, no ``-ffast-math``, no contraction by the compiler).

The step's linear algebra (the stage combinations, the LU factorisation and solves) adds each product
with one rounding, by an explicit fused multiply-add (IEEE 754 ``fusedMultiplyAdd``, C99 ``fma``):
one vector instruction with AVX-512 or FMA3 (an intrinsic, always inlined: GCC neither vectorised
nor inlined a lane loop over ``fma`` in a sensitivity system's long functions, which made a fit's
solve 8x slower), libm's exact ``fma`` lane by lane elsewhere, the same bits either way
(``tests/engines/test_native.py``). With the hoisted constants above it took a ``viral_immune``
cohort from 12,173 to 14,427 patients per second on one core of the 2-core Intel Xeon with AVX-512
(+18.5 %, the same steps), and a 4-row solve of its 4-direction sensitivity system from 3.50 to
2.92 ms (``benchmarks/README.md``). A machine without an FMA instruction pays a libm call per lane
instead (x86-64 before AVX2 only).

Gradients: the model's forward sensitivity equations, written as a bigger model by
:mod:`immunetwin.engines.sensitivity` and built like any other (:func:`build_sensitivities`,
:func:`solve_sensitivities`); calibration objectives call both from JAX
(:mod:`immunetwin.engines.native_jax`). Start values can be given directly (``start=``) and output
times per patient.

What it does not do, and refuses by name: models with events, models whose exact Jacobian sympy cannot
write (``floor``, ``max``...) and explicit methods (``Dopri5``). CPU only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import re
import shutil
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import sympy as sp
from sympy.printing.c import C99CodePrinter

from immunetwin.engines.codegen import JacobianTerms, _Names, jacobian_terms
from immunetwin.engines.integrate import Controls
from immunetwin.engines.sensitivity import SensitivitySpec, sensitivity_spec
from immunetwin.engines.solvers import AbstractMethod, _Rosenbrock, _rosenbrock_arrays, elimination_order
from immunetwin.errors import InputError, SolverError
from immunetwin.runtime import available_cores
from immunetwin.spec.model import ModelSpec

__all__ = [
    "NativeSolver",
    "build",
    "build_sensitivities",
    "c_source",
    "check_supported",
    "hoist_invariants",
    "run_native",
    "shared_prefixes",
    "solve_sensitivities",
    "solve_values",
]

#: Flags the generated C is compiled with. No ``-ffast-math`` (NaN checks and IEEE rounding are part
#: of the solver's semantics) and no ``-march=native`` (a cached module must run on any machine of the
#: same architecture); ``-ffp-contract=off`` keeps a*b+c two roundings wherever the compiler could fuse,
#: so a fused multiply-add happens only where the generated source writes one (``v_fma``): the bits
#: then do not depend on whether the target has an FMA instruction.
CFLAGS: tuple[str, ...] = ("-O2", "-fno-math-errno", "-ffp-contract=off", "-w")


@lru_cache(maxsize=1)
def _target() -> tuple[int, tuple[str, ...]]:
    """(lanes, compiler flags) for this machine's vector unit, the widest it has of:

    * x86-64 with AVX-512 (F and DQ): 8 lanes, ``-mavx512f -mavx512dq`` (a vector is one 512-bit
      register): a ``viral_immune`` cohort 25 % faster on one core (21 % on two) than 4 lanes with
      AVX2, on a 2-core Intel Xeon with AVX-512, with the same bits (``benchmarks/README.md``); and
      ``-mfma`` where the CPU lists FMA3 (as every AVX-512 one does), for a fit's 4-lane solvers,
      whose 256-bit ``v_fma`` AVX-512F alone does not provide;
    * x86-64 with AVX2: 4 lanes, ``-mavx2`` (a 4-lane vector is one register: the step ran 2.1x
      faster on the 2-core AMD EPYC), and ``-mfma`` where the CPU has FMA3 (``v_fma`` is then one
      instruction, not a libm call). 8 lanes in two AVX2 registers each ran 1.6x slower (the
      stages' vectors no longer fit the 16 registers);
    * anything else: 4 lanes, the compiler's default target.

    Lanes are independent and only element-wise IEEE operations change width, so results do not
    depend on either (``tests/engines/test_native.py``); both are part of the module's key."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return 4, ()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 4, ()
    found = re.search(r"^flags\s*:(.*)$", info, re.M)
    flags = set(found.group(1).split()) if found else set()
    if {"avx512f", "avx512dq"} <= flags:
        # -Wno-psabi: GCC notes once that 64-byte vector arguments changed ABI in GCC 4.6 (static
        # functions only here: nothing crosses a library boundary)
        return 8, ("-mavx512f", "-mavx512dq", *(("-mfma",) if "fma" in flags else ()), "-Wno-psabi")
    if "avx2" not in flags:
        return 4, ()
    return 4, ("-mavx2", "-mfma") if "fma" in flags else ("-mavx2",)


def _target_flags() -> tuple[str, ...]:
    return _target()[1]


def lanes() -> int:
    """Patients one thread steps at once on this machine (:func:`_target`): one per element of a
    GCC vector (``vector_size``), the stages of a step run on all of them at once, so their
    independent dependency chains (the LU solve is one long chain per patient) overlap and one SIMD
    instruction carries them."""
    return _target()[0]


def lanes_for(rows: int, threads: int | None = None) -> int:
    """The lanes to solve ``rows`` patients with over ``threads`` threads (default: this process's
    cores, as :func:`run_native`): :func:`lanes` when every thread gets at least a full vector of
    patients, else at most 4. A wide vector's idle lanes are not free: on the 2-core Intel Xeon with
    AVX-512, one ``viral_immune`` patient took 0.42 ms with 4 lanes and 0.61 ms with 8, and 8 patients
    on one thread 0.94 and 0.74 ms (``benchmarks/README.md``). The results are the same bits either
    way."""
    wide = lanes()
    workers = max(1, threads or available_cores())
    return wide if rows >= wide * workers else min(wide, 4)


_SIGNATURE = """
void itn_solve(int64_t b, int64_t t_count, int64_t ts_stride, int64_t k_count, const double *ts,
               const double *d, const uint8_t *m, const double *y0, const double *c0,
               const double *st, const double *sdy, const uint8_t *smask,
               const double *sval, int64_t ncol, const int64_t *cols, double rtol, double atol,
               int64_t max_steps, double *out, int64_t *status, int64_t *steps);
void itn_solve_from(int64_t b, int64_t t_count, int64_t ts_stride, int64_t k_count, const double *ts,
                    const double *d, const uint8_t *m, const double *y0, const double *c0,
                    const double *st, const double *sdy, const uint8_t *smask,
                    const double *sval, int64_t ncol, const int64_t *cols, double rtol, double atol,
                    int64_t max_steps, double *out, int64_t *status, int64_t *steps,
                    const double *pause, const double *resume_from, double *save_to);
void itn_root_inverse(int64_t n, const double *x, double *out);
int64_t itn_lanes(void);
"""


class _CPrinter(C99CodePrinter):
    """C99 printer with the SBML semantics of the JAX printer: a Piecewise without an 'otherwise'
    is NaN there, ``rem`` takes the dividend's sign (``fmod``). The vector printer below changes only
    the hooks: ``_arg`` (an operand), ``_select`` (a conditional), the prefix of its own functions and
    the spelling of true, false and NaN."""

    PREFIX, TRUE, FALSE, NAN = "", "1", "0", "NAN"

    def _arg(self, expr: sp.Basic) -> str:
        return self._print(expr)

    def _select(self, cond: str, a: str, b: str) -> str:
        return f"(({cond}) ? ({a}) : ({b}))"

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        out = self.NAN
        for value, cond in reversed(expr.args):
            v = self._arg(value)
            out = v if cond == sp.true else self._select(self._print(cond), v, out)
        return out

    def _print_Mod(self, expr: sp.Expr) -> str:
        a, b = (self._arg(x) for x in expr.args)
        return f"{self.PREFIX}fmod({a}, {b})"

    def _print_BooleanTrue(self, expr: sp.Basic) -> str:
        return self.TRUE

    def _print_BooleanFalse(self, expr: sp.Basic) -> str:
        return self.FALSE

    def _print_Infinity(self, expr: sp.Basic) -> str:
        return "INFINITY"

    def _print_NegativeInfinity(self, expr: sp.Basic) -> str:
        return "(-INFINITY)"

    def _print_NaN(self, expr: sp.Basic) -> str:
        return "NAN"


_VECTOR_FUNCTIONS = {
    "exp": "exp",
    "log": "log",
    "sin": "sin",
    "cos": "cos",
    "tan": "tan",
    "asin": "asin",
    "acos": "acos",
    "atan": "atan",
    "sinh": "sinh",
    "cosh": "cosh",
    "tanh": "tanh",
    "asinh": "asinh",
    "acosh": "acosh",
    "atanh": "atanh",
    "floor": "floor",
    "ceiling": "ceil",
    "Abs": "fabs",
    "gamma": "tgamma",
    "atan2": "atan2",
    "erf": "erf",
    "erfc": "erfc",
}


class _VectorPrinter(_CPrinter):
    """Expressions over ``vd`` (a GCC vector of :func:`lanes` doubles): arithmetic is element-wise
    as written (a number operand is broadcast), functions map element by element (``v_exp``),
    conditions are lane masks (``&``, ``|``, ``~``), Piecewise is ``v_where``."""

    PREFIX, TRUE, FALSE, NAN = "v_", "VTRUE", "VFALSE", "vsplat(NAN)"

    def _arg(self, expr: sp.Basic) -> str:
        text = self._print(expr)
        return f"vsplat({text})" if expr.is_number else text

    def _select(self, cond: str, a: str, b: str) -> str:
        return f"v_where({cond}, {a}, {b})"

    def _print_Function(self, expr: sp.Basic) -> str:
        name = _VECTOR_FUNCTIONS.get(type(expr).__name__)
        if name is None:
            raise NotImplementedError(f"function {type(expr).__name__}")
        return f"v_{name}({', '.join(self._arg(a) for a in expr.args)})"

    def _print_Pow(self, expr: sp.Pow) -> str:
        base, e = expr.args
        b = self._arg(base)
        if e.is_Integer and 1 <= abs(int(e)) <= 4:
            prod = " * ".join([f"({b})"] * abs(int(e)))
            return f"({prod})" if int(e) > 0 else f"(1.0 / ({prod}))"
        if e == sp.Rational(1, 2):
            return f"v_sqrt({b})"
        return f"v_pow({b}, {self._arg(e)})"

    def _fold(self, fn: str, args: tuple[sp.Basic, ...]) -> str:
        out = self._arg(args[0])
        for a in args[1:]:
            out = f"{fn}({out}, {self._arg(a)})"
        return out

    def _print_Max(self, expr: sp.Basic) -> str:
        return self._fold("v_fmax", expr.args)

    def _print_Min(self, expr: sp.Basic) -> str:
        return self._fold("v_fmin", expr.args)

    def _print_Relational(self, expr: sp.Basic) -> str:
        return f"((vl)({self._arg(expr.lhs)} {expr.rel_op} {self._arg(expr.rhs)}))"

    def _print_And(self, expr: sp.Basic) -> str:
        return "(" + " & ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr: sp.Basic) -> str:
        return "(" + " | ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr: sp.Basic) -> str:
        return f"(~{self._print(expr.args[0])})"

    def _print_Xor(self, expr: sp.Basic) -> str:
        return "(" + " ^ ".join(self._print(a) for a in expr.args) + ")"


for _name in (
    *_VECTOR_FUNCTIONS,
    "Sqrt",
    "exp2",
    "expm1",
    "log10",
    "log2",
    "log1p",
    "Cbrt",
    "hypot",
    "fma",
    "loggamma",
):
    # C99CodePrinter prints these by its own _print_<name> methods: route them through ours
    setattr(_VectorPrinter, f"_print_{_name}", _VectorPrinter._print_Function)


def check_supported(spec: ModelSpec, method: AbstractMethod) -> None:
    """Raise :class:`InputError` naming what the native backend cannot run."""
    if spec.events:
        raise InputError(
            f"backend='native' does not handle SBML events; model '{spec.id}' has {len(spec.events)}:"
            " use backend='xla'"
        )
    if not isinstance(method, _Rosenbrock):
        raise InputError(
            f"backend='native' runs the Rosenbrock methods (Rodas5P, Rodas5), not {method.name}: "
            "use backend='xla' for it"
        )


def _prelude(spec: ModelSpec, names: _Names, ctype: str) -> list[str]:
    """C statements binding every quantity's value from (t, y, c), as the JAX prelude does."""
    lines = [f"    const {ctype} {names.stored(st)} = y[{i}];" for i, st in enumerate(spec.states)]
    lines += [f"    const {ctype} {names.q(cid)} = c[{i}];" for i, cid in enumerate(spec.constants)]
    lines += [f"    const {ctype} {names.q(qid)} = {_value(names, expr)};" for qid, expr in spec.derived]
    return lines


def _value(names: _Names, expr: sp.Basic, local: bool = False) -> str:
    """``expr`` as a C value of the printer's type (a number is broadcast for the vector printer)."""
    e = expr if local else names.local(expr)
    text = names.print_local(e)
    return f"vsplat({text})" if isinstance(names.printer, _VectorPrinter) and e.is_number else text


def _costly(expr: sp.Basic) -> bool:
    """``expr`` holds a division, a non-integer or negative power or a function: what is worth
    computing once per change of the constants rather than at every evaluation."""
    for e in sp.preorder_traversal(expr):
        if isinstance(e, sp.Pow) and not (e.exp.is_Integer and e.exp > 0):
            return True
        if isinstance(e, sp.Function):
            return True
    return False


def hoist_invariants(
    exprs: Sequence[sp.Basic], invariant: frozenset[sp.Symbol]
) -> tuple[tuple[sp.Basic, ...], tuple[tuple[sp.Symbol, sp.Expr], ...]]:
    """``exprs`` with their costly (:func:`_costly`) subexpressions over ``invariant`` symbols alone
    replaced by symbols ``w0, w1, ...``, and those symbols' values, each distinct subexpression once.

    A product's invariant factors are taken together: ``k*x/V`` becomes ``w0*x`` with ``w0 = k/V``.
    The solver computes the ``w`` once per change of a lane's constants (its start, a stop) instead of
    at each of a step's 8 right-hand sides: a division by a volume or a half-saturation constant
    becomes a multiplication (loop-invariant code motion, which the C compiler may not do itself:
    ``x/V`` and ``x*(1/V)`` can differ in the last bit, so it needs this explicit choice). Conditions
    are never replaced (a ``w`` is a number), though a costly value inside one is."""
    table: dict[sp.Expr, sp.Symbol] = {}

    def hoisted(e: sp.Expr) -> sp.Symbol:
        if e not in table:
            table[e] = sp.Symbol(f"w{len(table)}")
        return table[e]

    def fixed(e: sp.Basic) -> bool:
        return e.free_symbols <= invariant

    def walk(e: sp.Basic) -> sp.Basic:
        if e.is_Atom:
            return e
        if isinstance(e, sp.Expr) and fixed(e) and _costly(e):
            return hoisted(e)
        if isinstance(e, sp.Mul):
            part = [a for a in e.args if fixed(a)]
            if part and _costly(sp.Mul(*part)):
                rest = [walk(a) for a in e.args if not fixed(a)]
                return sp.Mul(hoisted(sp.Mul(*part)), *rest)
        return e.func(*(walk(a) for a in e.args))

    out = tuple(walk(e) for e in exprs)
    return out, tuple((w, e) for e, w in table.items())


@dataclass(frozen=True)
class _VectorFunctions:
    """The bodies of the vector functions: ``model_hoist_v(c, w)``, the ``nw`` values computed once
    per change of the constants (:func:`hoist_invariants`), then ``model_rhs_v(t, y, c, w, f)`` and
    ``model_jac_v(t, y, c, w, v, dt)``, which read them."""

    nw: int
    hoist: tuple[str, ...]
    rhs: tuple[str, ...]
    jac: tuple[str, ...]


def _vector_functions(spec: ModelSpec, names: _Names, terms: JacobianTerms) -> _VectorFunctions:
    """:class:`_VectorFunctions` of ``spec`` (``names`` with the vector printer)."""
    invariant = {sp.Symbol(names.q(cid)) for cid in spec.constants}
    derived = [(names.q(qid), names.local(expr)) for qid, expr in spec.derived]
    for var, e in derived:  # a quantity computed from constants alone is one too
        if e.free_symbols <= invariant:
            invariant.add(sp.Symbol(var))
    rates = [names.local(st.rate) for st in spec.states]
    jac = [e for _, e in terms.assignments]
    exprs = [e for _, e in derived] + rates + jac + list(terms.values) + list(terms.dfdt)
    moved, table = hoist_invariants(exprs, frozenset(invariant))
    it = iter(moved)
    derived_w = [(var, next(it)) for var, _ in derived]
    rates_w = [next(it) for _ in rates]
    jac_w = [(var, next(it)) for var, _ in terms.assignments]
    values_w = [next(it) for _ in terms.values]
    dfdt_w = [next(it) for _ in terms.dfdt]

    def value(e: sp.Basic) -> str:
        return _value(names, e, local=True)

    states = [f"    const vd {names.stored(st)} = y[{i}];" for i, st in enumerate(spec.states)]
    constants = [f"    const vd {names.q(cid)} = c[{i}];" for i, cid in enumerate(spec.constants)]
    hoist = constants + [
        f"    const vd {var} = {value(e)};" for var, e in derived if sp.Symbol(var) in invariant
    ]
    hoist += [f"    w[{k}] = {value(e)};" for k, (_, e) in enumerate(table)]

    def prelude(body: Sequence[sp.Basic]) -> list[str]:
        used = set().union(*(e.free_symbols for _, e in derived_w), *(e.free_symbols for e in body))
        ws = [f"    const vd {w} = w[{k}];" for k, (w, _) in enumerate(table) if w in used]
        return states + constants + ws + [f"    const vd {var} = {value(e)};" for var, e in derived_w]

    rhs = prelude(rates_w) + [f"    f[{k}] = {value(e)};" for k, e in enumerate(rates_w)]
    jac_lines = prelude([e for _, e in jac_w] + values_w + dfdt_w)
    jac_lines += [f"    const vd {var} = {value(e)};" for var, e in jac_w]
    jac_lines += [f"    v[{k}] = {value(e)};" for k, e in enumerate(values_w)]
    jac_lines += [f"    dt[{k}] = {value(e)};" for k, e in enumerate(dfdt_w)]
    return _VectorFunctions(len(table), tuple(hoist), tuple(rhs), tuple(jac_lines))


def _lu(
    pattern: Sequence[tuple[int, int]], n: int
) -> tuple[dict[tuple[int, int], int], list[str], list[str]]:
    """Slots of the Rosenbrock matrix and its factors, and the unrolled factorisation and solve.

    Mirrors :func:`immunetwin.engines.solvers.sparse_lu`/``sparse_lu_solve``: slots in the order
    the JAX dict holds them (the Jacobian's pattern, then missing diagonal entries, then fill-in),
    and the same pivot order (:func:`~immunetwin.engines.solvers.elimination_order` of the pattern
    with its diagonal).
    Each pivot's reciprocal ``r`` is taken once, as soon as the pivot is final, and the column below it
    and the solve multiply by it: one division per row instead of one per entry below the diagonal
    (a division is the slowest vector operation, and the factorisation's divisions were a chain)."""
    slot: dict[tuple[int, int], int] = {}
    for ij in pattern:
        slot.setdefault(ij, len(slot))
    for i in range(n):
        slot.setdefault((i, i), len(slot))
    order = elimination_order(tuple(slot), n)
    pos = {k: p for p, k in enumerate(order)}
    factor: list[str] = []
    for p, k in enumerate(order):
        row_k = [j for (i, j) in list(slot) if i == k and pos[j] > p]
        factor.append(f"    r[{k}] = 1.0 / a[{slot[(k, k)]}];")
        for i in order[p + 1 :]:
            if (i, k) not in slot:
                continue
            factor.append(f"    a[{slot[(i, k)]}] = a[{slot[(i, k)]}] * r[{k}];")
            for j in row_k:
                if (i, j) in slot:
                    factor.append(
                        f"    a[{slot[(i, j)]}] = v_fma(-a[{slot[(i, k)]}], a[{slot[(k, j)]}], a[{slot[(i, j)]}]);"
                    )
                else:
                    slot[(i, j)] = len(slot)
                    factor.append(f"    a[{slot[(i, j)]}] = -a[{slot[(i, k)]}] * a[{slot[(k, j)]}];")
    rows: dict[int, list[int]] = {i: [] for i in range(n)}
    for i, j in slot:
        rows[i].append(j)
    solve: list[str] = []
    for i in order:
        solve += [
            f"    x[{i}] = v_fma(-a[{slot[(i, j)]}], x[{j}], x[{i}]);" for j in rows[i] if pos[j] < pos[i]
        ]
    for i in reversed(order):
        solve += [
            f"    x[{i}] = v_fma(-a[{slot[(i, j)]}], x[{j}], x[{i}]);" for j in rows[i] if pos[j] > pos[i]
        ]
        solve.append(f"    x[{i}] = x[{i}] * r[{i}];")
    return slot, factor, solve


def c_source(spec: ModelSpec, method: AbstractMethod, *, lanes: int | None = None) -> str:
    """The C translation unit of ``spec``'s solver with ``method`` (a Rosenbrock tableau), stepping
    ``lanes`` patients at once per thread (default: this machine's, :func:`lanes`)."""
    check_supported(spec, method)
    width = _target()[0] if lanes is None else int(lanes)
    if width < 1 or width & (width - 1):  # GCC's vector_size: a power of two
        raise InputError(f"lanes must be a power of two (1, 2, 4, 8...), got {lanes}")
    scalar = _Names(spec, printer=_CPrinter())
    vector = _Names(spec, printer=_VectorPrinter())
    n, nc, nq = len(spec.states), len(spec.constants), len(spec.quantities)
    try:
        terms = jacobian_terms(spec, vector)
        if terms is not None:
            vec = _vector_functions(spec, vector, terms)
    except NotImplementedError as exc:
        raise InputError(
            f"backend='native' cannot write model '{spec.id}' in C ({exc}): use backend='xla'"
        ) from None
    if terms is None:
        raise InputError(
            f"backend='native' needs the exact Jacobian of model '{spec.id}', which sympy cannot "
            "write (a function without a derivative rule): use backend='xla'"
        )
    out = [
        "#include <math.h>",
        "#include <stdint.h>",
        "#include <string.h>",
        f"#define N {n}",
        f"#define NC {nc}",
        f"#define NQ {nq}",
        f"#define NNZ {len(terms.pattern)}",
        f"#define L {width}",
        _VECTOR_HELPERS,
    ]

    # init(d, m, t) -> y0, c0 (user overrides win over initial assignments); scalar, once per patient
    out.append("static void model_init(const double *d, const uint8_t *m, double t, double *y, double *c) {")
    out += [f"    const double d{i} = d[{i}];" for i in range(nq)]
    start = dict(spec.start)
    for qid in spec.start_order:
        i = scalar.index[qid]
        out.append(f"    const double q{i} = m[{i}] ? d[{i}] : ({scalar.code(start[qid])});")
    for k, st in enumerate(spec.states):
        info = spec.info(st.id)
        value = scalar.q(st.id)
        if st.stored_as_amount and not info.only_substance_units and info.compartment:
            value = f"{value} * {scalar.q(info.compartment)}"
        out.append(f"    y[{k}] = {value};")
    out += [f"    c[{i}] = {scalar.q(cid)};" for i, cid in enumerate(spec.constants)]
    out += ["}", ""]

    pre = _prelude(spec, scalar, "double")
    out.append("static void model_rhs(double t, const double *y, const double *c, double *f) {")
    out += pre
    out += [f"    f[{k}] = {scalar.code(st.rate)};" for k, st in enumerate(spec.states)]
    out += ["}", ""]

    out.append("static void model_observe(double t, const double *y, const double *c, double *q) {")
    out += pre
    out += [f"    q[{i}] = {scalar.q(q.id)};" for i, q in enumerate(spec.quantities)]
    out += ["}", ""]

    out.append(f"#define NW {vec.nw}")
    out.append("#define NWW (NW > 0 ? NW : 1)")
    out.append("static void model_hoist_v(const vd *c, vd *w) {")
    out += vec.hoist
    out += ["}", ""]
    out.append("static void model_rhs_v(vd t, const vd *y, const vd *c, const vd *w, vd *f) {")
    out += vec.rhs
    out += ["}", ""]
    out.append("static void model_jac_v(vd t, const vd *y, const vd *c, const vd *w, vd *v, vd *dt) {")
    out += vec.jac
    out += ["}", ""]

    slot, factor, solve = _lu(terms.pattern, n)
    diag = [slot[(i, i)] for i in range(n)]
    out.append(f"#define NLU {max(1, len(slot))}")
    jslots = ", ".join(str(slot[ij]) for ij in terms.pattern) or "0"
    out.append(f"static const int JSLOT[{max(1, len(terms.pattern))}] = {{{jslots}}};")
    out.append(f"static const int DSLOT[{max(1, n)}] = {{{', '.join(map(str, diag)) or '0'}}};")
    # the entries W starts from that the Jacobian does not write: diagonal ones it lacks (fill-in
    # entries are written by the factorisation itself)
    written = set(terms.pattern)
    zero = [slot[(i, i)] for i in range(n) if (i, i) not in written]
    out.append(f"#define NZERO {len(zero)}")
    out.append(f"static const int ZSLOT[{max(1, len(zero))}] = {{{', '.join(map(str, zero)) or '0'}}};")
    state_of = {scalar.index[st.id]: k for k, st in enumerate(spec.states)}
    qstate = ", ".join(str(state_of.get(i, -1)) for i in range(nq)) or "-1"
    out.append(f"static const int QSTATE[{max(1, nq)}] = {{{qstate}}};  /* quantity -> state, or -1 */")
    out.append("static void lu_factor(vd *a, vd *r) {")
    out += factor
    out += ["}", ""]
    out.append("static void lu_solve(const vd *a, const vd *r, vd *x) {")
    out += solve
    out += ["}", ""]
    out += [
        f"#define ORDER {int(method.order)}",
        *_root_inverse(int(method.order)),
        *_rosenbrock_step(method),
        "",
        _LOOP,
    ]
    return "\n".join(out) + "\n"


_VECTOR_HELPERS = r"""
#define NN (N > 0 ? N : 1)
#define NCC (NC > 0 ? NC : 1)
typedef double vd __attribute__((vector_size(L * sizeof(double))));
typedef int64_t vl __attribute__((vector_size(L * sizeof(double))));
static inline vd vsplat(double x) { vd r; for (int l = 0; l < L; l++) r[l] = x; return r; }
static inline vd v_where(vl m, vd a, vd b) { return (vd)((m & (vl)a) | (~m & (vl)b)); }
#define VTRUE ((vl)(vsplat(0.0) == vsplat(0.0)))
#define VFALSE ((vl)(vsplat(0.0) != vsplat(0.0)))
#define VMAP1(name, f) static inline vd name(vd a) { vd r; for (int l = 0; l < L; l++) r[l] = f(a[l]); return r; }
#define VMAP2(name, f) static inline vd name(vd a, vd b) { vd r; for (int l = 0; l < L; l++) r[l] = f(a[l], b[l]); return r; }
VMAP1(v_exp, exp) VMAP1(v_log, log) VMAP1(v_sqrt, sqrt) VMAP1(v_fabs, fabs)
VMAP1(v_sin, sin) VMAP1(v_cos, cos) VMAP1(v_tan, tan) VMAP1(v_asin, asin) VMAP1(v_acos, acos)
VMAP1(v_atan, atan) VMAP1(v_sinh, sinh) VMAP1(v_cosh, cosh) VMAP1(v_tanh, tanh) VMAP1(v_asinh, asinh)
VMAP1(v_acosh, acosh) VMAP1(v_atanh, atanh) VMAP1(v_floor, floor) VMAP1(v_ceil, ceil)
VMAP1(v_tgamma, tgamma) VMAP1(v_erf, erf) VMAP1(v_erfc, erfc)
VMAP2(v_pow, pow) VMAP2(v_atan2, atan2) VMAP2(v_fmod, fmod) VMAP2(v_fmax, fmax) VMAP2(v_fmin, fmin)
/* a*b + c rounded once (IEEE 754 fusedMultiplyAdd): one vector instruction where the target has one
   for this width, else fma() lane by lane (an instruction with FMA, libm's exact fma without), so the
   bits never depend on the instruction set. The intrinsics and always_inline: GCC neither vectorises
   the lane loop nor inlines it into the long functions of a sensitivity system by itself. */
#if defined(__AVX512F__) || defined(__FMA__)
#include <immintrin.h>
#endif
static inline __attribute__((always_inline)) vd v_fma(vd a, vd b, vd c) {
#if L == 8 && defined(__AVX512F__)
    return (vd)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#elif L == 4 && defined(__FMA__)
    return (vd)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#elif L == 2 && defined(__FMA__)
    return (vd)_mm_fmadd_pd((__m128d)a, (__m128d)b, (__m128d)c);
#else
    vd r;
    for (int l = 0; l < L; l++) r[l] = fma(a[l], b[l], c[l]);
    return r;
#endif
}
"""


#: The step-size controller's ``en ** (-1 / order)`` is needed for ``en`` in [1e-10, 1e10] only: outside,
#: its factor ``0.9 * en ** (-1 / order)`` is clipped to [0.2, 6] anyway (for orders up to 8).
_ROOT_RANGE = (1e-10, 1e10)


def _exact(x: sp.Expr) -> str:
    """The double nearest ``x`` (evaluated to 40 digits, so the source does not depend on this
    machine's ``pow``), as a C literal."""
    return repr(float(sp.N(x, 40)))


def _root_inverse(order: int) -> list[str]:
    r"""``v_root_inverse(x)``: :math:`x^{-1/p}` (``p = order``) for every lane at once, for the
    step-size controller's factor, and ``itn_root_inverse`` (the same for an array, for tests). One
    vector instead of a call of ``pow`` per lane: those were 7.6 % of a trial's CPU time.

    With ``x`` clamped to :data:`_ROOT_RANGE` and written ``x = m 2^e``, ``m`` in [1, 2),
    ``e = p q + r``, ``0 <= r < p``: :math:`x^{-1/p} = m^{-1/p} \, 2^{-r/p} \, 2^{-q}`, the middle
    factor from a table, the last by its exponent bits. :math:`y \approx m^{-1/p}` starts from the
    quadratic through :math:`m = 1, 3/2, 2` (relative error below 5e-3) and is refined twice by
    :math:`y \leftarrow y (1 + \epsilon/p + (1 + p)\epsilon^2/(2p^2))`, :math:`\epsilon = 1 - m
    y^p`: the series of :math:`(1 - \epsilon)^{-1/p}` to second order, so each pass cubes the
    error (Householder's third-order iteration, without a division). Within 2 ulp of the exact root
    over the range (``tests/engines/test_native.py``), where ``pow(x, -1.0/5)`` itself is within
    3, its exponent being rounded; the XLA engine's ``**`` is its own implementation again. Only
    IEEE element-wise operations: the same bits on every machine."""
    p = sp.Integer(order)
    f = [sp.Rational(1) ** (-1 / p), sp.Rational(3, 2) ** (-1 / p), sp.Integer(2) ** (-1 / p)]
    # y(m) = f0 + (m - 1) (b1 + (m - 3/2) b2), Newton's divided differences
    b1 = (f[1] - f[0]) * 2
    b2 = (f[2] - f[1]) * 2 - b1
    lo, hi = _ROOT_RANGE
    table = ", ".join(_exact(sp.Integer(2) ** (-sp.Integer(r) / p)) for r in range(order))
    # y^order by squaring (y1 = y, y2 = y1 * y1, y4 = y2 * y2, ...), then the product over its bits
    squares = [f"        const vd y{2 << i} = y{1 << i} * y{1 << i};" for i in range(order.bit_length() - 1)]
    power = " * ".join(f"y{1 << i}" for i in range(order.bit_length()) if order >> i & 1)
    return [
        f"static const double ROOT2[ORDER] = {{{table}}};  /* 2^(-r/ORDER) */",
        "static inline vd v_root_inverse(vd x) {",
        f"    x = v_where((vl)(x >= {lo!r}), x, vsplat({lo!r}));  /* NaN too */",
        f"    x = v_where((vl)(x <= {hi!r}), x, vsplat({hi!r}));",
        "    const vl bits = (vl)x;",
        "    const vd m = (vd)((bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);",
        "    const vd e = __builtin_convertvector(((bits >> 52) & 0x7ff) - 1023, vd);",
        "    vd q = e / (double)ORDER;",
        "    for (int l = 0; l < L; l++) q[l] = floor(q[l]);",
        "    const vd r = e - (double)ORDER * q;",
        "    vd t = vsplat(ROOT2[0]);",
        "    for (int k = 1; k < ORDER; k++) t = v_where((vl)(r == (double)k), vsplat(ROOT2[k]), t);",
        "    const vd scale = (vd)((1023 - __builtin_convertvector(q, vl)) << 52);",
        f"    vd y = {_exact(f[0])} + (m - 1.0) * ({_exact(b1)} + (m - 1.5) * {_exact(b2)});",
        "    for (int it = 0; it < 2; it++) {",
        "        const vd y1 = y;",
        *squares,
        f"        const vd eps = 1.0 - m * ({power});",
        f"        y = y + y * (eps * ({_exact(1 / p)} + eps * {_exact((1 + p) / (2 * p * p))}));",
        "    }",
        "    return y * t * scale;",
        "}",
        "void itn_root_inverse(int64_t n, const double *x, double *out) {",
        "    for (int64_t i = 0; i < n; i++) out[i] = v_root_inverse(vsplat(x[i]))[0];",
        "}",
        "",
    ]


def _combination(weights: Sequence[float], arrays: Sequence[str], start: str | None = None) -> str:
    """``start + w0*k0[i] + w1*k1[i] + ...`` over the non-zero weights (literal coefficients), summed
    left to right, each product added with one rounding (``v_fma``) and a weight of 1 an addition,
    or '' (nothing to sum)."""
    acc = start
    for w, a in zip(weights, arrays, strict=False):
        if w == 0.0:
            continue
        term = f"{a}[i]"
        if w == 1.0:
            acc = term if acc is None else f"{acc} + {term}"
        else:
            weight = f"vsplat({float(w)!r})"
            acc = f"{weight} * {term}" if acc is None else f"v_fma({weight}, {term}, {acc})"
    return acc or ""


def _extends(row: np.ndarray, previous: np.ndarray, s: int) -> bool:
    """Whether stage row ``row`` is ``previous`` (a stage input the step has formed in ``u``) plus
    1 x k_{s-1}: then ``y + row @ K``, summed left to right, is exactly ``(y + previous @ K) +
    k_{s-1}`` (Rodas5P's stages 7, 8 and its solution)."""
    return (
        s > 1
        and previous[: s - 1].any()  # stage s-1 read u, not y
        and not previous[s - 1 :].any()
        and np.array_equal(row[: s - 1], previous[: s - 1])
        and row[s - 1] == 1.0
        and not row[s:].any()
    )


def _rosenbrock_step(method: AbstractMethod) -> list[str]:
    """One step of the method's tableau for :func:`lanes` patients, unrolled over its 8 stages with
    the coefficients as literals (the stage equations of :mod:`immunetwin.engines.solvers`): ``y1``,
    the error estimate ``k8`` and, when ``want_dense``, the dense-output rows ``H @ K`` of the states
    ``need[:n_need]`` (those the outputs read).

    Each stage reads the earlier stages once: its input ``u = y + A[s] @ K`` and its coupling
    ``C[s] @ K`` in one pass, and a stage input that is the previous one plus the previous stage
    (rows 7, 8 and the solution of Rodas5P) as that sum. Both give the same values as the stage
    equations written out, summed left to right: the answers do not change, only the loads."""
    A, C, cs, ds, H = _rosenbrock_arrays(method.tableau)  # type: ignore[attr-defined]
    gamma = float(method.tableau.gamma)  # type: ignore[attr-defined]
    ks = [f"k{s}" for s in range(8)]
    out = [
        "static void rosenbrock_step(vd t, const vd *y, const vd *c, const vd *w, vd h, vd *y1, vd *err,",
        "                            vd *dense, int want_dense, const int *need, int n_need) {",
        "    vd jv[NNZ > 0 ? NNZ : 1], dfdt[NN], a[NLU], r[NN], u[NN], g[NN];",
        "    vd " + ", ".join(f"{k}[NN]" for k in ks) + ";",
        "    model_jac_v(t, y, c, w, jv, dfdt);",
        "    for (int k = 0; k < NZERO; k++) a[ZSLOT[k]] = vsplat(0.0);",
        "    /* a non-finite entry is dropped (a W-method step, accepted only by its error estimate) */",
        "    for (int k = 0; k < NNZ; k++) a[JSLOT[k]] = v_where((vl)(jv[k] - jv[k] == 0.0), -jv[k], vsplat(-0.0));",
        "    for (int i = 0; i < N; i++) dfdt[i] = v_where((vl)(dfdt[i] - dfdt[i] == 0.0), dfdt[i], vsplat(0.0));",
        f"    const vd inv_hg = 1.0 / (h * {gamma!r});",
        "    const vd ih = 1.0 / h;",
        "    for (int i = 0; i < N; i++) a[DSLOT[i]] += inv_hg;",
        "    lu_factor(a, r);",
    ]
    for s in range(8):
        body = []
        if _extends(A[s], A[s - 1], s):
            body.append(f"u[i] = u[i] + {ks[s - 1]}[i];")
        elif A[s][:s].any():
            body.append(f"u[i] = {_combination(A[s][:s], ks[:s], 'y[i]')};")
        arg = "u" if body else "y"
        cc = _combination(C[s][:s], ks[:s])
        if cc:
            body.append(f"g[i] = {cc};")
        if body:
            out.append(f"    for (int i = 0; i < N; i++) {{ {' '.join(body)} }}")
        out.append(f"    model_rhs_v(t + {float(cs[s])!r} * h, {arg}, c, w, {ks[s]});")
        rhs = f"{ks[s]}[i]"
        if ds[s] != 0.0:
            rhs = f"v_fma({float(ds[s])!r} * h, dfdt[i], {rhs})"
        if cc:
            rhs = f"v_fma(g[i], ih, {rhs})"
        if rhs != f"{ks[s]}[i]":
            out.append(f"    for (int i = 0; i < N; i++) {ks[s]}[i] = {rhs};")
        out.append(f"    lu_solve(a, r, {ks[s]});")
    out.append("    for (int i = 0; i < N; i++) {")
    solution = f"u[i] + {ks[7]}[i]" if _extends(A[8], A[7], 8) else _combination(A[8], ks, "y[i]")
    out.append(f"        y1[i] = {solution};")
    out.append("        err[i] = k7[i];")
    out.append("    }")
    out.append("    if (!want_dense) return;")
    out.append("    for (int ii = 0; ii < n_need; ii++) {")
    out.append("        const int i = need[ii];")
    for row in range(len(H)):
        out.append(f"        dense[{row} * N + i] = {_combination(H[row], ks) or 'vsplat(0.0)'};")
    out.append("    }")
    out.append("}")
    return out


# The adaptive loop of immunetwin.engines.integrate, for L patients at a time (lanes()): a lane whose
# patient has finished takes the next one at once. The control (outputs, step size, stops) is scalar
# per lane; the step itself is one vector call for all lanes.
_LOOP = r"""
static double initial_step(double t0, const double *y0, const double *c, double span, double rtol, double atol) {
    /* Hairer, Norsett & Wanner 1993, section II.4, 'starting step size' */
    if (N == 0) return span;
    double f0[NN], f1[NN], u[NN];
    model_rhs(t0, y0, c, f0);
    double s0 = 0.0, s1 = 0.0;
    for (int i = 0; i < N; i++) {
        double sc = atol + rtol * fabs(y0[i]);
        s0 += (y0[i] / sc) * (y0[i] / sc);
        s1 += (f0[i] / sc) * (f0[i] / sc);
    }
    double d0 = sqrt(s0 / N), d1 = sqrt(s1 / N);
    double h0 = (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
    if (h0 > span) h0 = span;
    for (int i = 0; i < N; i++) u[i] = y0[i] + h0 * f0[i];
    model_rhs(t0 + h0, u, c, f1);
    double s2 = 0.0;
    for (int i = 0; i < N; i++) {
        double sc = atol + rtol * fabs(y0[i]);
        double r = (f1[i] - f0[i]) / sc;
        s2 += r * r;
    }
    double d2 = sqrt(s2 / N) / h0;
    double dm = d1 > d2 ? d1 : d2;
    double h1 = dm <= 1e-15 ? (h0 * 1e-3 > 1e-6 ? h0 * 1e-3 : 1e-6) : pow(0.01 / dm, 1.0 / (ORDER + 1));
    double h = 100 * h0 < h1 ? 100 * h0 : h1;
    if (!(isfinite(h) && h > 0)) return 1e-6;
    return h < span ? h : span;
}

typedef struct {
    int64_t t_count, ts_stride, k_count, ncol;
    const double *ts, *d, *y0, *c0, *st, *sdy, *sval;
    const uint8_t *m, *smask;
    const int64_t *cols;
    double rtol, atol;
    int64_t max_steps;
    double *out;
    int64_t *status, *steps;
    const double *pause, *resume;  /* per patient: a time to stop short of; a saved lane to start from */
    double *save;                  /* per patient: the lane as it stopped (NSAVE values) */
    int direct, n_need;            /* direct: every output column is a state, read from need[] */
    int need[NN];
} Job;

/* A saved lane: t, h, t_prev, h_prev, k, j, steps, status, then y, the constants and their start
   values. Every step after it depends only on these and the patient's own inputs. */
#define NSAVE (8 + N + 2 * NC)

typedef struct {
    int64_t pid;  /* -1: no patient */
    double t, h, t_prev, h_prev, h_try, t_stop;
    int64_t k, j, steps, status;
    int clipped;
    double c0[NCC];
} Lane;

/* State of all lanes, vector layout: element l of each vector is lane l. */
typedef struct {
    vd y[NN], c[NCC], w[NWW], y_prev[NN], y_end[NN], dense[3 * NN];
    int stale;  /* a lane's constants changed since w was computed (model_hoist_v) */
} Block;

static void apply_stop(const Job *job, Lane *ln, Block *bk, int l) {
    const int64_t p = ln->pid, k = ln->k;
    for (int i = 0; i < N; i++) bk->y[i][l] += job->sdy[(p * job->k_count + k) * N + i];
    for (int i = 0; i < NC; i++)
        if (job->smask[(p * job->k_count + k) * NC + i]) bk->c[i][l] = job->sval[(p * job->k_count + k) * NC + i];
    ln->k = k + 1;
    bk->stale = 1;
}

/* The patient's output times (one row for all when ts_stride is 0). */
static const double *times_of(const Job *job, int64_t p) { return job->ts + p * job->ts_stride; }

static void resume(const Job *job, Lane *ln, Block *bk, int l, int64_t p) {
    const double *s = job->resume + p * NSAVE;
    ln->pid = p;
    ln->t = s[0]; ln->h = s[1]; ln->t_prev = s[2]; ln->h_prev = s[3];
    ln->k = (int64_t)s[4]; ln->j = (int64_t)s[5]; ln->steps = (int64_t)s[6]; ln->status = (int64_t)s[7];
    for (int i = 0; i < N; i++) { bk->y[i][l] = s[8 + i]; bk->y_prev[i][l] = s[8 + i]; bk->y_end[i][l] = s[8 + i]; }
    for (int i = 0; i < NC; i++) { bk->c[i][l] = s[8 + N + i]; ln->c0[i] = s[8 + N + NC + i]; }
    for (int i = 0; i < 3 * N; i++) bk->dense[i][l] = 0.0;
    bk->stale = 1;
}

static void save(const Job *job, const Lane *ln, const Block *bk, int l) {
    double *s = job->save + ln->pid * NSAVE;
    s[0] = ln->t; s[1] = ln->h; s[2] = ln->t_prev; s[3] = ln->h_prev;
    s[4] = (double)ln->k; s[5] = (double)ln->j; s[6] = (double)ln->steps; s[7] = (double)ln->status;
    for (int i = 0; i < N; i++) s[8 + i] = bk->y[i][l];
    for (int i = 0; i < NC; i++) { s[8 + N + i] = bk->c[i][l]; s[8 + N + NC + i] = ln->c0[i]; }
}

static void start(const Job *job, Lane *ln, Block *bk, int l, int64_t p) {
    double y[NN], c[NCC];
    const double *ts = times_of(job, p);
    const double t0 = ts[0], t_end = ts[job->t_count - 1];
    if (job->resume) { resume(job, ln, bk, l, p); return; }
    ln->pid = p;
    ln->t = t0; ln->k = 0; ln->j = 0; ln->steps = 0; ln->status = 0;
    if (job->y0) {  /* start values given (y0, c), not computed from declared values */
        for (int i = 0; i < N; i++) y[i] = job->y0[p * N + i];
        for (int i = 0; i < NC; i++) ln->c0[i] = job->c0[p * NC + i];
    } else {
        model_init(job->d + p * NQ, job->m + p * NQ, t0, y, ln->c0);
    }
    for (int i = 0; i < N; i++) bk->y[i][l] = y[i];
    for (int i = 0; i < NC; i++) bk->c[i][l] = ln->c0[i];
    bk->stale = 1;
    if (job->k_count > 0 && job->st[p * job->k_count] <= t0) apply_stop(job, ln, bk, l);
    for (int i = 0; i < N; i++) y[i] = bk->y[i][l];
    for (int i = 0; i < NC; i++) c[i] = bk->c[i][l];
    double span = t_end - t0 > 1e-300 ? t_end - t0 : 1e-300;
    ln->h = initial_step(t0, y, c, span, job->rtol, job->atol);
    ln->t_prev = t0; ln->h_prev = 1.0;
    for (int i = 0; i < N; i++) { bk->y_prev[i][l] = y[i]; bk->y_end[i][l] = y[i]; }
    for (int i = 0; i < 3 * N; i++) bk->dense[i][l] = 0.0;
}

/* Outputs at or before the lane's t: inside its last step by the dense output, at t the state. */
static void write_outputs(const Job *job, Lane *ln, const Block *bk, int l) {
    double value[NN], c[NCC], q[NQ > 0 ? NQ : 1];
    const int64_t p = ln->pid;
    const double *ts = times_of(job, p);
    while (ln->j < job->t_count && ts[ln->j] <= ln->t) {
        const double t_out = ts[ln->j];
        if (t_out < ln->t) {
            double theta = (t_out - ln->t_prev) / ln->h_prev;
            theta = theta < 0.0 ? 0.0 : (theta > 1.0 ? 1.0 : theta);
            const double th1 = 1.0 - theta;
            for (int ii = 0; ii < job->n_need; ii++) {
                const int i = job->need[ii];
                value[i] = th1 * bk->y_prev[i][l] + theta * (bk->y_end[i][l] + th1 * (bk->dense[i][l]
                           + theta * (bk->dense[N + i][l] + theta * bk->dense[2 * N + i][l])));
            }
        } else {
            for (int ii = 0; ii < job->n_need; ii++) value[job->need[ii]] = bk->y[job->need[ii]][l];
        }
        double *row = job->out + (p * job->t_count + ln->j) * job->ncol;
        if (job->direct) {  /* states only: no constants, no other quantity */
            for (int64_t jj = 0; jj < job->ncol; jj++) row[jj] = value[QSTATE[job->cols[jj]]];
            ln->j++;
            continue;
        }
        /* constants at t_out: the inputs switched at or before it. Those are the lane's own when
           the entries it has applied are exactly those at or before t_out (mostly: stops are rare) */
        const double *st = job->st + p * job->k_count;
        if ((ln->k == 0 || st[ln->k - 1] <= t_out) && (ln->k == job->k_count || st[ln->k] > t_out)) {
            for (int i = 0; i < NC; i++) c[i] = bk->c[i][l];
        } else {
            for (int i = 0; i < NC; i++) c[i] = ln->c0[i];
            for (int64_t k = 0; k < job->k_count; k++)
                for (int i = 0; i < NC; i++)
                    if (job->smask[(p * job->k_count + k) * NC + i] && st[k] <= t_out)
                        c[i] = job->sval[(p * job->k_count + k) * NC + i];
        }
        model_observe(t_out, value, c, q);
        for (int64_t jj = 0; jj < job->ncol; jj++) row[jj] = q[job->cols[jj]];
        ln->j++;
    }
}

static int running(const Job *job, const Lane *ln) {
    return ln->pid >= 0 && ln->j < job->t_count && ln->status == 0;
}

/* The lane's next attempt could reach its patient's pause time: it stops before it, as a patient
   whose schedule differs from there on would (whose step is clipped at that time). */
static int pausing(const Job *job, const Lane *ln) {
    return job->pause && ln->h >= (job->pause[ln->pid] - ln->t) * (1.0 - 1e-12);
}

/* Every patient of the job solved, in lanes; pause, resume and save may be NULL (itn_solve). */
void itn_solve_from(int64_t b, int64_t t_count, int64_t ts_stride, int64_t k_count, const double *ts,
                    const double *d, const uint8_t *m, const double *y0, const double *c0,
                    const double *st, const double *sdy, const uint8_t *smask,
                    const double *sval, int64_t ncol, const int64_t *cols, double rtol, double atol,
                    int64_t max_steps, double *out, int64_t *status, int64_t *steps,
                    const double *pause, const double *resume_from, double *save_to) {
    Job job = {t_count, ts_stride, k_count, ncol, ts, d, y0, c0, st, sdy, sval, m, smask, cols, rtol, atol,
               max_steps, out, status, steps, pause, resume_from, save_to};
    /* the states the outputs read: where every column is a state, only those are interpolated */
    job.direct = 1;
    for (int64_t jj = 0; jj < ncol; jj++) job.direct &= QSTATE[cols[jj]] >= 0;
    int wanted[NN] = {0};
    for (int64_t jj = 0; jj < ncol && job.direct; jj++) wanted[QSTATE[cols[jj]]] = 1;
    job.n_need = 0;
    for (int i = 0; i < N; i++)
        if (!job.direct || wanted[i]) job.need[job.n_need++] = i;
    Lane lanes[L];
    Block bk;
    vd y1[NN], err[NN], dense[3 * NN], tv, hv;
    memset(&bk, 0, sizeof bk);
    int64_t next = 0;
    for (int l = 0; l < L; l++) lanes[l].pid = -1;
    for (;;) {
        int active = 0, want_dense = 0;
        for (int l = 0; l < L; l++) {
            Lane *ln = &lanes[l];
            for (;;) {
                if (ln->pid < 0) {
                    if (next >= b) break;
                    start(&job, ln, &bk, l, next++);
                }
                if (ln->status == 0) write_outputs(&job, ln, &bk, l);
                if (running(&job, ln) && !pausing(&job, ln)) break;
                if (job.save) save(&job, ln, &bk, l);
                status[ln->pid] = ln->j >= t_count ? 0 : ln->status;
                steps[ln->pid] = ln->steps;
                ln->pid = -1;
            }
            if (ln->pid < 0) { tv[l] = 0.0; hv[l] = 1.0; continue; }
            active++;
            /* one step attempt towards the next stop (schedule time or the end) */
            const double t_end = times_of(&job, ln->pid)[t_count - 1];
            const double next_stop = ln->k < k_count ? st[ln->pid * k_count + ln->k] : INFINITY;
            const double t_stop = next_stop < t_end ? next_stop : t_end;
            const double remaining = t_stop - ln->t;
            ln->t_stop = t_stop;
            ln->clipped = ln->h >= remaining * (1.0 - 1e-12);
            ln->h_try = ln->clipped ? remaining : ln->h;
            tv[l] = ln->t;
            hv[l] = ln->h_try;
            /* the dense output is read only for an output time inside the step (mostly none) */
            want_dense |= times_of(&job, ln->pid)[ln->j] < (ln->clipped ? t_stop : ln->t + ln->h_try);
        }
        if (!active) break;
        if (bk.stale) { model_hoist_v(bk.c, bk.w); bk.stale = 0; }
        rosenbrock_step(tv, bk.y, bk.c, bk.w, hv, y1, err, dense, want_dense, job.need, job.n_need);
        vd total = vsplat(0.0);
        vl finite_y = VTRUE;
        for (int i = 0; i < N; i++) {
            vd a0 = v_fabs(bk.y[i]), a1 = v_fabs(y1[i]);
            vd s = atol + rtol * v_where((vl)(a0 > a1), a0, a1);
            vd r = err[i] / s;
            total += r * r;
            finite_y &= (vl)(y1[i] - y1[i] == 0.0);
        }
        vl accept_mask = VFALSE;
        vd env = N == 0 ? vsplat(0.0) : total / (double)NN;
        for (int l = 0; l < L; l++) env[l] = sqrt(env[l]);
        const vl finite_v = (vl)(env - env == 0.0) & finite_y;
        const vd root = v_root_inverse(v_where(finite_v, env, vsplat(INFINITY)));  /* safe_en^(-1/ORDER) */
        for (int l = 0; l < L; l++) {
            Lane *ln = &lanes[l];
            if (ln->pid < 0) continue;
            const double en = env[l];
            const int finite = finite_v[l] != 0;
            const int accept = finite && en <= 1.0;
            const double h_try = ln->h_try;
            const double t1 = ln->clipped ? ln->t_stop : ln->t + h_try;
            double fac = 0.9 * root[l];
            fac = fac < 0.2 ? 0.2 : (fac > 6.0 ? 6.0 : fac);
            if (!accept && fac > 0.9) fac = 0.9;
            double h_next = h_try * fac;
            if (accept && ln->clipped && h_next < ln->h) h_next = ln->h;
            if (!finite) h_next = h_try * 0.25;
            const double scale_t = fabs(ln->t) > 1.0 ? fabs(ln->t) : 1.0;
            ln->steps++;
            if (h_next < 1e-14 * scale_t) ln->status = finite ? 2 : 3;
            if (ln->status == 0 && ln->steps >= max_steps) ln->status = 1;
            ln->h = h_next;
            if (accept) {
                accept_mask[l] = -1;
                ln->t_prev = ln->t;
                ln->h_prev = t1 - ln->t;
                ln->t = t1;
            }
        }
        if (want_dense) {  /* what write_outputs interpolates in; stale only where no lane reads it */
            for (int ii = 0; ii < job.n_need; ii++) {
                const int i = job.need[ii];
                bk.y_prev[i] = v_where(accept_mask, bk.y[i], bk.y_prev[i]);
                bk.y_end[i] = v_where(accept_mask, y1[i], bk.y_end[i]);
                for (int r = 0; r < 3; r++) bk.dense[r * N + i] = v_where(accept_mask, dense[r * N + i], bk.dense[r * N + i]);
            }
        }
        for (int i = 0; i < N; i++) bk.y[i] = v_where(accept_mask, y1[i], bk.y[i]);
        for (int l = 0; l < L; l++) {  /* the schedule entry an accepted clipped step landed on */
            Lane *ln = &lanes[l];
            if (accept_mask[l] && ln->clipped && ln->k < k_count && st[ln->pid * k_count + ln->k] <= ln->t)
                apply_stop(&job, ln, &bk, l);
        }
    }
}

void itn_solve(int64_t b, int64_t t_count, int64_t ts_stride, int64_t k_count, const double *ts,
               const double *d, const uint8_t *m, const double *y0, const double *c0,
               const double *st, const double *sdy, const uint8_t *smask,
               const double *sval, int64_t ncol, const int64_t *cols, double rtol, double atol,
               int64_t max_steps, double *out, int64_t *status, int64_t *steps) {
    itn_solve_from(b, t_count, ts_stride, k_count, ts, d, m, y0, c0, st, sdy, smask, sval, ncol, cols,
                   rtol, atol, max_steps, out, status, steps, NULL, NULL, NULL);
}

int64_t itn_lanes(void) { return L; }
"""


@dataclass(frozen=True, eq=False)
class NativeSolver:
    """A built native solver: the extension module's ``itn_solve``, the model's sizes and the
    patients it steps per vector (``lanes``)."""

    lib: Any
    ffi: Any
    n_quantities: int
    n_states: int
    n_constants: int
    key: str
    lanes: int


def _cache_dir() -> Path:
    import jax  # the engine's cache lives beside JAX's persistent compilation cache when that is on

    base = jax.config.jax_compilation_cache_dir
    if base:
        return Path(base) / "immunetwin-native"
    from immunetwin.runtime import default_cache_dir

    return default_cache_dir().parent / "native"


def _key(source: str) -> str:
    import cffi

    cc = os.environ.get("CC", "") or str(sysconfig.get_config_var("CC") or "")
    parts = [
        source,
        repr(CFLAGS + _target_flags()),
        cc,
        sys.version,
        cffi.__version__,
        sysconfig.get_platform(),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile(name: str, source: str, target_dir: Path) -> Path:
    """Build the extension in a private temporary folder and move it into ``target_dir`` atomically
    (two processes building the same model at once each move a complete file)."""
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(_SIGNATURE)
    ffi.set_source(name, source, extra_compile_args=[*CFLAGS, *_target_flags()], libraries=["m"])
    with tempfile.TemporaryDirectory(prefix="immunetwin-native-") as tmp:
        try:
            built = Path(ffi.compile(tmpdir=tmp, verbose=False))
        except Exception as exc:  # cffi raises VerificationError, distutils/setuptools their own
            raise SolverError(
                "backend='native' could not build the model with this machine's C compiler "
                f"({type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}); "
                "install gcc or clang, or use backend='xla'"
            ) from exc
        target_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = target_dir / built.name
        staged = target_dir / f".{built.name}.{os.getpid()}.tmp"
        shutil.copy2(built, staged)
        os.replace(staged, final)
    return final


#: One build or load at a time in this process: cffi's ``compile`` changes the process's working
#: directory to its build folder, so two threads building at once (two chunks starting together on a
#: fresh Dask worker) failed with the other's deleted folder.
_BUILDING = threading.Lock()


def _build(source: str, nq: int, n: int, nc: int) -> NativeSolver:
    with _BUILDING:
        return _build_alone(source, nq, n, nc)


@lru_cache(maxsize=32)
def _build_alone(source: str, nq: int, n: int, nc: int) -> NativeSolver:
    """:func:`_build` under the lock, cached: a thread that waited for another's build of the same
    source gets that module instead of loading it again."""
    key = _key(source)
    name = f"_immunetwin_native_{key}"
    target = _cache_dir()
    found = sorted(target.glob(f"{name}.*")) if target.is_dir() else []
    found = [p for p in found if not p.name.endswith(".tmp")]
    try:
        module = _load(name, found[0]) if found else None
    except (ImportError, OSError):
        module = None  # a stale, truncated or foreign file: rebuild it
    if module is None:
        try:
            path = _compile(name, source, target)
        except OSError:  # the cache folder is not writable: build in a folder of this process's
            path = _compile(name, source, Path(tempfile.mkdtemp(prefix="immunetwin-native-")))
        module = _load(name, path)
    return NativeSolver(module.lib, module.ffi, nq, n, nc, key, int(module.lib.itn_lanes()))


@lru_cache(maxsize=32)
def build(spec: ModelSpec, method: AbstractMethod, *, lanes: int | None = None) -> NativeSolver:
    """The native solver of ``spec`` with ``method``, built once per machine (then loaded), generated
    once per process; ``lanes`` patients per vector (default: this machine's widest, :func:`lanes`,
    for cohorts; a fit's few points take 4, :data:`immunetwin.engines.native_jax.FIT_LANES`)."""
    source = c_source(spec, method, lanes=lanes)
    return _build(source, len(spec.quantities), len(spec.states), len(spec.constants))


def shared_prefixes(
    t0: np.ndarray, inputs: Sequence[np.ndarray], stops: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Runs of consecutive rows that are one patient up to a time, and that time.

    Two rows are one patient up to ``t`` when every array of ``inputs`` (leading axis: the rows; the
    parameters, output times, start values) is bitwise equal in them and their stop tables (``st``
    (B, K), sorted in time, ``sdy`` (B, K, n), ``smask`` and ``sval`` (B, K, nc)) agree entry by entry
    before the first entry where they differ, whose earlier time is ``t``: the arms of a trial, say,
    until the first treatment. The relation is transitive (up to the smaller time), so a run of rows
    each of which is one patient with the row before it, after the rows' start time ``t0`` (B,), is
    one patient up to the smallest of those times: a *group* (a stop at the start is applied before
    the first step, so rows that differ there are not grouped).

    Returns ``group`` (B,), each row's group (numbered from 0 in row order), and ``until`` (G,), the
    time up to which a group's rows are the same patient (``inf`` for a single row).
    """
    st, sdy, smask, sval = stops
    b = st.shape[0]
    if b == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    joins = np.ones(b - 1, bool)  # row i + 1 with row i
    for a in inputs:
        a = np.ascontiguousarray(a).reshape(b, -1)
        a = a.view(np.uint64 if a.itemsize == 8 else np.uint8)  # bits: NaN equals NaN, -0.0 not 0.0
        joins &= np.all(a[1:] == a[:-1], axis=1)
    if not joins.any():  # no row repeats the one before it (a cohort without arms)
        return np.arange(b), np.full(b, np.inf)
    values = np.where(smask, sval, 0.0)
    differ = (
        (st[1:] != st[:-1])
        | np.any(sdy[1:] != sdy[:-1], axis=2)
        | np.any(smask[1:] != smask[:-1], axis=2)
        | np.any(values[1:] != values[:-1], axis=2)
    )
    k = np.argmax(differ, axis=1)
    pairs = np.arange(b - 1)
    split = np.where(differ.any(axis=1), np.minimum(st[pairs, k], st[pairs + 1, k]), np.inf)
    joins &= split > t0[1:]
    group = np.concatenate([[0], np.cumsum(~joins)])
    until = np.full(group[-1] + 1, np.inf)
    np.minimum.at(until, group[1:][joins], split[joins])
    return group, until


def run_native(
    solver: NativeSolver,
    ts: np.ndarray,
    d: np.ndarray,
    m: np.ndarray,
    stops: tuple[np.ndarray, ...],
    ctl: Controls,
    chunk: int,
    progress: Callable[[int, int], None] | None,
    columns: tuple[int, ...] | None,
    threads: int | None = None,
    *,
    start: tuple[np.ndarray, np.ndarray] | None = None,
    share: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve every patient (rows of ``d``, ``m`` and the stop tables) with ``solver``.

    ``ts`` is one row of output times for all patients (T,) or one per patient (B, T). ``start``:
    the start values ``(y0 (B, n), c (B, nc))`` themselves, instead of computing them from ``d`` and
    ``m`` (which are then not read).

    ``share``: rows that repeat the row before them up to a time (:func:`shared_prefixes`: a trial's
    arms of one patient until the first treatment) are solved once up to there: the group's first row
    stops short of that time (before the step that could reach it), and every row of the group goes
    on from that saved lane with its own schedule. The lane is the loop's whole state, so each row
    takes the same steps and gets the same bits as when solved alone (``tests/engines/test_native.py``).

    Returns outputs (B, T, ncol), status (B,) and steps (B,), as the XLA engine's ``_run``. The
    patients are solved ``chunk`` at a time, each chunk split over ``threads`` threads (default:
    the cores this process may run on); ``progress(done, total)`` after each chunk.
    """
    b, t_count = d.shape[0], ts.shape[-1]
    per_patient = ts.ndim == 2
    st, sdy, smask, sval = stops
    k_count = st.shape[1]
    cols = (
        np.arange(solver.n_quantities, dtype=np.int64) if columns is None else np.asarray(columns, np.int64)
    )
    if start is not None:
        y0, c0 = (np.ascontiguousarray(a, dtype=np.float64) for a in start)
        if y0.shape != (b, solver.n_states) or c0.shape != (b, solver.n_constants):
            raise InputError(
                f"start values must have shapes ({b}, {solver.n_states}) and ({b}, {solver.n_constants}), "
                f"got {y0.shape} and {c0.shape}"
            )
    arrays = {
        "ts": np.ascontiguousarray(
            np.broadcast_to(ts, (b, t_count)) if per_patient else ts, dtype=np.float64
        ),
        "d": np.ascontiguousarray(d, dtype=np.float64),
        "m": np.ascontiguousarray(m, dtype=np.uint8),
        "st": np.ascontiguousarray(st, dtype=np.float64),
        "sdy": np.ascontiguousarray(sdy, dtype=np.float64).reshape(b, k_count, solver.n_states),
        "smask": np.ascontiguousarray(smask, dtype=np.uint8).reshape(b, k_count, solver.n_constants),
        "sval": np.ascontiguousarray(sval, dtype=np.float64).reshape(b, k_count, solver.n_constants),
    }
    out = np.full((b, t_count, cols.size), np.nan)
    status = np.zeros(b, np.int64)
    steps = np.zeros(b, np.int64)
    ffi, lib = solver.ffi, solver.lib

    def ptr(a: np.ndarray | None, ctype: str) -> Any:
        return ffi.NULL if a is None else ffi.cast(ctype, ffi.from_buffer(a))

    n_save = 8 + solver.n_states + 2 * solver.n_constants

    def call(
        rows: dict[str, np.ndarray],
        into: tuple[np.ndarray, np.ndarray, np.ndarray],
        pause: np.ndarray | None = None,
        resume: np.ndarray | None = None,
        save: np.ndarray | None = None,
    ) -> None:
        o, s, k = into
        lib.itn_solve_from(
            o.shape[0], t_count, t_count if per_patient else 0, k_count,
            ptr(rows["ts"], "double *"), ptr(rows["d"], "double *"), ptr(rows["m"], "uint8_t *"),
            ptr(rows.get("y0"), "double *"), ptr(rows.get("c0"), "double *"),
            ptr(rows["st"], "double *"), ptr(rows["sdy"], "double *"), ptr(rows["smask"], "uint8_t *"),
            ptr(rows["sval"], "double *"), cols.size, ptr(cols, "int64_t *"),
            ctl.rtol, ctl.atol, ctl.max_steps,
            ptr(o, "double *"), ptr(s, "int64_t *"), ptr(k, "int64_t *"),
            ptr(pause, "double *"), ptr(resume, "double *"), ptr(save, "double *"),
        )  # fmt: skip

    def solve(lo: int, hi: int) -> None:
        if hi <= lo:
            return
        sl = slice(lo, hi)
        rows = {k: v[sl] for k, v in arrays.items() if k != "ts"}
        rows["ts"] = arrays["ts"][sl] if per_patient else arrays["ts"]
        if start is not None:
            rows["y0"], rows["c0"] = y0[sl], c0[sl]
        into = (out[sl], status[sl], steps[sl])
        group, until = (
            shared_prefixes(
                rows["ts"][:, 0] if per_patient else np.full(hi - lo, rows["ts"][0]),
                [rows[k] for k in ("d", "m", "y0", "c0") if k in rows] + ([rows["ts"]] if per_patient else []),
                (rows["st"], rows["sdy"], rows["smask"], rows["sval"]),
            )
            if share
            else (np.arange(hi - lo), np.full(hi - lo, np.inf))
        )  # fmt: skip
        if np.all(np.isinf(until)):
            call(rows, into)
            return
        # each group's first row up to its pause time, then every row from that saved lane
        first = np.flatnonzero(np.concatenate([[True], group[1:] != group[:-1]]))
        heads = {
            k: (v if k == "ts" and not per_patient else np.ascontiguousarray(v[first]))
            for k, v in rows.items()
        }
        g = first.size
        # (a head writes every output row before its pause, and only those are read)
        head_out = (np.empty((g, t_count, cols.size)), np.zeros(g, np.int64), np.zeros(g, np.int64))
        saved = np.zeros((g, n_save))
        call(heads, head_out, pause=np.ascontiguousarray(until), save=saved)
        resume = np.ascontiguousarray(saved[group])
        call(rows, into, resume=resume)
        written = resume[:, 5].astype(np.int64)  # output rows the head wrote before it paused
        for j in range(int(written.max(initial=0))):
            took = np.flatnonzero(written > j)
            into[0][took, j] = head_out[0][group[took], j]

    workers = max(1, threads or available_cores())
    chunk = max(1, chunk)
    if workers == 1 or b <= solver.lanes:  # one vector's work: no pool (a small batch is latency-bound)
        for lo in range(0, b, chunk):
            solve(lo, min(b, lo + chunk))
            if progress is not None:
                progress(min(b, lo + chunk), b)
        return out, status, steps
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for lo in range(0, b, chunk):
            hi = min(b, lo + chunk)
            bounds = np.linspace(lo, hi, min(workers, hi - lo) + 1).astype(int)
            list(pool.map(solve, bounds[:-1], bounds[1:]))
            if progress is not None:
                progress(hi, b)
    return out, status, steps


@lru_cache(maxsize=32)
def build_sensitivities(
    spec: ModelSpec, method: AbstractMethod, directions: int, *, lanes: int | None = None
) -> tuple[NativeSolver, SensitivitySpec]:
    """The native solver of ``spec`` with its forward sensitivity equations along ``directions``
    seeded directions (:func:`~immunetwin.engines.sensitivity.sensitivity_spec`), and that spec;
    ``lanes`` as :func:`build`."""
    check_supported(spec, method)
    sens = sensitivity_spec(spec, directions)
    return build(sens.spec, method, lanes=lanes), sens


def _no_stops(b: int, n: int, nc: int) -> tuple[np.ndarray, ...]:
    return (np.full((b, 1), np.inf), np.zeros((b, 1, n)), np.zeros((b, 1, nc), bool), np.zeros((b, 1, nc)))


def solve_values(
    solver: NativeSolver, ts: np.ndarray, y0: np.ndarray, c: np.ndarray, ctl: Controls
) -> tuple[np.ndarray, np.ndarray]:
    """Every quantity's value at the times (``observe``), from start values given: ``ts`` (B, T),
    ``y0`` (B, n), ``c`` (B, nc). Returns values (B, T, Q) and status (B,)."""
    out, status, _ = _run_from(solver, ts, y0, c, ctl, None)
    return out, status


def _run_from(
    solver: NativeSolver,
    ts: np.ndarray,
    y0: np.ndarray,
    c: np.ndarray,
    ctl: Controls,
    columns: tuple[int, ...] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`run_native` from given start values, no schedule, all rows in one chunk."""
    b = y0.shape[0]
    no_d, no_m = np.zeros((b, 1)), np.zeros((b, 1), np.uint8)
    stops = _no_stops(b, solver.n_states, solver.n_constants)
    return run_native(solver, ts, no_d, no_m, stops, ctl, b, None, columns, start=(y0, c))


def solve_sensitivities(
    solver: NativeSolver,
    sens: SensitivitySpec,
    ts: np.ndarray,
    y0: np.ndarray,
    c: np.ndarray,
    dy0: np.ndarray,
    dc: np.ndarray,
    ctl: Controls,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """States and their forward sensitivities at the times.

    Args:
        solver, sens: from :func:`build_sensitivities` (``D = sens.directions``).
        ts: output times (B, T).
        y0, c: start values (B, n) and constants (B, nc).
        dy0, dc: the seeds ``dy0/dtheta`` (B, n, D) and ``dc/dtheta`` (B, nc, D).

    Returns:
        states (B, T, n), sensitivities ``dy/dtheta`` (B, T, n, D) and status (B,).
    """
    b, n, nc, dirs = y0.shape[0], y0.shape[1], c.shape[1], sens.directions
    y_aug = np.concatenate([y0, np.swapaxes(dy0, 1, 2).reshape(b, dirs * n)], axis=1)
    c_aug = np.concatenate([c, np.swapaxes(dc, 1, 2).reshape(b, dirs * nc)], axis=1)
    out, status, _ = _run_from(solver, ts, y_aug, c_aug, ctl, sens.state_columns + sens.sensitivity_columns)
    t_count = out.shape[1]
    sensitivities = np.swapaxes(out[:, :, n:].reshape(b, t_count, dirs, n), 2, 3)
    return out[:, :, :n], sensitivities, status
