"""What a model is: an immutable, symbolic description of an ODE model with events.

This is the single representation every importer produces (SBML, Antimony via SBML) and every engine
consumes. Expressions are sympy; nothing here knows about JAX.

Vocabulary. Every SBML element with a value (parameter, compartment, species, species reference,
reaction) is a *quantity* with an id. Its *value* is what the id means in model maths (for a species
with ``hasOnlySubstanceUnits=false`` that is its concentration). At run time each quantity is one of

* a **constant** (fixed for the whole solve unless a schedule input switches it),
* a **state** (integrated: an ODE ``rate``; species in reactions are stored as *amounts*), or
* a **derived** quantity (an assignment rule, a reaction rate, or a species concentration computed as
  amount / compartment size), recomputed from states and constants at every time.

The value of every quantity at the start time is given by ``start``: an expression (initial
assignment, assignment rule, or declared value) over the *declared values* (symbols named
``declared_symbol(id)``) and other quantities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import sympy as sp

__all__ = [
    "TIME",
    "EventSpec",
    "ModelSpec",
    "QuantityInfo",
    "StateSpec",
    "amount_symbol",
    "declared_symbol",
]

#: The symbol for model time (days in immunetwin templates).
TIME = sp.Symbol("\u27e8time\u27e9", real=True)

QuantityKind = Literal[
    "parameter", "compartment", "species", "species_reference", "reaction", "local_parameter"
]


def declared_symbol(ident: str) -> sp.Symbol:
    """The symbol of the declared (file) value of quantity ``ident``: what ``parameters=`` overrides."""
    return sp.Symbol(f"\u27e8declared {ident}\u27e9", real=True)


def amount_symbol(ident: str) -> sp.Symbol:
    """The symbol of the stored amount of a species whose model value is a concentration."""
    return sp.Symbol(f"\u27e8amount {ident}\u27e9", real=True)


@dataclass(frozen=True)
class QuantityInfo:
    """Descriptive facts about one quantity (for outputs, messages and unit conversion)."""

    id: str
    kind: QuantityKind
    name: str = ""
    units: str = ""
    compartment: str | None = None  # species only
    only_substance_units: bool = False  # species only: its model value is an amount


@dataclass(frozen=True)
class StateSpec:
    """One integrated variable.

    Attributes:
        id: the quantity id.
        symbol: the symbol the integrator stores (``amount_symbol(id)`` for amount-stored
            species whose model value is a concentration, else ``Symbol(id)``).
        rate: d(symbol)/dt as an expression over symbols of quantities, states and ``TIME``.
        stored_as_amount: whether ``symbol`` is the amount of a species.
    """

    id: str
    symbol: sp.Symbol
    rate: sp.Expr
    stored_as_amount: bool = False


@dataclass(frozen=True)
class EventSpec:
    """An SBML event without delay: when ``trigger`` turns true, assignments are applied at once.

    Assignment values are computed from the state just before the event; targets are ids of states.
    """

    id: str
    trigger: sp.Basic
    initial_value: bool
    persistent: bool
    assignments: tuple[tuple[str, sp.Expr], ...]


@dataclass(frozen=True)
class ModelSpec:
    """An immutable ODE model with events, ready for an engine to compile.

    Attributes:
        id: model id.
        name: model name (or id).
        quantities: facts about every quantity, in file order.
        declared: declared (file) value of each quantity that has one; NaN where the file gives none.
        start: expression of the value at the start time for every quantity (topologically
            evaluable: see ``start_order``).
        start_order: quantity ids in an order in which ``start`` can be evaluated.
        constants: ids of quantities that stay constant during a solve.
        states: the integrated variables.
        derived: (id, expression) pairs, in evaluation order, recomputed at every time: assignment
            rules, reaction rates, and concentrations of amount-stored species.
        events: events without delays or priorities.
        time_units: units of time, if declared.
    """

    id: str
    name: str
    quantities: tuple[QuantityInfo, ...]
    declared: tuple[tuple[str, float], ...]
    start: tuple[tuple[str, sp.Expr], ...]
    start_order: tuple[str, ...]
    constants: tuple[str, ...]
    states: tuple[StateSpec, ...]
    derived: tuple[tuple[str, sp.Expr], ...]
    events: tuple[EventSpec, ...] = field(default=())
    time_units: str = ""

    @property
    def ids(self) -> tuple[str, ...]:
        """Every quantity id, in file order."""
        return tuple(q.id for q in self.quantities)

    @property
    def state_ids(self) -> tuple[str, ...]:
        """Ids of the integrated variables, in state-vector order."""
        return tuple(s.id for s in self.states)

    @property
    def derived_ids(self) -> tuple[str, ...]:
        """Ids of quantities recomputed at every time."""
        return tuple(i for i, _ in self.derived)

    def info(self, ident: str) -> QuantityInfo:
        """Facts about quantity ``ident`` (KeyError if unknown)."""
        for q in self.quantities:
            if q.id == ident:
                return q
        raise KeyError(ident)
