"""In-silico trial definitions: the :class:`TrialSpec` value and its YAML form.

.. code-block:: yaml

    name: antiviral-timing
    template: viral_immune
    seed: 20261123
    horizon: 28            # days simulated from infection
    step: 0.25             # output spacing (days)
    population:
      source: prior        # or {twins: [a.zip, b.zip], spread: 0.1}, or {population: fit.nc}
      parameters: [beta, p, delta, a_T, p_LI]   # prior source only; default: the estimated ones
      constraints:         # plausible patients (untreated course); null = open bound
        peak_viral_load: [6, 9.5]
        time_to_clearance: [null, 25]
      match:               # optional: prevalence selection (Allen et al. 2016) to observed values
        target: {peak_viral_load: {mean: 7.5, sd: 0.8}}
        pool: 20000
    arms:                  # name: scenario spec (template interventions)
      none: none
      early: antiviral(start=2)
      late: antiviral(start=6)
    control: none
    endpoints: [peak_damage, severe, time_to_clearance]
    design: paired         # every patient in every arm; or parallel (randomised)
    allocation: [1, 1, 1]  # parallel only: arm ratio; permuted blocks of block_size
    block_size: 6
    sample_size: 1000      # patients per arm
    level: 0.95
    solver: {method: rodas5p, rtol: 1.0e-6, atol: 1.0e-9, backend: xla}  # backend: xla or native (C, CPU)
    execution: {chunk_size: 2048, workers: 1, scheduler: null}  # overlap: chunks in flight in process

``{population: fit.nc}`` draws new patients from a hierarchical population fit saved with
:meth:`~immunetwin.inference.population.PopulationFit.save` (its random parameters vary, the others keep
the template's values; the random ids must be parameters of ``template``). File paths (twins, population
fit) are relative to the YAML file. Errors name the file and the key (``trial.yaml: arms.early: ...``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from immunetwin.cohorts.matching import NormalTarget
from immunetwin.cohorts.population import Constraint, Match
from immunetwin.engines.ode import BACKENDS
from immunetwin.errors import ImmunetwinError, InputError

__all__ = ["TrialSpec", "load_trial", "parse_trial"]

DESIGNS = ("paired", "parallel")
_TOP = {"name", "description", "template", "seed", "horizon", "step", "population", "arms", "control",
        "endpoints", "design", "allocation", "block_size", "sample_size", "level", "solver", "execution"}  # fmt: skip


@dataclass(frozen=True)
class TrialSpec:
    """A trial (see the module docstring for every field). ``twins`` are paths of saved twins,
    ``population_fit`` the path of a saved population fit (``source`` ``"population"``)."""

    name: str
    template: str
    arms: Mapping[str, str]
    endpoints: tuple[str, ...]
    sample_size: int
    control: str
    seed: int = 0
    description: str = ""
    horizon: float = 28.0
    step: float = 0.25
    design: str = "paired"
    allocation: tuple[float, ...] = ()
    block_size: int = 0
    level: float = 0.95
    source: str = "prior"
    parameters: tuple[str, ...] | None = None
    twins: tuple[str, ...] = ()
    spread: float = 0.1
    population_fit: str | None = None
    constraints: tuple[Constraint, ...] = ()
    match: Match | None = None
    solver: str = "rodas5p"
    rtol: float = 1e-6
    atol: float = 1e-9
    backend: str = "xla"
    chunk_size: int = 2048
    workers: int = 1
    scheduler: str | None = None
    overlap: int | None = None  # in process: chunks in flight (None: 2 on a GPU, 1 on a CPU)
    where: str = field(default="trial", compare=False)

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(self.arms)

    @property
    def patients(self) -> int:
        """Virtual patients needed: ``sample_size`` (paired) or ``sample_size x arms`` (parallel)."""
        return self.sample_size * (1 if self.design == "paired" else len(self.arms))


def _fail(where: str, key: str, message: str) -> InputError:
    return InputError(f"{where}: {key}: {message}")


def _backend(where: str, raw: Any) -> str:
    if raw not in BACKENDS:
        raise _fail(where, "solver.backend", f"must be one of {', '.join(BACKENDS)}, got {raw!r}")
    return str(raw)


def _number(where: str, key: str, raw: Any, *, positive: bool = False, integer: bool = False) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise _fail(where, key, f"must be a number, got {raw!r}")
    value = float(raw)
    if not math.isfinite(value) or (positive and value <= 0) or (integer and value != int(value)):
        kind = "a positive " if positive else "a finite "
        raise _fail(where, key, f"must be {kind}{'whole ' if integer else ''}number, got {raw!r}")
    return value


def _constraints(where: str, raw: Any) -> tuple[Constraint, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise _fail(where, "population.constraints", "must map a quantity to [lower, upper]")
    out = []
    for name, bounds in raw.items():
        key = f"population.constraints.{name}"
        if not isinstance(bounds, list | tuple) or len(bounds) != 2:
            raise _fail(where, key, f"must be [lower, upper] (null for an open bound), got {bounds!r}")
        lo = -math.inf if bounds[0] is None else _number(where, key, bounds[0])
        hi = math.inf if bounds[1] is None else _number(where, key, bounds[1])
        try:
            out.append(Constraint(str(name), lo, hi))
        except InputError as err:
            raise _fail(where, key, str(err)) from None
    return tuple(out)


def _match(where: str, raw: Any) -> Match | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("target"), Mapping) or not raw["target"]:
        raise _fail(where, "population.match", "needs target: {quantity: {mean: m, sd: s}, ...}")
    names, means, sds = [], [], []
    for name, dist in raw["target"].items():
        key = f"population.match.target.{name}"
        if not isinstance(dist, Mapping) or set(dist) != {"mean", "sd"}:
            raise _fail(where, key, "must be {mean: m, sd: s}")
        names.append(str(name))
        means.append(_number(where, key + ".mean", dist["mean"]))
        sds.append(_number(where, key + ".sd", dist["sd"], positive=True))
    pool = raw.get("pool")
    if pool is not None:
        pool = int(_number(where, "population.match.pool", pool, positive=True, integer=True))
    return Match(NormalTarget(tuple(names), tuple(means), tuple(sds)), pool)


def _population(where: str, raw: Any, base: Path) -> dict[str, Any]:
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise _fail(where, "population", "must be a mapping")
    unknown = set(raw) - {"source", "parameters", "constraints", "match"}
    if unknown:
        raise _fail(where, "population", f"unknown keys {sorted(unknown)}")
    out: dict[str, Any] = {"constraints": _constraints(where, raw.get("constraints")),
                           "match": _match(where, raw.get("match"))}  # fmt: skip
    source = raw.get("source", "prior")
    if source == "prior":
        params = raw.get("parameters")
        if params is not None and (
            not isinstance(params, list) or not all(isinstance(p, str) for p in params)
        ):
            raise _fail(where, "population.parameters", "must be a list of parameter ids")
        out |= {"source": "prior", "parameters": tuple(params) if params is not None else None}
    elif isinstance(source, Mapping) and "population" in source:
        out |= _population_fit(where, raw, source, base)
    elif isinstance(source, Mapping) and "twins" in source:
        files = source["twins"]
        if raw.get("parameters") is not None:
            why = "applies to the prior source only; twins perturb their own personalised parameters"
            raise _fail(where, "population.parameters", why)
        if not isinstance(files, list) or not files:
            raise _fail(where, "population.source.twins", "must be a non-empty list of twin files")
        spread = _number(where, "population.source.spread", source.get("spread", 0.1))
        out |= {"source": "twins", "twins": tuple(str((base / f).resolve()) for f in files), "spread": spread}
    else:
        raise _fail(
            where,
            "population.source",
            f"must be 'prior', {{twins: [...]}} or {{population: fit.nc}}, got {source!r}",
        )
    return out


def _population_fit(
    where: str, raw: Mapping[str, Any], source: Mapping[str, Any], base: Path
) -> dict[str, Any]:
    """``population.source: {population: fit.nc}``: the fit's path, taken from ``base``."""
    unknown = set(source) - {"population"}
    if unknown:
        raise _fail(where, "population.source", f"unknown keys {sorted(unknown)} beside population")
    file = source["population"]
    if not isinstance(file, str) or not file:
        raise _fail(where, "population.source.population", f"must be the path of a saved fit, got {file!r}")
    if raw.get("parameters") is not None:
        why = "applies to the prior source only; a population fit varies its own random parameters"
        raise _fail(where, "population.parameters", why)
    return {"source": "population", "population_fit": str((base / file).resolve())}


def parse_trial(raw: Any, *, where: str = "trial", base: Path = Path(".")) -> TrialSpec:
    """A :class:`TrialSpec` from parsed YAML; relative twin and population-fit paths are taken from
    ``base``."""
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: a trial must be a YAML mapping")
    unknown = set(raw) - _TOP
    if unknown:
        raise _fail(
            where, "(top level)", f"unknown keys {sorted(unknown)} (known: {', '.join(sorted(_TOP))})"
        )
    for key in ("name", "template", "arms", "endpoints", "sample_size", "control"):
        if key not in raw:
            raise _fail(where, key, "is required")
    arms = raw["arms"]
    if not isinstance(arms, Mapping) or len(arms) < 2:
        raise _fail(where, "arms", "needs at least two arms, as name: scenario spec")
    arms = {str(k): str(v) for k, v in arms.items()}
    if str(raw["control"]) not in arms:
        raise _fail(where, "control", f"'{raw['control']}' is not an arm (arms: {', '.join(arms)})")
    endpoints = raw["endpoints"]
    if not isinstance(endpoints, list) or not endpoints or not all(isinstance(e, str) for e in endpoints):
        raise _fail(where, "endpoints", "must be a non-empty list of outcome metrics")
    design = raw.get("design", "paired")
    if design not in DESIGNS:
        raise _fail(where, "design", f"must be one of {', '.join(DESIGNS)}, got {design!r}")
    allocation = tuple(
        _number(where, "allocation", a, positive=True) for a in raw.get("allocation", [1] * len(arms))
    )
    if len(allocation) != len(arms):
        raise _fail(where, "allocation", f"needs one ratio per arm ({len(arms)}), got {len(allocation)}")
    level = _number(where, "level", raw.get("level", 0.95))
    if not 0 < level < 1:
        raise _fail(where, "level", f"must be in (0, 1), got {level}")
    solver = raw.get("solver") or {}
    execution = raw.get("execution") or {}
    if not isinstance(solver, Mapping) or not isinstance(execution, Mapping):
        raise _fail(where, "solver/execution", "must be mappings")
    scheduler = execution.get("scheduler")
    if scheduler is not None and (not isinstance(scheduler, str) or "://" not in scheduler):
        raise _fail(
            where,
            "execution.scheduler",
            f"must be a scheduler address like tcp://host:8786, got {scheduler!r}",
        )
    try:
        return TrialSpec(
            name=str(raw["name"]), template=str(raw["template"]), arms=arms, endpoints=tuple(endpoints),
            sample_size=int(_number(where, "sample_size", raw["sample_size"], positive=True, integer=True)),
            control=str(raw["control"]), seed=int(_number(where, "seed", raw.get("seed", 0), integer=True)),
            description=str(raw.get("description", "")),
            horizon=_number(where, "horizon", raw.get("horizon", 28.0), positive=True),
            step=_number(where, "step", raw.get("step", 0.25), positive=True), design=design,
            allocation=allocation,
            block_size=int(_number(where, "block_size", raw.get("block_size", 0) or 0, integer=True)),
            level=level, solver=str(solver.get("method", "rodas5p")),
            rtol=_number(where, "solver.rtol", solver.get("rtol", 1e-6), positive=True),
            atol=_number(where, "solver.atol", solver.get("atol", 1e-9), positive=True),
            backend=_backend(where, solver.get("backend", "xla")),
            chunk_size=int(_number(where, "execution.chunk_size", execution.get("chunk_size", 2048), positive=True, integer=True)),
            workers=int(_number(where, "execution.workers", execution.get("workers", 1), positive=True, integer=True)),
            scheduler=scheduler, where=where,
            overlap=None if execution.get("overlap") is None else int(_number(where, "execution.overlap", execution["overlap"], positive=True, integer=True)),
            **_population(where, raw.get("population"), base),
        )  # fmt: skip
    except ImmunetwinError as err:
        if str(err).startswith(where):
            raise
        raise InputError(f"{where}: {err}") from None


def load_trial(path: str | Path) -> TrialSpec:
    """Read and check a trial YAML file (errors name the file and the key)."""
    path = Path(path)
    where = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark is not None else ""
        raise InputError(f"{where}:{line} invalid YAML ({getattr(err, 'problem', err)})") from None
    return parse_trial(raw, where=where, base=path.parent)
