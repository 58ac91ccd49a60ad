"""The ``template.yaml`` schema as frozen data, and its validating parser.

A template's metadata says what the model is for, where each number comes from, what can be measured,
which treatments it can represent and which outcomes it reports. :func:`parse_metadata` turns the parsed
YAML mapping into a :class:`TemplateMetadata` or raises :class:`~immunetwin.errors.TemplateError` naming
the file and the key path, e.g. ``viral_tiv/template.yaml: parameters.beta.range: low 3 above value 2``.

This module checks the metadata on its own (types, units with pint, priors, LOINC check digits,
expression syntax). Agreement with ``model.ant`` is checked by :mod:`immunetwin.templates.library`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn

import sympy

from immunetwin.errors import TemplateError

__all__ = [
    "PRIOR_FORMS",
    "DoseSeries",
    "DoseSpec",
    "InputWindow",
    "InterventionInfo",
    "NoiseModel",
    "ObservableInfo",
    "OutcomeInfo",
    "ParameterInfo",
    "Prior",
    "StateInfo",
    "TemplateMetadata",
    "parse_expression",
    "parse_metadata",
    "parse_unit",
]

#: Parameters of each prior family, in order, and whether each must be strictly positive.
PRIOR_FORMS: Mapping[str, tuple[tuple[str, bool], ...]] = MappingProxyType(
    {
        "lognormal": (("median", True), ("sigma", True)),
        "normal": (("mean", False), ("sd", True)),
        "laplace": (("location", False), ("scale", True)),
        "uniform": (("lower", False), ("upper", False)),
    }
)
OUTCOME_KINDS = ("max", "min", "time_of_max", "final", "auc", "time_below", "exceeds")
NOISE_MODELS = ("normal", "laplace")
Ref = float | str  # a number, or the name of an intervention argument


# ----------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Prior:
    """A prior for one parameter: a family name and its named parameters (see :data:`PRIOR_FORMS`).

    ``lognormal`` is parametrised by its median and the standard deviation ``sigma`` of ``ln x``.
    """

    distribution: str
    parameters: Mapping[str, float]

    def __post_init__(self) -> None:
        form = PRIOR_FORMS.get(self.distribution)
        if form is None:
            raise TemplateError(f"unknown prior '{self.distribution}' (known: {', '.join(PRIOR_FORMS)})")
        names = tuple(n for n, _ in form)
        if tuple(sorted(self.parameters)) != tuple(sorted(names)):
            raise TemplateError(f"{self.distribution} prior needs exactly {', '.join(names)}")
        for key, positive in form:
            value = float(self.parameters[key])
            if not math.isfinite(value) or (positive and value <= 0):
                raise TemplateError(f"{key} must be {'> 0' if positive else 'finite'}, got {value}")
        if self.distribution == "uniform" and not self.parameters["lower"] < self.parameters["upper"]:
            raise TemplateError("uniform prior needs lower < upper")
        ordered = {n: float(self.parameters[n]) for n in names}
        object.__setattr__(self, "parameters", MappingProxyType(ordered))

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the support of the prior."""
        if self.distribution == "lognormal":
            return value > 0
        if self.distribution == "uniform":
            return self.parameters["lower"] <= value <= self.parameters["upper"]
        return True


@dataclass(frozen=True)
class StateInfo:
    """A state (species or rate-rule variable) of the model."""

    description: str
    unit: str


@dataclass(frozen=True)
class ParameterInfo:
    """A constant parameter: nominal value, unit, source, plausible range, prior, personalised or not."""

    value: float
    unit: str
    source: str
    range: tuple[float, float]
    prior: Prior
    estimate: bool


@dataclass(frozen=True)
class NoiseModel:
    """Measurement noise on the observable scale; for ``laplace`` ``sigma`` is the scale ``b``."""

    model: str
    sigma: float


@dataclass(frozen=True)
class ObservableInfo:
    """A measurable quantity: formula in model ids, unit, LOINC code, noise, lower limit of detection."""

    formula: str
    unit: str
    loinc: str | None
    noise: NoiseModel
    lloq: float | None = None


@dataclass(frozen=True)
class InputWindow:
    """``target = value`` on ``[start, start + duration)``; fields may name intervention arguments."""

    target: str
    value: Ref
    start: Ref
    duration: Ref


@dataclass(frozen=True)
class DoseSeries:
    """Regular dosing: ``count`` doses ``every`` days apart from ``start`` (each may name an argument)."""

    start: Ref
    every: Ref
    count: Ref


@dataclass(frozen=True)
class DoseSpec:
    """Bolus ``amount`` into ``target`` at each of ``times`` (a list, or a regular series).

    Fields may name intervention arguments. In YAML, ``times`` is a list (``[start, 7.0]``), one value,
    or a mapping ``{start: ..., every: ..., count: ...}`` for repeated dosing.
    """

    target: str
    amount: Ref
    times: tuple[Ref, ...] | DoseSeries


@dataclass(frozen=True)
class InterventionInfo:
    """A named treatment: default arguments, parameter windows and bolus doses."""

    description: str
    arguments: Mapping[str, float]
    inputs: tuple[InputWindow, ...]
    doses: tuple[DoseSpec, ...]


@dataclass(frozen=True)
class OutcomeInfo:
    """An outcome metric of a trajectory; ``threshold`` is required by ``time_below`` and ``exceeds``.
    ``better`` says which direction is good for the patient (``lower`` unless the metadata says
    ``higher``, e.g. a lymphocyte nadir)."""

    kind: str
    expression: str
    unit: str
    description: str
    threshold: float | None = None
    better: str = "lower"


@dataclass(frozen=True)
class TemplateMetadata:
    """Everything ``template.yaml`` says about a template."""

    name: str
    version: str
    title: str
    purpose: str
    context_of_use: str
    time_unit: str
    citations: Mapping[str, str]
    states: Mapping[str, StateInfo]
    parameters: Mapping[str, ParameterInfo]
    observables: Mapping[str, ObservableInfo]
    interventions: Mapping[str, InterventionInfo]
    outcomes: Mapping[str, OutcomeInfo]
    limits: tuple[str, ...]
    checks: tuple[str, ...]


# ------------------------------------------------------------------------------------- shared parsers


@functools.lru_cache(maxsize=1)
def _unit_registry() -> Any:
    """A pint registry with the counting units of immunology (built on first use, then reused)."""
    import pint

    ureg = pint.UnitRegistry()
    for line in (
        "cell = [cell]",
        "copy = [nucleic_acid_copy] = _ = copies",
        "TCID50 = [infectious_dose]",
        "PFU = [plaque_forming_unit] = pfu",
        "FFU = [focus_forming_unit] = ffu",
        "virion = [virion]",
        "international_unit = [international_unit] = IU",
    ):
        ureg.define(line)
    return ureg


def parse_unit(text: str) -> Any:
    """Parse a unit string with pint; ``"log10 <unit>"`` and ``"log10(<unit>)"`` parse their inner unit.

    Scaled units such as ``10^9/L`` (cell counts) are allowed and returned as a pint Quantity; UCUM's
    ``10*9/L`` is refused because pint would read it as 90/L.

    Returns:
        The pint Unit (or Quantity, for a scaled unit).

    Raises:
        TemplateError: the string is not a unit pint knows.
    """
    inner = re.sub(r"^log10\s*(\((.*)\)|\s(.*))$", lambda m: m.group(2) or m.group(3), text.strip()).strip()
    if not re.search(r"[A-Za-z%\u00b5]", inner):
        raise TemplateError(f"'{text}' is a number, not a unit (use 'dimensionless')")
    if re.search(r"(^|[^\w.])10\*\d", inner):
        raise TemplateError(f"'{text}': write powers of ten as 10^9, not UCUM's 10*9")
    ureg = _unit_registry()
    try:
        return ureg.parse_units(inner)
    except Exception:  # pint raises several unrelated types
        pass
    try:
        scaled = ureg.parse_expression(inner)
    except Exception as err:
        raise TemplateError(f"'{text}' is not a unit pint can parse ({type(err).__name__})") from None
    if not isinstance(scaled, ureg.Quantity):
        raise TemplateError(f"'{text}' is not a unit pint can parse")
    return scaled


_FUNCTIONS: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {
        "log10": lambda x: sympy.log(x, 10),
        "log": sympy.log,
        "ln": sympy.log,
        "exp": sympy.exp,
        "sqrt": sympy.sqrt,
        "abs": sympy.Abs,
        "max": sympy.Max,
        "min": sympy.Min,
        "pow": sympy.Pow,
    }
)
_SAFE_TEXT = re.compile(r"^[\w\s.+\-*/^(),]*$")


def parse_expression(text: str) -> sympy.Expr:
    """Parse an observable or outcome expression; every name that is not a function is a symbol.

    Functions: ``log10, log, ln, exp, sqrt, abs, max, min, pow``; ``^`` and ``**`` are powers. Names such
    as ``I``, ``E``, ``S`` or ``beta`` are plain symbols (model ids), never sympy constants.

    Raises:
        TemplateError: the text is not an expression, or calls an unknown function.
    """
    from sympy.parsing import sympy_parser as sp

    if (
        not text.strip()
        or not _SAFE_TEXT.match(text)
        or "__" in text
        or re.search(r"[A-Za-z_]\w*\s*\.", text)
    ):
        raise TemplateError(f"'{text}' is not an arithmetic expression of model ids")
    names = {"Integer": sympy.Integer, "Float": sympy.Float, "Rational": sympy.Rational}
    glob = {**names, "Symbol": sympy.Symbol, "Function": sympy.Function, **_FUNCTIONS, "__builtins__": {}}
    steps = (sp.auto_symbol, sp.auto_number, sp.convert_xor)
    try:
        expr = sp.parse_expr(text, local_dict={}, global_dict=glob, transformations=steps)
    except Exception as err:  # sympy's parser raises whatever eval raises
        raise TemplateError(f"cannot parse '{text}' ({type(err).__name__})") from None
    unknown = sorted(str(f.func) for f in expr.atoms(sympy.core.function.AppliedUndef))
    if unknown or not isinstance(expr, sympy.Expr):
        raise TemplateError(f"'{text}' calls unknown function(s) {', '.join(unknown) or '?'}")
    return expr


def loinc_is_valid(code: str) -> bool:
    """Whether ``code`` has the LOINC form ``NNNNN-C`` with a correct mod-10 check digit ``C``."""
    match = re.fullmatch(r"(\d{1,7})-(\d)", code)
    if match is None:
        return False
    total = 0
    for position, char in enumerate(reversed(match.group(1))):
        digit = int(char) * (2 if position % 2 == 0 else 1)
        total += digit // 10 + digit % 10
    return (10 - total % 10) % 10 == int(match.group(2))


# ----------------------------------------------------------------------------------- path-aware checks


@dataclass(frozen=True)
class _At:
    """Where we are in the YAML document, for error messages."""

    where: str
    path: tuple[str, ...] = ()

    def __truediv__(self, key: object) -> _At:
        return _At(self.where, (*self.path, str(key)))

    def fail(self, message: str) -> NoReturn:
        raise TemplateError(f"{self.where}: {'.'.join(self.path) or '<top>'}: {message}")

    def call(self, build: Callable[..., Any], *args: Any) -> Any:
        """Run a validating constructor and move its error message to this path."""
        try:
            return build(*args)
        except TemplateError as err:
            self.fail(str(err))


def _mapping(at: _At, raw: object, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    if not isinstance(raw, Mapping):
        at.fail(f"expected a mapping, got {type(raw).__name__}")
    unknown = [str(k) for k in raw if k not in required + optional]
    if unknown:
        at.fail(f"unknown key '{unknown[0]}' (expected: {', '.join(required + optional)})")
    missing = [k for k in required if k not in raw]
    if missing:
        at.fail(f"missing key '{missing[0]}'")
    return dict(raw)


def _text(at: _At, raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        at.fail("expected a non-empty string")
    return raw.strip()


def _number(at: _At, raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        at.fail(f"expected a number, got {type(raw).__name__}")
    try:
        value = float(raw)  # PyYAML reads 1e-6 (no dot) as a string
    except ValueError:
        at.fail(f"expected a number, got '{raw}'")
    if not math.isfinite(value):
        at.fail(f"expected a finite number, got {value}")
    return value


def _unit(at: _At, raw: object) -> str:
    text = _text(at, raw)
    at.call(parse_unit, text)
    return text


def _identifier(at: _At, raw: object) -> str:
    if not isinstance(raw, str) or not re.fullmatch(r"[A-Za-z_]\w*", raw):
        at.fail(f"expected an identifier, got {raw!r}")
    return raw


def _entries(at: _At, raw: object, parse: Callable[[_At, object], Any], *, empty_ok: bool = True) -> Mapping:
    if raw is None and empty_ok:
        return MappingProxyType({})
    if not isinstance(raw, Mapping) or (not raw and not empty_ok):
        at.fail("expected a non-empty mapping of id -> entry")
    return MappingProxyType({_identifier(at / k, k): parse(at / k, v) for k, v in raw.items()})


def _strings(at: _At, raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        at.fail("expected a non-empty list of strings")
    return tuple(_text(at / i, item) for i, item in enumerate(raw))


# ------------------------------------------------------------------------------------ section parsers


def _state(at: _At, raw: object) -> StateInfo:
    entry = _mapping(at, raw, ("description", "unit"))
    return StateInfo(_text(at / "description", entry["description"]), _unit(at / "unit", entry["unit"]))


def _prior(at: _At, raw: object) -> Prior:
    entry = _mapping(at, raw, ("distribution",), tuple(n for form in PRIOR_FORMS.values() for n, _ in form))
    family = _text(at / "distribution", entry.pop("distribution"))
    params = {k: _number(at / k, v) for k, v in entry.items()}
    return at.call(Prior, family, params)


def _citation_keys(source: str) -> tuple[str, ...]:
    """Words in a source that look like citation keys (``author2006``, ``smith_jones2019b``)."""
    return tuple(re.findall(r"\b[a-z][a-z_]*\d{4}[a-z]?\b", source))


def _parameter(at: _At, raw: object) -> ParameterInfo:
    entry = _mapping(at, raw, ("value", "unit", "source", "range", "prior", "estimate"))
    value = _number(at / "value", entry["value"])
    bounds = entry["range"]
    if not isinstance(bounds, list) or len(bounds) != 2:
        (at / "range").fail("expected [low, high]")
    low, high = (_number(at / "range" / i, b) for i, b in enumerate(bounds))
    if low > value:
        (at / "range").fail(f"low {low:g} above value {value:g}")
    if high < value:
        (at / "range").fail(f"high {high:g} below value {value:g}")
    prior = _prior(at / "prior", entry["prior"])
    if not prior.contains(value):
        (at / "prior").fail(f"value {value:g} is outside the support of the {prior.distribution} prior")
    if not isinstance(entry["estimate"], bool):
        (at / "estimate").fail("expected true or false")
    unit, source = _unit(at / "unit", entry["unit"]), _text(at / "source", entry["source"])
    return ParameterInfo(value, unit, source, (low, high), prior, entry["estimate"])


def _observable(at: _At, raw: object) -> ObservableInfo:
    entry = _mapping(at, raw, ("formula", "unit", "loinc", "noise"), ("lower_limit_of_detection",))
    formula = _text(at / "formula", entry["formula"])
    at.call(parse_expression, formula)
    loinc = entry["loinc"]
    if loinc is not None and (not isinstance(loinc, str) or not loinc_is_valid(loinc)):
        (at / "loinc").fail(f"{loinc!r} is not a LOINC code with a valid check digit (use null if none)")
    noise = _mapping(at / "noise", entry["noise"], ("model", "sigma"))
    model = _text(at / "noise" / "model", noise["model"])
    if model not in NOISE_MODELS:
        (at / "noise" / "model").fail(f"'{model}' is not one of {', '.join(NOISE_MODELS)}")
    sigma = _number(at / "noise" / "sigma", noise["sigma"])
    if sigma <= 0:
        (at / "noise" / "sigma").fail(f"must be > 0, got {sigma:g}")
    lod = entry.get("lower_limit_of_detection")
    lod = None if lod is None else _number(at / "lower_limit_of_detection", lod)
    return ObservableInfo(formula, _unit(at / "unit", entry["unit"]), loinc, NoiseModel(model, sigma), lod)


def _ref(at: _At, raw: object, arguments: Mapping[str, float]) -> Ref:
    if isinstance(raw, str) and re.fullmatch(r"[A-Za-z_]\w*", raw):
        if raw not in arguments:
            at.fail(f"'{raw}' is not an argument of this intervention (arguments: {', '.join(arguments)})")
        return raw
    return _number(at, raw)


def _dose_times(at: _At, raw: object, arguments: Mapping[str, float]) -> tuple[Ref, ...] | DoseSeries:
    if isinstance(raw, Mapping):
        series = _mapping(at, raw, ("start", "every", "count"))
        start, every, count = (_ref(at / k, series[k], arguments) for k in ("start", "every", "count"))
        if isinstance(every, float) and every <= 0:
            (at / "every").fail(f"must be > 0, got {every:g}")
        if isinstance(count, float) and (count < 1 or count != int(count)):
            (at / "count").fail(f"must be a whole number >= 1, got {count:g}")
        return DoseSeries(start, every, count)
    times = raw if isinstance(raw, list) else [raw]
    if not times:
        at.fail("expected at least one dose time")
    return tuple(_ref(at / j, t, arguments) for j, t in enumerate(times))


def _intervention(at: _At, raw: object) -> InterventionInfo:
    entry = _mapping(at, raw, ("description", "arguments", "inputs", "doses"))
    args = entry["arguments"] or {}
    if not isinstance(args, Mapping):
        (at / "arguments").fail("expected a mapping of argument -> default value")
    arguments = {
        _identifier(at / "arguments" / k, k): _number(at / "arguments" / k, v) for k, v in args.items()
    }
    inputs, doses = entry["inputs"] or [], entry["doses"] or []
    if not isinstance(inputs, list) or not isinstance(doses, list):
        at.fail("inputs and doses must be lists")
    if not inputs and not doses:
        at.fail("an intervention needs at least one input or dose")
    windows = []
    for i, item in enumerate(inputs):
        here = at / "inputs" / i
        w = _mapping(here, item, ("target", "value", "start", "duration"))
        refs = (_ref(here / k, w[k], arguments) for k in ("value", "start", "duration"))
        windows.append(InputWindow(_identifier(here / "target", w["target"]), *refs))
    targets = [w.target for w in windows]
    if len(set(targets)) != len(targets):
        (at / "inputs").fail("a parameter may be the target of only one input window per intervention")
    specs = []
    for i, item in enumerate(doses):
        here = at / "doses" / i
        d = _mapping(here, item, ("target", "amount", "times"))
        when = _dose_times(here / "times", d["times"], arguments)
        amount = _ref(here / "amount", d["amount"], arguments)
        specs.append(DoseSpec(_identifier(here / "target", d["target"]), amount, when))
    description = _text(at / "description", entry["description"])
    return InterventionInfo(description, MappingProxyType(arguments), tuple(windows), tuple(specs))


def _outcome(at: _At, raw: object) -> OutcomeInfo:
    entry = _mapping(at, raw, ("kind", "expression", "unit", "description"), ("threshold", "better"))
    kind = _text(at / "kind", entry["kind"])
    if kind not in OUTCOME_KINDS:
        (at / "kind").fail(f"'{kind}' is not one of {', '.join(OUTCOME_KINDS)}")
    expression = _text(at / "expression", entry["expression"])
    at.call(parse_expression, expression)
    threshold = entry.get("threshold")
    if threshold is None and kind in ("time_below", "exceeds"):
        at.fail(f"kind '{kind}' needs a threshold")
    threshold = None if threshold is None else _number(at / "threshold", threshold)
    unit, description = _unit(at / "unit", entry["unit"]), _text(at / "description", entry["description"])
    better = _text(at / "better", entry.get("better", "lower"))
    if better not in ("lower", "higher"):
        (at / "better").fail(f"'{better}' is not 'lower' or 'higher'")
    return OutcomeInfo(kind, expression, unit, description, threshold, better)


_TOP_KEYS = (
    "name", "version", "title", "purpose", "context_of_use", "time_unit", "citations", "states",
    "parameters", "observables", "interventions", "outcomes", "limits", "checks",
)  # fmt: skip


def parse_metadata(mapping: object, where: str) -> TemplateMetadata:
    """Validate a parsed ``template.yaml`` and return it as frozen data.

    Args:
        mapping: the document as loaded by ``yaml.safe_load``.
        where: how to name the file in error messages, e.g. ``"viral_tiv/template.yaml"``.

    Raises:
        TemplateError: the first problem found, naming ``where`` and the key path.
    """
    at = _At(where)
    doc = _mapping(at, mapping, _TOP_KEYS)
    version = doc["version"]
    if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+\.\d+", version):
        (at / "version").fail(f'expected a quoted version like "1.0.0", got {version!r}')
    if doc["time_unit"] != "day":
        (at / "time_unit").fail(f"templates are in days; got {doc['time_unit']!r}")
    citations = _entries(at / "citations", doc["citations"], _text, empty_ok=False)
    parameters = _entries(at / "parameters", doc["parameters"], _parameter, empty_ok=False)
    for pid, info in parameters.items():
        unknown = [k for k in _citation_keys(info.source) if k not in citations]
        if unknown:
            (at / "parameters" / pid / "source").fail(f"cites '{unknown[0]}', which is not in citations")
    return TemplateMetadata(
        name=_identifier(at / "name", doc["name"]),
        version=version,
        title=_text(at / "title", doc["title"]),
        purpose=_text(at / "purpose", doc["purpose"]),
        context_of_use=_text(at / "context_of_use", doc["context_of_use"]),
        time_unit="day",
        citations=citations,
        states=_entries(at / "states", doc["states"], _state, empty_ok=False),
        parameters=parameters,
        observables=_entries(at / "observables", doc["observables"], _observable),
        interventions=_entries(at / "interventions", doc["interventions"], _intervention),
        outcomes=_entries(at / "outcomes", doc["outcomes"], _outcome),
        limits=_strings(at / "limits", doc["limits"]),
        checks=_strings(at / "checks", doc["checks"]),
    )
