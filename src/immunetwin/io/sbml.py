"""SBML Level 2/3 core -> :class:`~immunetwin.spec.model.ModelSpec`.

Reading is done by ``python-libsbml``; MathML becomes sympy through ``sbmlmath``; function definitions
are expanded by libsbml's own converter. Semantics follow the SBML Level 3 Version 2 core
specification (Hucka et al. 2019, J Integr Bioinform 16:20190021), section 4 and section 7
("mathematical interpretation"):

* species in reactions are stored as amounts; the model value of a species with
  ``hasOnlySubstanceUnits=false`` is ``amount / compartment size``;
* ``d amount/dt = conversion factor * sum(stoichiometry * kinetic law)``;
* a rate rule on a species defines d(value)/dt of its model value;
* initial assignments and assignment rules hold at the start time; assignment rules hold always;
* events without delays fire when their trigger turns from false to true; all assignments of the
  events that fire together use the values from before they fire.

Constructs the engine cannot simulate correctly are refused with
:class:`~immunetwin.errors.UnsupportedConstructError` naming the construct and the element id:
algebraic rules, fast reactions, event delays and priorities, ``delay`` and ``rateOf`` csymbols, and
SBML packages (comp, fbc, ...).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import libsbml
import sympy as sp

from immunetwin.errors import MalformedModelError, UnsupportedConstructError
from immunetwin.spec.model import (
    TIME,
    EventSpec,
    ModelSpec,
    QuantityInfo,
    StateSpec,
    amount_symbol,
    declared_symbol,
)

__all__ = ["spec_from_sbml"]

#: Packages that only draw the model: they change nothing in its maths, so they are ignored.
_GRAPHICAL = frozenset({"layout", "render"})

#: Avogadro's constant as the SBML L3 specification fixes it (L3V2 section 3.4.6).
AVOGADRO = 6.02214179e23


def spec_from_sbml(text: str, *, source: str = "<sbml>") -> ModelSpec:
    """Read SBML text into an immutable model spec.

    Args:
        text: the SBML document.
        source: a name for messages (file path).

    Raises:
        MalformedModelError: the text is not valid SBML (the first error, with its line).
        UnsupportedConstructError: valid SBML that the engine refuses (construct and element id).
    """
    doc = _read_document(text, source)
    model = doc.getModel()
    _refuse_unsupported(doc, model)
    return _Builder(model, source).build()


def _read_document(text: str, source: str) -> libsbml.SBMLDocument:
    doc = libsbml.readSBMLFromString(text)
    errors = [
        doc.getError(i)
        for i in range(doc.getNumErrors())
        if doc.getError(i).getSeverity() >= libsbml.LIBSBML_SEV_ERROR
    ]
    if errors:
        err = errors[0]
        msg = " ".join(err.getMessage().split())
        raise MalformedModelError(f"{source}: line {err.getLine()}: {msg}")
    if doc.getModel() is None:
        raise MalformedModelError(f"{source}: the SBML document has no <model>")
    props = libsbml.ConversionProperties()
    props.addOption("expandFunctionDefinitions", True)
    if doc.getModel().getNumFunctionDefinitions() and doc.convert(props) != libsbml.LIBSBML_OPERATION_SUCCESS:
        raise MalformedModelError(f"{source}: function definitions could not be expanded")
    return doc


def _refuse_unsupported(doc: libsbml.SBMLDocument, model: libsbml.Model) -> None:
    for i in range(doc.getNumPlugins()):
        plugin = doc.getPlugin(i)
        prefix = plugin.getPrefix() if plugin is not None else ""
        if (
            prefix
            and doc.isPackageEnabled(plugin.getPackageName())
            and plugin.getPackageName() not in _GRAPHICAL
        ):
            raise UnsupportedConstructError(
                f"SBML package '{plugin.getPackageName()}'", model.getId() or "<model>"
            )
    for i in range(model.getNumRules()):
        rule = model.getRule(i)
        if rule.isAlgebraic():
            raise UnsupportedConstructError("algebraic rule", rule.getMetaId() or f"rule #{i + 1}")
    for i in range(model.getNumReactions()):
        r = model.getReaction(i)
        if r.isSetFast() and r.getFast():
            raise UnsupportedConstructError("fast reaction", r.getId())
    for i in range(model.getNumEvents()):
        e = model.getEvent(i)
        eid = e.getId() or f"event #{i + 1}"
        if e.isSetDelay():
            raise UnsupportedConstructError("event delay", eid)
        if e.isSetPriority():
            raise UnsupportedConstructError("event priority", eid)
        trig = e.getTrigger()
        persistent = trig is None or not trig.isSetPersistent() or trig.getPersistent()
        if not persistent and model.getNumEvents() > 1:
            # simultaneous events run one after another and may cancel a non-persistent one; the
            # engine fires simultaneous events together (SBML Test Suite 00953)
            raise UnsupportedConstructError("non-persistent event among several events", eid)


def _element_id(obj: libsbml.SBase) -> str:
    for getter in ("getId", "getVariable", "getSymbol", "getMetaId"):
        fn = getattr(obj, getter, None)
        if fn is not None and fn():
            return fn()
    parent = obj.getParentSBMLObject()
    return _element_id(parent) if parent is not None else "<model>"


def _math(obj: libsbml.SBase) -> sp.Basic:
    """MathML of ``obj`` as sympy, with time/avogadro replaced and delay/rateOf refused."""
    from sbmlmath import sbml_math_to_sympy  # imported here: sbmlmath builds a pint registry at import (~2 s)

    ast = obj.getMath()
    if ast is None:
        raise MalformedModelError(f"element '{_element_id(obj)}' has no math")
    try:
        # evaluate=True: sbmlmath's unevaluated mode mis-reads numbers in boolean contexts
        # (e.g. `0 || (1 - 1)` became true) and cannot read a piecewise inside a condition
        expr = sbml_math_to_sympy(ast, evaluate=True)
    except Exception as exc:  # sbmlmath raises plain exceptions on MathML it cannot read
        detail = " ".join(str(exc).split())[:120]
        raise UnsupportedConstructError("MathML not readable by sbmlmath", _element_id(obj), detail) from exc
    return _clean_math(expr, _element_id(obj))


def _clean_math(expr: sp.Basic, where: str) -> sp.Basic:
    from sbmlmath.cfunction import CFunction
    from sbmlmath.csymbol import CSymbol

    for fn in expr.atoms(CFunction, sp.Function):
        name = str(getattr(fn, "func", fn)).lower()
        if "delay" in name:
            raise UnsupportedConstructError("delay csymbol", where)
        if "rateof" in name or "rate_of" in name:
            raise UnsupportedConstructError("rateOf csymbol", where)
    replacements: dict[sp.Basic, sp.Basic] = {}
    for sym in expr.atoms(CSymbol):
        url = str(getattr(sym, "definition_url", ""))
        if url.endswith("time"):
            replacements[sym] = TIME
        elif url.endswith("avogadro"):
            replacements[sym] = sp.Float(AVOGADRO)
        else:
            raise UnsupportedConstructError(f"csymbol {url}", where)
    return expr.xreplace(replacements) if replacements else expr


class _Builder:
    """Turns one libsbml Model into a ModelSpec (used once, then dropped)."""

    def __init__(self, model: libsbml.Model, source: str) -> None:
        self.m = model
        self.source = source
        self.info: dict[str, QuantityInfo] = {}
        self.declared: dict[str, float] = {}
        self.constant_flag: dict[str, bool] = {}
        self.assignment_rules: dict[str, sp.Basic] = {}
        self.rate_rules: dict[str, sp.Basic] = {}
        self.initial_assignments: dict[str, sp.Basic] = {}
        self.local_subs: dict[str, dict[sp.Symbol, sp.Symbol]] = {}

    # -- collection -------------------------------------------------------------------------
    def build(self) -> ModelSpec:
        self._collect_quantities()
        self._collect_rules()
        event_targets = self._event_targets()
        reaction_terms = self._reaction_terms()
        states = self._states(reaction_terms, event_targets)
        state_ids = {s.id for s in states}
        derived = self._derived(states)
        constants = tuple(
            q for q in self.info if q not in state_ids and q not in dict(derived) and q not in self.rate_rules
        )
        start = self._start_expressions(derived)
        order = _topological(start, self.source, what="initial values")
        events = self._events()
        return ModelSpec(
            id=self.m.getId() or "model",
            name=self.m.getName() or self.m.getId() or "model",
            quantities=tuple(self.info.values()),
            declared=tuple(self.declared.items()),
            start=tuple(start.items()),
            start_order=order,
            constants=constants,
            states=tuple(states),
            derived=tuple(derived),
            events=events,
            time_units=self.m.getTimeUnits() if self.m.isSetTimeUnits() else "",
        )

    def _add(self, info: QuantityInfo, value: float, constant: bool) -> None:
        if info.id in self.info:
            raise MalformedModelError(f"{self.source}: id '{info.id}' is defined twice")
        self.info[info.id] = info
        self.declared[info.id] = value
        self.constant_flag[info.id] = constant

    def _collect_quantities(self) -> None:
        m = self.m
        for c in m.getListOfCompartments():
            size = c.getSize() if c.isSetSize() else math.nan
            self._add(
                QuantityInfo(c.getId(), "compartment", c.getName(), c.getUnits()), size, c.getConstant()
            )
        for p in m.getListOfParameters():
            value = p.getValue() if p.isSetValue() else math.nan
            self._add(QuantityInfo(p.getId(), "parameter", p.getName(), p.getUnits()), value, p.getConstant())
        for s in m.getListOfSpecies():
            if s.isSetInitialAmount():
                value = s.getInitialAmount()
            elif s.isSetInitialConcentration():
                value = s.getInitialConcentration()
            else:
                value = math.nan
            comp = m.getCompartment(s.getCompartment())
            # in a 0-dimensional compartment a species' value is its amount (L3V2 section 4.6.5)
            zero_d = comp is not None and comp.isSetSpatialDimensions() and comp.getSpatialDimensions() == 0
            info = QuantityInfo(
                s.getId(),
                "species",
                s.getName(),
                s.getSubstanceUnits(),
                s.getCompartment(),
                s.getHasOnlySubstanceUnits() or zero_d,
            )
            self._add(info, value, s.getConstant())
        for r in m.getListOfReactions():
            self._add(QuantityInfo(r.getId(), "reaction", r.getName()), math.nan, False)
            for ref in _references(r):
                if ref.getId():
                    stoich = ref.getStoichiometry() if ref.isSetStoichiometry() else math.nan
                    const = ref.getConstant() if ref.isSetConstant() else False
                    self._add(QuantityInfo(ref.getId(), "species_reference", ref.getName()), stoich, const)
            self._collect_local_parameters(r)

    def _collect_local_parameters(self, r: libsbml.Reaction) -> None:
        law = r.getKineticLaw()
        if law is None:
            return
        subs: dict[sp.Symbol, sp.Symbol] = {}
        locals_ = list(law.getListOfLocalParameters()) + list(law.getListOfParameters())
        for p in locals_:
            uid = f"{r.getId()}.{p.getId()}"
            if uid in self.info:
                continue
            self._add(QuantityInfo(uid, "local_parameter", p.getName(), p.getUnits()), p.getValue(), True)
            subs[sp.Symbol(p.getId())] = sp.Symbol(uid)
        self.local_subs[r.getId()] = subs

    def _collect_rules(self) -> None:
        for i in range(self.m.getNumRules()):
            rule = self.m.getRule(i)
            var = rule.getVariable()
            if not rule.isSetMath():  # L3V2: a rule without maths has no effect
                continue
            self._require_known(var, "rule variable")
            expr = self._numeric(_math(rule))
            if rule.isAssignment():
                self.assignment_rules[var] = expr
            else:
                self.rate_rules[var] = expr
        for ia in self.m.getListOfInitialAssignments():
            var = ia.getSymbol()
            if not ia.isSetMath():  # L3V2: an initial assignment without maths has no effect
                continue
            self._require_known(var, "initial assignment symbol")
            self.initial_assignments[var] = self._numeric(_math(ia))

    def _require_known(self, ident: str, what: str) -> None:
        if ident not in self.info:
            raise MalformedModelError(f"{self.source}: {what} '{ident}' is not defined in the model")

    @staticmethod
    def _numeric(expr: sp.Basic) -> sp.Basic:
        """Booleans used as numbers (SBML allows this) become 1/0.

        A sympy Symbol is both an Expr and a Boolean: only true Booleans (relations, and/or/not,
        true/false) are converted.
        """
        if isinstance(expr, sp.Expr):
            return expr
        if isinstance(expr, (sp.logic.boolalg.Boolean, sp.core.relational.Relational)):
            return sp.Piecewise((sp.Integer(1), expr), (sp.Integer(0), True))
        return expr

    def _event_targets(self) -> set[str]:
        targets = set()
        for e in self.m.getListOfEvents():
            if e.getTrigger() is None or not e.getTrigger().isSetMath():
                continue
            for ea in e.getListOfEventAssignments():
                var = ea.getVariable()
                self._require_known(var, f"event '{e.getId()}' assignment target")
                if ea.isSetMath():
                    targets.add(var)
        return targets

    # -- reactions and states ---------------------------------------------------------------------
    def _stoichiometry(self, ref: libsbml.SpeciesReference) -> sp.Expr:
        if ref.isSetStoichiometryMath() and ref.getStoichiometryMath().isSetMath():  # SBML Level 2
            return self._numeric(_math(ref.getStoichiometryMath()))
        if ref.getId():
            return sp.Symbol(ref.getId())
        if ref.isSetStoichiometry():
            return (
                sp.Float(ref.getStoichiometry())
                if ref.getStoichiometry() % 1
                else sp.Integer(int(ref.getStoichiometry()))
            )
        return sp.Integer(1)

    def _reaction_terms(self) -> dict[str, list[sp.Expr]]:
        """species id -> list of stoichiometry * rate terms (in amount per time)."""
        terms: dict[str, list[sp.Expr]] = {}
        for r in self.m.getListOfReactions():
            if r.getKineticLaw() is None or not r.getKineticLaw().isSetMath():
                continue
            rate = sp.Symbol(r.getId())
            for sign, refs in ((-1, r.getListOfReactants()), (1, r.getListOfProducts())):
                for ref in refs:
                    sid = ref.getSpecies()
                    self._require_known(sid, f"reaction '{r.getId()}' species")
                    terms.setdefault(sid, []).append(sign * self._stoichiometry(ref) * rate)
        return terms

    def _conversion_factor(self, s: libsbml.Species) -> sp.Expr:
        if s.isSetConversionFactor():
            return sp.Symbol(s.getConversionFactor())
        if self.m.isSetConversionFactor():
            return sp.Symbol(self.m.getConversionFactor())
        return sp.Integer(1)

    def _states(self, reaction_terms: dict[str, list[sp.Expr]], event_targets: set[str]) -> list[StateSpec]:
        states: list[StateSpec] = []
        species = {s.getId(): s for s in self.m.getListOfSpecies()}
        for qid, info in self.info.items():
            if qid in self.assignment_rules or info.kind in ("reaction", "local_parameter"):
                if qid in event_targets and qid in self.assignment_rules:
                    raise MalformedModelError(
                        f"{self.source}: event assigns '{qid}', which has an assignment rule"
                    )
                continue
            if qid in self.rate_rules:
                states.append(self._rate_rule_state(qid, event_targets))
                continue
            if info.kind == "species":
                s = species[qid]
                in_reactions = qid in reaction_terms and not s.getBoundaryCondition() and not s.getConstant()
                # every non-constant species, and every species in a compartment that changes size,
                # is a stored amount: its amount stays put when the compartment changes size, even
                # when nothing else acts on it (L3V2 section 4.6; SBML Test Suite 01118)
                if not s.getConstant() or not self._constant_compartment(s.getCompartment(), event_targets):
                    rate = sp.Integer(0)
                    if in_reactions:
                        rate = self._conversion_factor(s) * sp.Add(*reaction_terms[qid])
                    states.append(StateSpec(qid, amount_symbol(qid), rate, stored_as_amount=True))
                continue
            if qid in event_targets:
                if self.constant_flag[qid]:
                    raise MalformedModelError(f"{self.source}: event assigns constant '{qid}'")
                states.append(StateSpec(qid, sp.Symbol(qid), sp.Integer(0)))
        return states

    def _rate_rule_state(self, qid: str, event_targets: set[str]) -> StateSpec:
        """A rate rule defines d(value)/dt. For a concentration species in a compartment that changes
        size, the amount is stored (so an event resizing the compartment keeps it) with
        d(amount)/dt = V d[S]/dt + [S] dV/dt (L3V2 section 4.11.2; SBML Test Suite 01505)."""
        info = self.info[qid]
        rate = self.rate_rules[qid]
        comp = info.compartment
        if info.kind != "species" or info.only_substance_units or comp is None:
            return StateSpec(qid, sp.Symbol(qid), rate)
        if self._constant_compartment(comp, event_targets):
            return StateSpec(qid, sp.Symbol(qid), rate)
        if comp in self.assignment_rules:
            raise UnsupportedConstructError(
                "rate rule on a concentration species in a compartment with an assignment rule", qid
            )
        d_volume = self.rate_rules.get(comp, sp.Integer(0))
        amount_rate = sp.Symbol(comp) * rate + sp.Symbol(qid) * d_volume
        return StateSpec(qid, amount_symbol(qid), amount_rate, stored_as_amount=True)

    def _constant_compartment(self, cid: str, event_targets: set[str]) -> bool:
        return (
            self.constant_flag.get(cid, True)
            and cid not in self.rate_rules
            and cid not in self.assignment_rules
            and cid not in event_targets
        )

    def _derived(self, states: list[StateSpec]) -> list[tuple[str, sp.Expr]]:
        exprs: dict[str, sp.Expr] = {}
        for st in states:
            if st.stored_as_amount:
                exprs[st.id] = self._value_of_amount(st.id, st.symbol)
        exprs.update(self.assignment_rules)
        for r in self.m.getListOfReactions():
            law = r.getKineticLaw()
            if law is not None and law.isSetMath():
                exprs[r.getId()] = _math(law).xreplace(self.local_subs.get(r.getId(), {}))
            else:
                exprs[r.getId()] = sp.Integer(0)
        order = _topological(exprs, self.source, what="assignment rules")
        return [(i, exprs[i]) for i in order]

    def _value_of_amount(self, sid: str, amount: sp.Expr) -> sp.Expr:
        info = self.info[sid]
        if info.only_substance_units or info.compartment is None:
            return amount
        return amount / sp.Symbol(info.compartment)

    # -- start values ----------------------------------------------------------------------------
    def _declared_value(self, qid: str) -> sp.Expr:
        info = self.info[qid]
        d = declared_symbol(qid)
        if info.kind != "species":
            return d
        s = self.m.getSpecies(qid)
        comp = sp.Symbol(info.compartment) if info.compartment else sp.Integer(1)
        if s.isSetInitialAmount() and not info.only_substance_units:
            return d / comp
        if s.isSetInitialConcentration() and info.only_substance_units:
            return d * comp
        return d

    def _start_expressions(self, derived: list[tuple[str, sp.Expr]]) -> dict[str, sp.Expr]:
        start: dict[str, sp.Expr] = {}
        derived_map = dict(derived)
        for qid, info in self.info.items():
            if qid in self.initial_assignments:
                start[qid] = self.initial_assignments[qid]
            elif qid in self.assignment_rules:
                start[qid] = self.assignment_rules[qid]
            elif info.kind == "reaction":
                start[qid] = derived_map[qid]
            else:
                start[qid] = self._declared_value(qid)
        return start

    # -- events -----------------------------------------------------------------------------------
    def _events(self) -> tuple[EventSpec, ...]:
        out = []
        for i, e in enumerate(self.m.getListOfEvents()):
            eid = e.getId() or f"event{i + 1}"
            trig = e.getTrigger()
            if trig is None or not trig.isSetMath():  # L3V2: an event without trigger maths never fires
                continue
            cond = _math(trig)
            if isinstance(cond, sp.Expr):  # a number used as a condition: true when non-zero
                cond = sp.Ne(cond, 0)
            initial = trig.getInitialValue() if trig.isSetInitialValue() else True
            persistent = trig.getPersistent() if trig.isSetPersistent() else True
            assigns = tuple(
                (ea.getVariable(), self._numeric(_math(ea)))
                for ea in e.getListOfEventAssignments()
                if ea.isSetMath()
            )
            out.append(EventSpec(eid, cond, bool(initial), bool(persistent), assigns))
        return tuple(out)


def _references(r: libsbml.Reaction) -> Iterable[libsbml.SpeciesReference]:
    yield from r.getListOfReactants()
    yield from r.getListOfProducts()


def _topological(exprs: dict[str, sp.Basic], source: str, *, what: str) -> tuple[str, ...]:
    """Order ``exprs`` so each id comes after the ids its expression uses (Kahn's algorithm).

    Symbols that are not keys of ``exprs`` are inputs (states, constants, declared values).
    """
    deps = {k: {s.name for s in v.free_symbols if s.name in exprs} for k, v in exprs.items()}
    order: list[str] = []
    ready = [k for k in exprs if not deps[k]]
    remaining = {k: set(d) for k, d in deps.items() if d}
    while ready:
        k = ready.pop(0)
        order.append(k)
        for other in list(remaining):
            remaining[other].discard(k)
            if not remaining[other]:
                ready.append(other)
                del remaining[other]
    if remaining:
        cycle = ", ".join(sorted(remaining))
        raise MalformedModelError(f"{source}: {what} form a cycle through {cycle}")
    return tuple(order)
