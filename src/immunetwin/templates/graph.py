"""What a template's SBML says about its structure, and its conceptual map as SVG.

:func:`read_structure` reads states, parameters, reactions and rules from SBML with libsbml (math as
sympy via ``sbmlmath``). :func:`model_graph` turns that into a directed graph: solid edges for reactions
(reactant -> product; a source or sink marker where one side is empty) and dashed edges for influence,
``Y -> X`` when state ``Y`` appears in the rate of change of state ``X`` without being converted into it.
An influence is positive (+) or negative (-) when the sign of

$$\\frac{\\partial \\dot X}{\\partial Y}$$

is decided by sympy with every parameter at its nominal value and every state a positive symbol, and
unsigned otherwise. :func:`render_map` draws the graph as a self-contained SVG (pure Python, circular
layout in model order, so the same model always gives the same picture).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

import libsbml
import sympy
from sbmlmath import sbml_math_to_sympy

from immunetwin.errors import MalformedModelError, TemplateError

__all__ = [
    "Edge",
    "ModelGraph",
    "ModelStructure",
    "Reaction",
    "model_graph",
    "read_structure",
    "render_map",
]


@dataclass(frozen=True)
class Reaction:
    """One SBML reaction: stoichiometries, modifiers and its rate law."""

    id: str
    reactants: tuple[tuple[str, float], ...]
    products: tuple[tuple[str, float], ...]
    modifiers: tuple[str, ...]
    rate: sympy.Expr


@dataclass(frozen=True)
class ModelStructure:
    """The parts of an SBML model that templates need.

    ``parameters`` are the free constants (an SBML parameter with a value and no rule or initial
    assignment); ``states`` are species plus rate-rule variables, in model order.
    """

    id: str
    states: tuple[str, ...]
    parameters: Mapping[str, float]
    compartments: Mapping[str, float]
    species_compartment: Mapping[str, str]
    reactions: tuple[Reaction, ...]
    rate_rules: Mapping[str, sympy.Expr]
    assignments: Mapping[str, sympy.Expr]
    derived: tuple[str, ...]

    @property
    def ids(self) -> frozenset[str]:
        """Every id an expression over this model may use."""
        rids = {r.id for r in self.reactions}
        return (
            frozenset(self.states) | set(self.parameters) | set(self.compartments) | set(self.derived) | rids
        )


def _math(obj: object, owner: str, where: str) -> sympy.Expr:
    """The math of an SBML element as sympy; csymbol functions (delay, rateOf) are refused."""
    expr = sbml_math_to_sympy(obj)
    calls = sorted(str(c.func) for c in expr.atoms(sympy.core.function.AppliedUndef))
    if calls:
        raise TemplateError(f"{where}: '{calls[0]}' in the math of '{owner}': templates are plain ODEs")
    return expr


def _document(sbml: str, where: str) -> libsbml.SBMLDocument:
    doc = libsbml.readSBMLFromString(sbml)
    errors = [doc.getError(i) for i in range(doc.getNumErrors())]
    fatal = [e for e in errors if e.getSeverity() >= libsbml.LIBSBML_SEV_ERROR]
    if fatal or doc.getModel() is None:
        message = fatal[0].getShortMessage() if fatal else "no model"
        raise MalformedModelError(f"{where}: invalid SBML: {message}")
    props = libsbml.ConversionProperties()
    props.addOption("expandFunctionDefinitions", True)
    doc.convert(props)
    return doc


def read_structure(sbml: str, where: str) -> ModelStructure:
    """Read a model's states, free parameters, reactions and rules from SBML.

    Raises:
        MalformedModelError: the SBML cannot be read.
        TemplateError: the model uses events, delays or algebraic rules (templates are ODEs).
    """
    model = _document(sbml, where).getModel()
    if model.getNumEvents():
        raise TemplateError(
            f"{where}: event '{model.getEvent(0).getId()}': templates are ODE + assignment rules"
        )
    rules = list(model.getListOfRules())
    if any(r.getTypeCode() == libsbml.SBML_ALGEBRAIC_RULE for r in rules):
        raise TemplateError(f"{where}: algebraic rule: templates are ODE + assignment rules")
    kinds = {libsbml.SBML_RATE_RULE: "rate", libsbml.SBML_ASSIGNMENT_RULE: "assign"}
    by_kind: dict[str, dict[str, sympy.Expr]] = {"rate": {}, "assign": {}}
    for r in rules:
        by_kind[kinds[r.getTypeCode()]][r.getVariable()] = _math(r, r.getVariable(), where)
    rate, assign = by_kind["rate"], by_kind["assign"]
    initial = {a.getSymbol() for a in model.getListOfInitialAssignments()}
    species = [s for s in model.getListOfSpecies() if not s.getConstant() and s.getId() not in assign]
    others = [v for v in rate if v not in {s.getId() for s in species}]
    free = {
        p.getId(): p.getValue()
        for p in model.getListOfParameters()
        if p.isSetValue() and p.getId() not in rate | assign and p.getId() not in initial
    }
    reactions = tuple(
        Reaction(
            r.getId(),
            tuple((x.getSpecies(), x.getStoichiometry()) for x in r.getListOfReactants()),
            tuple((x.getSpecies(), x.getStoichiometry()) for x in r.getListOfProducts()),
            tuple(x.getSpecies() for x in r.getListOfModifiers()),
            _math(r.getKineticLaw(), r.getId(), where) if r.isSetKineticLaw() else sympy.Integer(0),
        )
        for r in model.getListOfReactions()
    )
    derived = tuple(sorted(set(assign) | (initial - {s.getId() for s in species})))
    return ModelStructure(
        id=model.getId(),
        states=tuple(s.getId() for s in species) + tuple(others),
        parameters=MappingProxyType(free),
        compartments=MappingProxyType({c.getId(): c.getSize() for c in model.getListOfCompartments()}),
        species_compartment=MappingProxyType({s.getId(): s.getCompartment() for s in species}),
        reactions=reactions,
        rate_rules=MappingProxyType(rate),
        assignments=MappingProxyType(assign),
        derived=derived,
    )


def _exact(value: float) -> sympy.Rational:
    """The decimal a float prints as, exactly (so sympy's sign and factoring logic stay exact)."""
    return sympy.Rational(repr(float(value)))


def state_derivatives(structure: ModelStructure) -> dict[str, sympy.Expr]:
    """The right-hand side of every state's ODE, with assignment rules substituted."""
    rhs: dict[str, sympy.Expr] = {x: sympy.Integer(0) for x in structure.states}
    for reaction in structure.reactions:
        net: dict[str, float] = {}
        for sid, n in reaction.reactants:
            net[sid] = net.get(sid, 0.0) - n
        for sid, n in reaction.products:
            net[sid] = net.get(sid, 0.0) + n
        for sid, n in net.items():
            if sid in rhs and sid not in structure.rate_rules:
                volume = sympy.Symbol(structure.species_compartment[sid])
                rhs[sid] += _exact(n) * reaction.rate / volume
    rhs.update(structure.rate_rules)
    rules = {sympy.Symbol(k): v for k, v in structure.assignments.items()}
    for _ in range(len(rules) + 1):  # rules may refer to rules; SBML forbids cycles
        rhs = {k: v.xreplace(rules) for k, v in rhs.items()}
    return rhs


@dataclass(frozen=True)
class Edge:
    """An arrow of the map; ``source``/``target`` ``None`` is a source/sink marker."""

    source: str | None
    target: str | None
    kind: Literal["reaction", "influence"]
    sign: int = 0
    label: str = ""


@dataclass(frozen=True)
class ModelGraph:
    """Nodes (states, in model order) and edges of a model's conceptual map."""

    nodes: tuple[str, ...]
    edges: tuple[Edge, ...]


def _sign(derivative: sympy.Expr, nominal: Mapping[sympy.Symbol, sympy.Expr]) -> int:
    """+1/-1 when sympy decides the sign with parameters at nominal values and states positive, else 0.

    The plain expression is tried first, then its form over a common denominator, then its factored
    form (which decides e.g. the derivative of a Hill function).
    """
    value = derivative.xreplace(nominal)
    value = value.xreplace({s: sympy.Symbol(s.name, positive=True) for s in value.free_symbols})
    for step in (sympy.together, sympy.factor):
        if value.is_positive:
            return 1
        if value.is_negative:
            return -1
        value = step(value)
    return 1 if value.is_positive else -1 if value.is_negative else 0


def _reaction_edges(structure: ModelStructure) -> list[Edge]:
    edges: list[Edge] = []
    for r in structure.reactions:
        reactants = [s for s, _ in r.reactants if s in structure.states] or [None]
        products = [s for s, _ in r.products if s in structure.states] or [None]
        edges += [
            Edge(a, b, "reaction", 0, r.id) for a in reactants for b in products if (a, b) != (None, None)
        ]
    return edges


def model_graph(structure: ModelStructure) -> ModelGraph:
    """The conceptual map of a model: reaction edges, then signed influence edges."""
    edges = _reaction_edges(structure)
    converted = {(e.source, e.target) for e in edges}
    values = {**structure.compartments, **structure.parameters}
    nominal = {sympy.Symbol(k): _exact(v) for k, v in values.items() if math.isfinite(v)}
    for target, rhs in state_derivatives(structure).items():
        for source in structure.states:
            symbol = sympy.Symbol(source)
            if source == target or (source, target) in converted or symbol not in rhs.free_symbols:
                continue
            derivative = sympy.diff(rhs, symbol)
            if derivative != 0:
                edges.append(Edge(source, target, "influence", _sign(derivative, nominal)))
    return ModelGraph(structure.states, tuple(edges))


# ------------------------------------------------------------------------------------------- drawing

_COLOURS = {1: "#1a7f37", -1: "#cf222e", 0: "#6e7781"}
_NODE_H = 30.0


def _node_width(label: str) -> float:
    return 24.0 + 8.0 * len(label)


Point = tuple[float, float]


def _layout(nodes: tuple[str, ...], min_width: float) -> tuple[float, float, Point, dict[str, Point]]:
    """Nodes on a circle in model order, first at the top; returns (width, height, centre, positions)."""
    radius = max(150.0, 22.0 * len(nodes) + max((_node_width(n) for n in nodes), default=0.0) / 2)
    width = max(2 * radius + 260.0, min_width)
    centre = (width / 2, radius + 150.0)
    angles = [-math.pi / 2 + 2 * math.pi * i / max(len(nodes), 1) for i in range(len(nodes))]
    points = {
        n: (centre[0] + radius * math.cos(a), centre[1] + radius * math.sin(a))
        for n, a in zip(nodes, angles, strict=True)
    }
    return width, 2 * radius + 300.0, centre, points


def _clip(node: str, centre: tuple[float, float], toward: tuple[float, float]) -> tuple[float, float]:
    """Where the segment from a node's centre toward a point leaves the node's box."""
    dx, dy = toward[0] - centre[0], toward[1] - centre[1]
    half_w, half_h = _node_width(node) / 2 + 3, _NODE_H / 2 + 3
    t = min(half_w / abs(dx) if dx else math.inf, half_h / abs(dy) if dy else math.inf)
    return (centre[0] + dx * min(t, 1.0), centre[1] + dy * min(t, 1.0))


def _marker_point(node_xy: Point, centre: Point, k: int) -> Point:
    """A source/sink marker position outside the circle, fanned out by its index ``k``."""
    angle = math.atan2(node_xy[1] - centre[1], node_xy[0] - centre[0]) + (k - 0.5) * 0.45
    return (node_xy[0] + 78 * math.cos(angle), node_xy[1] + 78 * math.sin(angle))


def _edge_svg(edge: Edge, points: dict[str, Point], centre: Point, k: int) -> str:
    node = edge.source if edge.source is not None else edge.target
    assert node is not None
    a = points[edge.source] if edge.source else _marker_point(points[node], centre, k)
    b = points[edge.target] if edge.target else _marker_point(points[node], centre, k)
    mx, my = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
    length = math.hypot(b[0] - a[0], b[1] - a[1]) or 1.0
    bend = 0.0 if None in (edge.source, edge.target) else 22.0
    ctrl = (mx - bend * (b[1] - a[1]) / length, my + bend * (b[0] - a[0]) / length)
    start = _clip(edge.source, a, ctrl) if edge.source else a
    end = _clip(edge.target, b, ctrl) if edge.target else b
    path = f"M{start[0]:.1f},{start[1]:.1f} Q{ctrl[0]:.1f},{ctrl[1]:.1f} {end[0]:.1f},{end[1]:.1f}"
    src, dst = edge.source or "source", edge.target or "sink"
    parts = [f'<path d="{path}" fill="none"']
    if edge.kind == "reaction":
        title = f"reaction {edge.label}: {src} -> {dst}"
        parts.append(' stroke="#24292f" stroke-width="2" marker-end="url(#head-reaction)"/>')
        attrs = f'class="edge reaction" data-reaction={quoteattr(edge.label)}'
    else:
        word = {1: "positive", -1: "negative", 0: "unsigned"}[edge.sign]
        title = f"{src} -> {dst}: {word} influence on d{dst}/dt"
        parts.append(f' stroke="{_COLOURS[edge.sign]}" stroke-width="1.6" stroke-dasharray="6 4"')
        parts.append(f' marker-end="url(#head-{word})"/>')
        mark = {1: "+", -1: "-", 0: "?"}[edge.sign]
        attrs = f'class="edge influence {word}" data-sign="{mark}"'
    body = "".join(parts)
    for end_node, xy in ((edge.source, a), (edge.target, b)):
        if end_node is None:
            body += (
                f'<circle cx="{xy[0]:.1f}" cy="{xy[1]:.1f}" r="7" fill="white" stroke="#24292f"/>'
                f'<line x1="{xy[0] - 6:.1f}" y1="{xy[1] + 6:.1f}" x2="{xy[0] + 6:.1f}" y2="{xy[1] - 6:.1f}"'
                ' stroke="#24292f"/>'
            )
    if edge.kind == "influence" and edge.sign:
        lx, ly = 0.25 * ctrl[0] + 0.75 * end[0], 0.25 * ctrl[1] + 0.75 * end[1] - 6
        glyph = "+" if edge.sign > 0 else "\u2212"
        body += (
            f'<text x="{lx:.1f}" y="{ly:.1f}" fill="{_COLOURS[edge.sign]}" font-size="15"'
            f' font-weight="bold" text-anchor="middle">{glyph}</text>'
        )
    data = f"data-source={quoteattr(src)} data-target={quoteattr(dst)}"
    return f"<g {attrs} {data}><title>{escape(title)}</title>{body}</g>"


def _node_svg(node: str, xy: tuple[float, float], tooltip: str) -> str:
    w = _node_width(node)
    return (
        f'<g class="node" data-id={quoteattr(node)}><title>{escape(tooltip)}</title>'
        f'<rect x="{xy[0] - w / 2:.1f}" y="{xy[1] - _NODE_H / 2:.1f}" width="{w:.1f}" height="{_NODE_H:.0f}"'
        ' rx="8" fill="#ddf4ff" stroke="#0969da" stroke-width="1.5"/>'
        f'<text x="{xy[0]:.1f}" y="{xy[1] + 5:.1f}" text-anchor="middle" font-size="14">'
        f"{escape(node)}</text></g>"
    )


def _defs() -> str:
    heads = [
        '<marker id="head-reaction" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7"'
        ' orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#24292f"/></marker>'
    ]
    for sign, word in ((1, "positive"), (0, "unsigned")):
        heads.append(
            f'<marker id="head-{word}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7"'
            f' orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{_COLOURS[sign]}"/></marker>'
        )
    heads.append(
        '<marker id="head-negative" viewBox="0 0 4 12" refX="3" refY="6" markerWidth="4" markerHeight="10"'
        f' orient="auto"><rect x="0" y="0" width="3" height="12" fill="{_COLOURS[-1]}"/></marker>'
    )
    return "<defs>" + "".join(heads) + "</defs>"


def _legend(y: float) -> str:
    rows = (
        ("#24292f", "", "reaction (conversion)"),
        (_COLOURS[1], ' stroke-dasharray="6 4"', "+ increases the target's rate"),
        (_COLOURS[-1], ' stroke-dasharray="6 4"', "\u2212 decreases the target's rate"),
        (_COLOURS[0], ' stroke-dasharray="6 4"', "influence of undetermined sign"),
    )
    out = []
    for i, (colour, dash, text) in enumerate(rows):
        x = 20 + 215 * i
        out.append(
            f'<line x1="{x}" y1="{y:.1f}" x2="{x + 30}" y2="{y:.1f}" stroke="{colour}"'
            f' stroke-width="2"{dash}/>'
            f'<text x="{x + 36}" y="{y + 4:.1f}" font-size="11">{escape(text)}</text>'
        )
    return '<g class="legend">' + "".join(out) + "</g>"


def render_map(
    graph: ModelGraph,
    *,
    name: str,
    title: str,
    tooltips: Mapping[str, str],
    format: Literal["svg", "html"] = "svg",
    subtitle: str = "",
) -> str:
    """Draw a model graph as a standalone SVG document, or an HTML page holding it.

    Args:
        graph: nodes and edges from :func:`model_graph`.
        name: the model's name, in bold at the top.
        title: one line under the name.
        tooltips: node id -> hover text (description and unit).
        format: ``"svg"`` or ``"html"``.
        subtitle: a paragraph under the title in the HTML page.
    """
    width, height, centre, points = _layout(graph.nodes, max(880.0, 40.0 + 7.0 * len(title)))
    counts: dict[str, int] = {}
    edges = []
    for edge in graph.edges:
        marked = edge.source if edge.target is None else edge.target if edge.source is None else None
        k = 0
        if marked is not None:
            k = counts[marked] = counts.get(marked, -1) + 1
        edges.append(_edge_svg(edge, points, centre, k))
    nodes = [_node_svg(n, points[n], tooltips.get(n, n)) for n in graph.nodes]
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}"'
        f' viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif">'
        f"<title>{escape(name)}: {escape(title)}</title>{_defs()}"
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="20" y="28" font-size="18" font-weight="bold">{escape(name)}</text>'
        f'<text x="20" y="48" font-size="13">{escape(title)}</text>'
        + "".join(edges)
        + "".join(nodes)
        + _legend(height - 25)
        + "</svg>"
    )
    if format == "svg":
        return svg
    if format != "html":
        raise TemplateError(f"unknown map format '{format}' (known: svg, html)")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(name)}</title></head>"
        '<body style="font-family: Helvetica, Arial, sans-serif; margin: 2em">'
        f"<h1>{escape(name)}: {escape(title)}</h1><p>{escape(subtitle)}</p>{svg}"
        "<p>Hover a node for its description and unit, an arrow for its meaning.</p></body></html>\n"
    )
