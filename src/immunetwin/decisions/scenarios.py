"""Treatment scenarios: named intervention schedules built from a template's interventions.

A scenario is what a clinician would compare: "no treatment", "antiviral from day 3", "antiviral and
anti-inflammatory". It is written as a short spec, the same in Python, the CLI and the API:

```
none
antiviral
antiviral(start=3)
antiviral(start=3) + anti_inflammatory(start=7, efficacy=0.8)
```

Each term names one of the template's interventions (``template.metadata.interventions``); keyword
arguments override its defaults, e.g. ``start`` and ``duration`` in days from the twin's time origin and
``efficacy`` as a fraction. The terms' schedules are added (:class:`~immunetwin.spec.schedule.Schedule`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from immunetwin.errors import InputError, TemplateError
from immunetwin.spec.schedule import Schedule
from immunetwin.templates import Template

__all__ = ["NO_TREATMENT", "Scenario", "scenario", "standard_scenarios"]

#: The spec (and name) of the scenario without any intervention.
NO_TREATMENT = "none"

_TERM = re.compile(r"\s*([A-Za-z_]\w*)\s*(?:\(([^()]*)\))?\s*")
_ARG = re.compile(r"\s*([A-Za-z_]\w*)\s*=\s*([^\s,=]+)\s*")


@dataclass(frozen=True)
class Scenario:
    """A named treatment scenario.

    Attributes:
        name: unique label, e.g. ``"antiviral(start=3)"``; the canonical spec for parsed scenarios.
        schedule: the doses and inputs it gives (empty for no treatment).
        description: plain-language description for reports.
        interventions: names of the template interventions it uses (costs and TREAT / DO NOT TREAT
            are read from these); empty for no treatment.
    """

    name: str
    schedule: Schedule = field(default_factory=Schedule)
    description: str = ""
    interventions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError("a scenario needs a non-empty name")
        if not isinstance(self.schedule, Schedule):
            raise InputError(f"scenario '{self.name}': schedule must be a Schedule")
        object.__setattr__(self, "interventions", tuple(self.interventions))

    @property
    def treats(self) -> bool:
        """Whether the scenario gives anything (an intervention, a dose or an input)."""
        return bool(self.interventions or self.schedule.doses or self.schedule.inputs)


def _number(text: str, at: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{at}: '{text}' is not a number") from None


def _split_terms(spec: str) -> list[str]:
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0 or depth > 1:
            raise InputError(f"scenario '{spec}': unbalanced parentheses at character {i + 1}")
        if ch == "+" and depth == 0:
            terms.append(spec[start:i])
            start = i + 1
    if depth != 0:
        raise InputError(f"scenario '{spec}': unbalanced parentheses")
    return [*terms, spec[start:]]


def _parse_arguments(text: str | None, at: str) -> dict[str, float]:
    if text is None or not text.strip():
        return {}
    out: dict[str, float] = {}
    for part in text.split(","):
        match = _ARG.fullmatch(part)
        if match is None:
            raise InputError(f"{at}: '{part.strip()}' is not an argument of the form name=number")
        key = match.group(1)
        if key in out:
            raise InputError(f"{at}: argument '{key}' given twice")
        out[key] = _number(match.group(2), f"{at}, argument '{key}'")
    return out


def _parse_term(term: str, spec: str) -> tuple[str, dict[str, float]]:
    match = _TERM.fullmatch(term)
    if match is None:
        shown = term.strip() or "(empty)"
        raise InputError(f"scenario '{spec}': '{shown}' is not a term like name or name(arg=value, ...)")
    name = match.group(1)
    return name, _parse_arguments(match.group(2), f"scenario '{spec}', term '{name}'")


def _canonical(name: str, arguments: dict[str, float]) -> str:
    if not arguments:
        return name
    return f"{name}({','.join(f'{k}={v:g}' for k, v in arguments.items())})"


def _describe(template: Template, name: str, arguments: dict[str, float]) -> str:
    resolved = {**template.metadata.interventions[name].arguments, **arguments}
    return f"{name} ({', '.join(f'{k}={v:g}' for k, v in resolved.items())})"


def scenario(template: Template, spec: str, *, name: str | None = None) -> Scenario:
    """Parse a scenario spec such as ``"antiviral(start=3)+anti_inflammatory(efficacy=0.8)"``.

    Args:
        template: the template whose interventions the spec names.
        spec: ``"none"``, or terms ``intervention`` / ``intervention(arg=value, ...)`` joined by ``+``.
        name: the scenario's label; default the canonical spec (spaces removed, numbers as ``%g``).

    Raises:
        TemplateError: an unknown intervention or argument (the message lists the known ones).
        InputError: a malformed spec, a value that is not a finite number, ``none`` combined with
            other terms, or the same intervention twice.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("a scenario spec must be a non-empty string such as 'none' or 'antiviral(start=3)'")
    terms = [_parse_term(t, spec) for t in _split_terms(spec)]
    names = [n for n, _ in terms]
    if NO_TREATMENT in names:
        if len(terms) > 1 or terms[0][1]:
            raise InputError(f"scenario '{spec}': '{NO_TREATMENT}' stands alone, without arguments")
        return Scenario(name or NO_TREATMENT, Schedule(), "no treatment")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"scenario '{spec}': intervention '{twice[0]}' appears twice; give it once")
    for iv, _ in terms:
        if iv not in template.metadata.interventions:
            known = ", ".join([NO_TREATMENT, *template.metadata.interventions])
            raise TemplateError(f"scenario '{spec}': unknown intervention '{iv}' (known: {known})")
    schedule = Schedule()
    for iv, args in terms:
        schedule = schedule + template.intervention(iv, **args)
    label = name or "+".join(_canonical(iv, args) for iv, args in terms)
    description = " + ".join(_describe(template, iv, args) for iv, args in terms)
    return Scenario(label, schedule, description, tuple(names))


def standard_scenarios(template: Template) -> tuple[Scenario, ...]:
    """No treatment, each intervention alone at its defaults, and (with two or more) all together."""
    ivs = tuple(template.metadata.interventions)
    specs = [NO_TREATMENT, *ivs]
    if len(ivs) > 1:
        specs.append("+".join(ivs))
    return tuple(scenario(template, s) for s in specs)
