"""Dosing schedules: bolus doses into a state and piecewise-constant inputs.

A schedule is data. The engine stops integration exactly at every time in it, applies the
discontinuity, and restarts the solver there, so a dose is never smeared over a step.

Semantics (documented here, relied on by tests):

* ``Bolus(target, time, amount)`` adds ``amount`` to the *amount* of species ``target`` (in the
  model's substance units; for a species in a compartment of size 1 this is also its
  concentration), or to the value of a non-constant parameter / rate-rule variable.
* ``Input(target, times, values)`` makes the constant parameter ``target`` piecewise constant:
  from ``times[i]`` on it equals ``values[i]``; before ``times[0]`` it has its model value.
* At a time where something happens, the reported output is the value *after* the dose or switch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from immunetwin.errors import InputError

__all__ = ["Bolus", "Input", "Schedule"]


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return value


@dataclass(frozen=True)
class Bolus:
    """An instantaneous dose: ``amount`` added to ``target`` at ``time`` (days)."""

    target: str
    time: float
    amount: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "time", _finite(f"bolus time for '{self.target}'", self.time))
        object.__setattr__(self, "amount", _finite(f"bolus amount for '{self.target}'", self.amount))


@dataclass(frozen=True)
class Input:
    """A piecewise-constant input: parameter ``target`` equals ``values[i]`` from ``times[i]`` on."""

    target: str
    times: tuple[float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        times = tuple(_finite(f"input time for '{self.target}'", t) for t in self.times)
        values = tuple(_finite(f"input value for '{self.target}'", v) for v in self.values)
        if len(times) != len(values):
            raise InputError(
                f"input '{self.target}': {len(times)} times but {len(values)} values; they must pair up"
            )
        if not times:
            raise InputError(f"input '{self.target}' has no switch times")
        if any(b <= a for a, b in itertools.pairwise(times)):
            raise InputError(f"input '{self.target}': switch times must increase strictly, got {times}")
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "values", values)

    @classmethod
    def window(cls, target: str, start: float, stop: float, value: float, off: float = 0.0) -> Input:
        """A treatment window: ``target = value`` on ``[start, stop)``, ``off`` afterwards."""
        if not stop > start:
            raise InputError(f"input '{target}': window stop {stop} must be after start {start}")
        return cls(target, (start, stop), (value, off))


@dataclass(frozen=True)
class Schedule:
    """Everything given to a patient over time: bolus doses and piecewise-constant inputs."""

    doses: tuple[Bolus, ...] = field(default=())
    inputs: tuple[Input, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "doses", tuple(self.doses))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        targets = [i.target for i in self.inputs]
        dup = sorted({t for t in targets if targets.count(t) > 1})
        if dup:
            raise InputError(f"inputs given twice for {', '.join(dup)}: merge them into one Input")

    def __add__(self, other: Schedule) -> Schedule:
        return Schedule(self.doses + other.doses, self.inputs + other.inputs)

    @property
    def times(self) -> tuple[float, ...]:
        """Every time at which something happens, sorted, without repeats."""
        ts = {d.time for d in self.doses} | {t for i in self.inputs for t in i.times}
        return tuple(sorted(ts))

    @classmethod
    def of(cls, items: Sequence[Bolus | Input]) -> Schedule:
        """Build a schedule from a flat list of doses and inputs."""
        return cls(
            tuple(x for x in items if isinstance(x, Bolus)),
            tuple(x for x in items if isinstance(x, Input)),
        )
