"""ModelSpec -> plain JAX functions, by generating straight-line Python source.

The generated functions work on one patient (unbatched vectors); batching is ``jax.vmap``. Every
symbol becomes a local variable (``q3``: value of quantity 3, ``a3``: its stored amount, ``d3``: its
declared value, ``t``: time), so ids that are Python keywords or clash with ``t`` are harmless.

Functions (all pure, jit-able):

* ``init(d, m, t) -> (y0, c)``: start values. ``d`` holds declared values (with user overrides written
  in), ``m`` marks quantities whose start value is ``d`` itself (user overrides win over initial
  assignments), ``t`` the start time.
* ``rhs(t, y, c) -> dy/dt`` over the stored states.
* ``observe(t, y, c) -> values`` of every quantity, in ``spec.quantities`` order.
* ``triggers(t, y, c) -> bool[E]`` and ``apply_events(t, y, c, fire) -> y``.
* ``jac(t, y, c) -> (values, df/dt)``: exact symbolic derivatives; ``values`` are the structurally
  non-zero entries of df/dy at the positions ``jac_pattern`` (None when sympy cannot differentiate
  the model; the engine then uses ``jax.jacfwd`` with a dense pattern).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import sympy as sp
from sympy.printing.numpy import JaxPrinter

from immunetwin.spec.model import TIME, ModelSpec, amount_symbol, declared_symbol

__all__ = ["GeneratedFunctions", "compile_expressions", "generate"]

_REWRITES: tuple[tuple[type, Callable[..., sp.Expr]], ...] = (
    (sp.sec, lambda x: 1 / sp.cos(x)),
    (sp.csc, lambda x: 1 / sp.sin(x)),
    (sp.cot, lambda x: 1 / sp.tan(x)),
    (sp.sech, lambda x: 1 / sp.cosh(x)),
    (sp.csch, lambda x: 1 / sp.sinh(x)),
    (sp.coth, lambda x: 1 / sp.tanh(x)),
    (sp.asec, lambda x: sp.acos(1 / x)),
    (sp.acsc, lambda x: sp.asin(1 / x)),
    (sp.acot, lambda x: sp.atan(1 / x)),
    (sp.asech, lambda x: sp.acosh(1 / x)),
    (sp.acsch, lambda x: sp.asinh(1 / x)),
    (sp.acoth, lambda x: sp.atanh(1 / x)),
    (sp.factorial, lambda x: sp.gamma(x + 1)),
    (sp.Implies, lambda a, b: sp.Or(sp.Not(a), b)),
)


class _Printer(JaxPrinter):
    """JAX printer with the few SBML functions sympy's printer lacks."""

    def _print_gamma(self, expr: sp.Expr) -> str:
        return f"jnp.exp(jax.scipy.special.gammaln({self._print(expr.args[0])}))"

    def _print_Mod(self, expr: sp.Expr) -> str:  # MathML rem: sign of the dividend
        a, b = (self._print(x) for x in expr.args)
        return f"jnp.fmod({a}, {b})"

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        out = "jnp.nan"
        for value, cond in reversed(expr.args):
            c = self._print(cond)
            v = self._print(value)
            out = v if c == "True" else f"jnp.where({c}, {v}, {out})"
        return out

    def _print_BooleanTrue(self, expr: sp.Basic) -> str:
        return "True"

    def _print_BooleanFalse(self, expr: sp.Basic) -> str:
        return "False"


@dataclass(frozen=True, eq=False)
class GeneratedFunctions:
    """The compiled-from-source functions and the source they came from.

    Equality and hash are those of the source text: the same model read twice is the same static
    argument to ``jax.jit``, so it is traced and compiled once per process (and, with the persistent
    cache, once per machine).
    """

    init: Callable[..., Any]
    rhs: Callable[..., Any]
    observe: Callable[..., Any]
    triggers: Callable[..., Any]
    apply_events: Callable[..., Any]
    jac: Callable[..., Any] | None
    jac_pattern: tuple[tuple[int, int], ...] | None
    source: str

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GeneratedFunctions) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)


def _rewrite(expr: sp.Basic) -> sp.Basic:
    if expr.has(sp.log):  # sbmlmath keeps log(x, base) unevaluated
        expr = expr.replace(
            lambda e: isinstance(e, sp.log) and len(e.args) == 2,
            lambda e: sp.log(e.args[0]) / sp.log(e.args[1]),
        )
    for fn, repl in _REWRITES:
        if expr.has(fn):
            expr = expr.replace(fn, repl)
    return expr


class _Names:
    """Symbol -> local variable name, and expression -> source text."""

    def __init__(self, spec: ModelSpec, printer: Any = None) -> None:
        self.index = {q.id: i for i, q in enumerate(spec.quantities)}
        by_name: dict[str, sp.Symbol] = {TIME.name: sp.Symbol("t")}
        for qid, i in self.index.items():
            by_name[qid] = sp.Symbol(f"q{i}")
            by_name[amount_symbol(qid).name] = sp.Symbol(f"a{i}")
            by_name[declared_symbol(qid).name] = sp.Symbol(f"d{i}")
        self.by_name = by_name
        self.printer = printer or _Printer({"fully_qualified_modules": True, "inline": True})

    def q(self, qid: str) -> str:
        return f"q{self.index[qid]}"

    def stored(self, spec_state: Any) -> str:
        i = self.index[spec_state.id]
        return f"a{i}" if spec_state.stored_as_amount else f"q{i}"

    def local(self, expr: sp.Basic) -> sp.Basic:
        """``expr`` over local-variable symbols (q3, a3, d3, t)."""
        expr = _rewrite(sp.sympify(expr))
        unknown = sorted(s.name for s in expr.free_symbols if s.name not in self.by_name)
        if unknown:
            raise KeyError(", ".join(unknown))
        return expr.xreplace({s: self.by_name[s.name] for s in expr.free_symbols})

    def code(self, expr: sp.Basic) -> str:
        return self.print_local(self.local(expr))

    def print_local(self, expr: sp.Basic) -> str:
        return self.printer.doprint(expr).replace("jax.numpy.", "jnp.")


def _prelude(spec: ModelSpec, names: _Names) -> list[str]:
    """Lines that bind every quantity's value from (t, y, c)."""
    lines = [
        _unpack([names.stored(st) for st in spec.states], "y"),
        _unpack([names.q(cid) for cid in spec.constants], "c"),
    ]
    lines = [x for x in lines if x]
    for qid, expr in spec.derived:
        lines.append(f"    {names.q(qid)} = {names.code(expr)}")
    return lines


def _unpack(targets: list[str], vector: str) -> str:
    """One line binding ``targets`` to the entries of ``vector`` (empty for none). One ``unstack``
    instead of an index per entry: tracing a model's function under ``vmap`` then costs 0.04 ms per
    entry instead of 0.55 ms (measured: ``benchmarks/README.md``), and the function is traced several
    times per program."""
    return f"    {', '.join(targets)}, = jnp.unstack({vector})" if targets else ""


def _stack(items: list[str]) -> str:
    if not items:
        return "jnp.zeros((0,), dtype=jnp.float64)"
    return "jnp.stack([" + ", ".join(f"jnp.asarray({x}, dtype=jnp.float64)" for x in items) + "])"


@dataclass(frozen=True)
class JacobianTerms:
    """Exact derivatives of a model's right-hand side, as expressions over local-variable symbols.

    Attributes:
        assignments: ``(g_k, expression)`` intermediate partial derivatives, in evaluation order (after
            the prelude that binds states, constants and derived quantities).
        pattern: the structurally non-zero entries (row, column) of df/dy.
        values: each entry's value (a symbol ``g_k``), in ``pattern`` order.
        dfdt: df_i/dt for each state (``g_k`` or 0).
    """

    assignments: tuple[tuple[str, sp.Basic], ...]
    pattern: tuple[tuple[int, int], ...]
    values: tuple[sp.Basic, ...]
    dfdt: tuple[sp.Basic, ...]


def jacobian_terms(spec: ModelSpec, names: _Names) -> JacobianTerms | None:
    """df/dy and df/dt by forward accumulation of exact derivatives through the derived quantities
    (chain rule over the rule DAG), keeping only non-zero entries.

    Returns None when sympy cannot differentiate an expression (then the engine uses ``jax.jacfwd``).
    """
    n = len(spec.states)
    grads: dict[str, dict[int, sp.Basic]] = {
        names.stored(st): {k: sp.Integer(1)} for k, st in enumerate(spec.states)
    }
    grads["t"] = {n: sp.Integer(1)}
    lines: list[tuple[str, sp.Basic]] = []
    counter = [0]

    def accumulate(expr: sp.Basic) -> dict[int, sp.Basic]:
        out: dict[int, sp.Basic] = {}
        for sym in sorted(expr.free_symbols, key=lambda x: x.name):  # sorted: same source in every process
            if sym.name not in grads:
                continue
            # powsimp turns sympy's d(x^h)/dx = h x^h / x (0/0 at x = 0) into h x^(h-1)
            partial = sp.powsimp(sp.diff(expr, sym))
            if partial == 0:
                continue
            if partial.has(sp.Derivative, sp.Subs):
                raise ValueError("not differentiable symbolically")
            for col, g in grads[sym.name].items():
                out[col] = out.get(col, sp.Integer(0)) + partial * g
        return out

    def emit(entries: dict[int, sp.Basic]) -> dict[int, sp.Basic]:
        named: dict[int, sp.Basic] = {}
        for col, e in entries.items():
            if e == 0:
                continue
            counter[0] += 1
            var = sp.Symbol(f"g{counter[0]}")
            lines.append((var.name, e))
            named[col] = var
        return named

    try:
        for qid, expr in spec.derived:
            local = names.local(expr)
            entries = accumulate(local)
            if entries:
                grads[names.q(qid)] = emit(entries)
        rows = [emit(accumulate(names.local(st.rate))) for st in spec.states]
    except (ValueError, TypeError, NotImplementedError):
        return None
    pattern = tuple((r, col) for r in range(n) for col in sorted(rows[r]) if col < n)
    return JacobianTerms(
        assignments=tuple(lines),
        pattern=pattern,
        values=tuple(rows[r][col] for r, col in pattern),
        dfdt=tuple(rows[r].get(n, sp.Float(0.0)) for r in range(n)),
    )


def _jacobian_source(spec: ModelSpec, names: _Names, pre: list[str]) -> list[str] | None:
    """``jac(t, y, c) -> (J, df/dt)`` (:func:`jacobian_terms` as JAX source)."""
    terms = jacobian_terms(spec, names)
    if terms is None:
        return None
    out = ["def jac(t, y, c):", *pre]
    out += [f"    {var} = {names.print_local(e)}" for var, e in terms.assignments]
    out.append("    vals = " + _stack([str(v) for v in terms.values]))
    out.append("    dt = " + _stack([str(v) for v in terms.dfdt]))
    out.append("    return vals, dt")
    out.append(f"jac_pattern = {terms.pattern!r}")
    return out


def _source(spec: ModelSpec) -> str:
    names = _Names(spec)
    pre = _prelude(spec, names)
    out: list[str] = []

    # init
    out.append("def init(d, m, t):")
    # d and m have one row per quantity, in the order of names.index (0, 1, ...)
    out.append(_unpack([f"d{i}" for i in range(len(names.index))], "d"))
    out.append(_unpack([f"m{i}" for i in range(len(names.index))], "m"))
    start = dict(spec.start)
    for qid in spec.start_order:
        i = names.index[qid]
        out.append(f"    q{i} = jnp.where(m{i}, d{i}, {names.code(start[qid])})")
    y0 = []
    for st in spec.states:
        info = spec.info(st.id)
        if st.stored_as_amount and not info.only_substance_units and info.compartment:
            y0.append(f"{names.q(st.id)} * {names.q(info.compartment)}")
        else:
            y0.append(names.q(st.id))
    out.append(f"    return {_stack(y0)}, {_stack([names.q(c) for c in spec.constants])}")
    out.append("")

    # rhs
    out.append("def rhs(t, y, c):")
    out.extend(pre)
    out.append(f"    return {_stack([names.code(st.rate) for st in spec.states])}")
    out.append("")

    # observe
    # observe(t, y, c, columns=None): every quantity, or only those at ``columns`` (a tuple of
    # indices): the others are then never computed (XLA keeps them all behind a gather)
    out.append("def observe(t, y, c, columns=None):")
    out.extend(pre)
    out.append(f"    values = ({''.join(names.q(q.id) + ', ' for q in spec.quantities)})")
    out.append("    picked = values if columns is None else [values[i] for i in columns]")
    out.append("    if not picked:")
    out.append("        return jnp.zeros((0,), dtype=jnp.float64)")
    out.append("    return jnp.stack([jnp.asarray(v, dtype=jnp.float64) for v in picked])")
    out.append("")

    # triggers
    out.append("def triggers(t, y, c):")
    out.extend(pre)
    trig = [f"jnp.asarray({names.code(e.trigger)}, dtype=bool)" for e in spec.events]
    out.append(
        "    return jnp.stack([" + ", ".join(trig) + "])" if trig else "    return jnp.zeros((0,), bool)"
    )
    out.append("")

    # events
    out.append("def apply_events(t, y, c, fire):")
    out.extend(pre)
    new: dict[str, str] = {}
    for e_idx, ev in enumerate(spec.events):
        for a_idx, (target, expr) in enumerate(ev.assignments):
            var = f"e{e_idx}_{a_idx}"
            out.append(f"    {var} = {names.code(expr)}")
            prev = new.get(target, names.q(target))
            new[target] = f"n_{names.index[target]}_{e_idx}"
            out.append(f"    {new[target]} = jnp.where(fire[{e_idx}], {var}, {prev})")
    y_new = []
    for st in spec.states:
        if st.id not in new:
            y_new.append(names.stored(st))
            continue
        info = spec.info(st.id)
        value = new[st.id]
        if st.stored_as_amount and not info.only_substance_units and info.compartment:
            # the concentration is assigned in the compartment as it was before the event; a
            # simultaneous change of the compartment then keeps that amount (SBML Test Suite 01779)
            value = f"{value} * {names.q(info.compartment)}"
        y_new.append(value)
    out.append(f"    return {_stack(y_new)}")
    out.append("")
    jac = _jacobian_source(spec, names, pre)
    out.extend(jac if jac is not None else ["jac = None", "jac_pattern = None"])
    return "\n".join(out) + "\n"


def generate(spec: ModelSpec) -> GeneratedFunctions:
    """Generate the model's JAX functions (see module docstring)."""
    source = _source(spec)
    namespace: dict[str, Any] = {"jnp": jnp, "jax": jax, "nan": jnp.nan, "functools": functools}
    exec(compile(source, f"<immunetwin model {spec.id}>", "exec"), namespace)
    return GeneratedFunctions(
        init=namespace["init"],
        rhs=namespace["rhs"],
        observe=namespace["observe"],
        triggers=namespace["triggers"],
        apply_events=namespace["apply_events"],
        jac=namespace["jac"],
        jac_pattern=namespace["jac_pattern"],
        source=source,
    )


def quantity_index(spec: ModelSpec) -> Mapping[str, int]:
    """Position of each quantity id in ``observe``'s output and in the declared-value vector."""
    return {q.id: i for i, q in enumerate(spec.quantities)}


def compile_expressions(
    name: str, args: tuple[str, ...], bindings: Mapping[str, str], exprs: tuple[sp.Basic, ...]
) -> tuple[Callable[..., Any], str]:
    """A pure JAX function ``name(*args) -> stack(exprs)`` and its source.

    ``bindings`` maps each free symbol's name to a source snippet over ``args`` (e.g. ``"v[3]"``); a
    symbol without a binding raises ``KeyError`` naming it. Used for observables and noise formulas.
    """
    printer = _Printer({"fully_qualified_modules": True, "inline": True})
    used: dict[str, str] = {}
    local: list[sp.Basic] = []
    for expr in exprs:
        expr = _rewrite(sp.sympify(expr))
        unknown = sorted(s.name for s in expr.free_symbols if s.name not in bindings)
        if unknown:
            raise KeyError(", ".join(unknown))
        repl = {}
        for s in expr.free_symbols:
            var = used.setdefault(s.name, f"x{len(used)}")
            repl[s] = sp.Symbol(var)
        local.append(expr.xreplace(repl))
    lines = [f"def {name}({', '.join(args)}):"]
    lines += [f"    {var} = {bindings[sym]}" for sym, var in used.items()]
    body = [printer.doprint(e).replace("jax.numpy.", "jnp.") for e in local]
    lines.append(f"    return {_stack(body)}")
    source = "\n".join(lines) + "\n"
    namespace: dict[str, Any] = {"jnp": jnp, "jax": jax, "nan": jnp.nan, "functools": functools}
    exec(compile(source, f"<immunetwin {name}>", "exec"), namespace)
    return namespace[name], source
