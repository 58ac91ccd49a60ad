"""A model's forward sensitivity equations, written as a bigger model.

For ``dy/dt = f(t, y, c)`` with ``y(t0) = y0(theta)`` and constants ``c(theta)``, the sensitivities
``S_d = dy/dtheta_d`` along ``D`` directions obey the variational equations

.. math::

    \\frac{dS_d}{dt} = \\frac{\\partial f}{\\partial y} S_d + \\frac{\\partial f}{\\partial c}\\,\\dot c_d,
    \\qquad S_d(t_0) = \\frac{\\partial y_0}{\\partial \\theta_d},
    \\qquad \\dot c_d = \\frac{\\partial c}{\\partial \\theta_d}

(Hairer, Nørsett & Wanner 1993, *Solving ODEs I*, section I.14; the forward sensitivities of
CVODES, Serban & Hindmarsh 2005, ASME IDETC 2005-85597). :func:`sensitivity_spec` writes them as
extra states of an augmented :class:`~immunetwin.spec.model.ModelSpec`: ``D * n`` sensitivity states,
``D * nc`` tangent constants ``dc`` (the seeds ``c_dot``, given per solve) and, for every derived
quantity ``q``, its tangents ``dq_d = sum_s (dq/ds) ds_d`` (forward accumulation over the rule DAG).
Any engine then solves the model and its sensitivities together:

* the Rosenbrock methods get the *exact* Jacobian of the augmented system (second derivatives of
  ``f`` in its lower blocks, written by :func:`~immunetwin.engines.codegen.jacobian_terms`), so
  Rodas5P keeps its order for the sensitivities (a Rosenbrock method with only ``df/dy`` on the
  block diagonal would be a W-method of lower order);
* the error control includes the sensitivities (as CVODES with ``errconS``), so gradients are as
  accurate as the states;
* the augmented Jacobian is block lower triangular with ``D + 1`` copies of ``df/dy`` on its
  diagonal, so its sparse LU keeps the blocks (no fill-in between directions).

The seeds make ``D`` the number of estimated parameters, not the number of model inputs: the
caller (the likelihood) computes ``dy0/dtheta`` and ``dc/dtheta`` by automatic differentiation of the
cheap start-value map and passes them in.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from immunetwin.errors import InputError
from immunetwin.spec.model import ModelSpec, QuantityInfo, StateSpec

__all__ = ["SensitivitySpec", "sensitivity_spec"]


@dataclass(frozen=True)
class SensitivitySpec:
    """A model augmented by its forward sensitivity equations (see the module docstring).

    Attributes:
        spec: the augmented model: states ``y`` then ``S_0 .. S_{D-1}`` (direction-major), constants
            ``c`` then the seeds ``dc_0 .. dc_{D-1}`` (direction-major).
        base: the original model.
        directions: ``D``.
        state_columns: quantity indices (in ``spec.quantities``) of the stored states ``y`` (n).
        sensitivity_columns: quantity indices of ``S``, direction-major (``D * n``).
    """

    spec: ModelSpec
    base: ModelSpec
    directions: int
    state_columns: tuple[int, ...]
    sensitivity_columns: tuple[int, ...]


def _sens_id(d: int, state: str) -> str:
    return f"\u27e8dy {d} {state}\u27e9"


def _seed_id(d: int, constant: str) -> str:
    return f"\u27e8dc {d} {constant}\u27e9"


def _tangent_id(d: int, qid: str) -> str:
    return f"\u27e8dq {d} {qid}\u27e9"


def _stored_id(state: str) -> str:
    return f"\u27e8stored {state}\u27e9"


def _tangent(expr: sp.Basic, tangents: dict[str, sp.Symbol], where: str) -> sp.Expr:
    """``sum_s (d expr / d s) * tangents[s]`` over the free symbols of ``expr`` that have a tangent."""
    total: sp.Expr = sp.Integer(0)
    for sym in sorted(expr.free_symbols, key=lambda s: s.name):  # sorted: the same source every time
        tan = tangents.get(sym.name)
        if tan is None:
            continue
        partial = sp.powsimp(sp.diff(expr, sym))  # as jacobian_terms: h x^(h-1), not h x^h / x
        if partial == 0:
            continue
        if partial.has(sp.Derivative, sp.Subs):
            raise InputError(
                f"forward sensitivities need the derivative of {where} with respect to '{sym.name}', "
                "which sympy cannot write"
            )
        total = total + partial * tan
    return total


def sensitivity_spec(spec: ModelSpec, directions: int) -> SensitivitySpec:
    """``spec`` with its forward sensitivity equations along ``directions`` seeded directions.

    Raises:
        InputError: the model has events (their sensitivities jump at each event: not written), or
            an expression sympy cannot differentiate, or ``directions < 1``.
    """
    if directions < 1:
        raise InputError(f"forward sensitivities need at least one direction, got {directions}")
    if spec.events:
        raise InputError(
            f"forward sensitivities of model '{spec.id}' are not written for its {len(spec.events)} events"
        )
    new_info: list[QuantityInfo] = []
    states: list[StateSpec] = list(spec.states)
    derived: list[tuple[str, sp.Expr]] = list(spec.derived)
    seeds = [[_seed_id(d, cid) for cid in spec.constants] for d in range(directions)]
    tangents: list[dict[str, sp.Symbol]] = []
    for d in range(directions):
        tan = {st.symbol.name: sp.Symbol(_sens_id(d, st.id), real=True) for st in spec.states}
        tan |= {cid: sp.Symbol(seeds[d][m], real=True) for m, cid in enumerate(spec.constants)}
        tangents.append(tan)
    for qid, expr in spec.derived:  # tangents of derived quantities, in evaluation order
        for d in range(directions):
            t = _tangent(expr, tangents[d], f"'{qid}'")
            if t != 0:
                tid = _tangent_id(d, qid)
                derived.append((tid, t))
                new_info.append(QuantityInfo(tid, "parameter"))
                tangents[d][qid] = sp.Symbol(tid, real=True)
    for d in range(directions):
        for st in spec.states:
            sid = _sens_id(d, st.id)
            rate = _tangent(st.rate, tangents[d], f"the rate of '{st.id}'")
            states.append(StateSpec(sid, sp.Symbol(sid, real=True), rate))
            new_info.append(QuantityInfo(sid, "parameter"))
    new_info += [QuantityInfo(s, "parameter") for row in seeds for s in row]
    stored = [(_stored_id(st.id), st.symbol) for st in spec.states]
    derived += stored
    new_info += [QuantityInfo(qid, "parameter") for qid, _ in stored]
    new_ids = tuple(q.id for q in new_info)
    augmented = ModelSpec(
        id=spec.id,
        name=spec.name,
        quantities=spec.quantities + tuple(new_info),
        declared=spec.declared,
        # y0 and c are given to the solve; these start values are never read
        start=spec.start + tuple((qid, sp.Float(0.0)) for qid in new_ids),
        start_order=spec.start_order + new_ids,
        constants=spec.constants + tuple(s for row in seeds for s in row),
        states=tuple(states),
        derived=tuple(derived),
        events=(),
        time_units=spec.time_units,
    )
    index = {q.id: i for i, q in enumerate(augmented.quantities)}
    return SensitivitySpec(
        spec=augmented,
        base=spec,
        directions=directions,
        state_columns=tuple(index[_stored_id(st.id)] for st in spec.states),
        sensitivity_columns=tuple(index[_sens_id(d, st.id)] for d in range(directions) for st in spec.states),
    )
