"""In-silico trials: a virtual population, arms, randomisation, endpoints with intervals.

:func:`run_trial` makes the population (:func:`~immunetwin.cohorts.population.sample_population`),
assigns patients to arms, simulates each patient under its arm(s) chunk by chunk (in process or on
Dask, :mod:`~immunetwin.cohorts.execute`) and summarises every endpoint (a template outcome metric):

* ``paired`` design (the default for virtual trials): every virtual patient receives every arm, so arm
  contrasts are paired per patient - the in-silico crossover that removes between-patient variance
  (common random numbers);
* ``parallel`` design: patients are randomised to arms by permuted blocks in the allocation ratio,
  contrasts are between independent groups, as in the real trial being planned.

Endpoint kinds follow the template's outcome metadata: ``exceeds`` metrics are binary (proportions,
Wilson / Newcombe intervals), ``time_below`` metrics (e.g. time to clearance, infinite when never
reached) are summarised as the *restricted mean* up to the horizon,
:math:`E[\\min(T, \\tau)]` (Royston & Parmar 2013, BMC Med Res Methodol 13:152), with the fraction not
reaching the event reported beside it; the others are means. Intervals are in
:mod:`immunetwin.cohorts.stats`. Patients whose solve failed are left out of the analysis (in every arm
for the paired design) and counted.

Reproducibility: every random number comes from ``spec.seed`` on the host, and a patient's results do not
depend on the chunk it is solved in, so the result is identical for any chunk size and number of workers.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from immunetwin.cohorts.execute import DaskCluster, Executor, InProcess, Opened, Work, run_chunks
from immunetwin.cohorts.population import VirtualPopulation, sample_population
from immunetwin.cohorts.sources import FromPopulation, FromPrior, FromTwins, Source
from immunetwin.cohorts.stats import (
    Interval,
    diff_means,
    diff_paired,
    diff_proportions,
    mean_interval,
    wilson,
)
from immunetwin.cohorts.trialspec import TrialSpec
from immunetwin.errors import ImmunetwinError, InputError, SolverError, UnknownIdError
from immunetwin.templates import Template, load_template

if TYPE_CHECKING:
    from immunetwin.inference.population import PopulationFit

__all__ = ["TrialResult", "assign_arms", "run_trial", "write_trial"]

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TrialResult:
    """What a trial produced.

    Attributes:
        spec: the trial definition.
        population: the virtual population (with its acceptance numbers).
        patients: one row per patient and arm received: ``patient``, ``arm``, ``ok`` and every endpoint
            (raw values: a time never reached is ``inf``).
        summary: one row per arm and endpoint: ``kind``, ``estimate``, ``lower``, ``upper``, ``n`` and,
            for time-to-event endpoints, ``not_reached`` (fraction).
        contrasts: one row per non-control arm and endpoint: difference to the control with its interval.
        failed: failed solves per arm.
        seconds: wall time of population and simulation.
    """

    spec: TrialSpec
    population: VirtualPopulation
    patients: pd.DataFrame = field(repr=False)
    summary: pd.DataFrame = field(repr=False)
    contrasts: pd.DataFrame = field(repr=False)
    failed: dict[str, int]
    seconds: float

    def contrast(self, arm: str, endpoint: str) -> Interval:
        row = self.contrasts[(self.contrasts.arm == arm) & (self.contrasts.endpoint == endpoint)]
        if row.empty:
            raise UnknownIdError("contrast (arm, endpoint)", f"{arm}, {endpoint}", tuple(
                f"{a}, {e}" for a, e in zip(self.contrasts.arm, self.contrasts.endpoint, strict=True)))  # fmt: skip
        r = row.iloc[0]
        return Interval(float(r.estimate), float(r.lower), float(r.upper), int(r.n))


def _check(spec: TrialSpec, template: Template) -> None:
    from immunetwin.decisions.scenarios import scenario

    for name, arm in spec.arms.items():
        try:
            scenario(template, arm)
        except ImmunetwinError as err:  # re-raised with the arm named
            raise InputError(f"{spec.where}: arms.{name}: {err}") from None
    for e in spec.endpoints:
        if e not in template.metadata.outcomes:
            raise InputError(f"{spec.where}: endpoints: unknown outcome metric '{e}' "
                             f"(known: {', '.join(template.metadata.outcomes)})")  # fmt: skip


def _source(spec: TrialSpec, template: Template) -> Source:
    if spec.source == "twins":
        from immunetwin.twin import load_twin

        return FromTwins(tuple(load_twin(p, template=template) for p in spec.twins), spec.spread)
    if spec.source == "population":
        return FromPopulation(_population_fit(spec, template))
    return FromPrior(spec.parameters)


def _population_fit(spec: TrialSpec, template: Template) -> PopulationFit:
    """The saved population fit of ``spec``; its random ids must be parameters of ``template``."""
    from immunetwin.inference.population import load_population_fit

    where = f"{spec.where}: population.source.population"
    if not spec.population_fit:
        raise InputError(f"{where}: is required with source 'population'")
    try:
        fit = load_population_fit(spec.population_fit)
    except InputError as err:
        raise InputError(f"{where}: {err}") from None
    unknown = [p for p in fit.random if p not in template.metadata.parameters]
    if unknown:
        raise InputError(f"{where}: random parameter(s) {', '.join(unknown)} of the fit are not parameters "
                         f"of {template.name}")  # fmt: skip
    return fit


def assign_arms(
    n: int, allocation: tuple[float, ...], block_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Permuted-block randomisation of ``n`` patients to arms ``0 .. A-1`` in the integer ``allocation``.

    Each block holds ``block_size`` patients (default: twice the sum of the ratios) in the allocation
    ratio, in random order; the last block is cut at ``n``.
    """
    units = [int(a) for a in allocation]
    if any(u != a or u < 1 for u, a in zip(units, allocation, strict=True)):
        raise InputError(
            f"allocation ratios must be whole numbers >= 1 for block randomisation, got {allocation}"
        )
    unit = sum(units)
    size = block_size or 2 * unit
    if size % unit:
        raise InputError(f"block_size {size} must be a multiple of the allocation total {unit}")
    block = np.repeat(np.arange(len(units)), [u * size // unit for u in units])
    blocks = [rng.permutation(block) for _ in range(-(-n // size))]
    return np.concatenate(blocks)[:n]


def _endpoint_kind(template: Template, endpoint: str) -> str:
    kind = template.metadata.outcomes[endpoint].kind
    return {"exceeds": "binary", "time_below": "time"}.get(kind, "continuous")


def _restricted(x: np.ndarray, kind: str, horizon: float) -> np.ndarray:
    return np.minimum(x, horizon) if kind == "time" else x


def _summaries(spec: TrialSpec, template: Template, values: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    rows = []
    for arm, by_end in values.items():
        for e in spec.endpoints:
            kind, x = _endpoint_kind(template, e), by_end[e]
            iv = wilson(int(np.sum(x)), len(x), spec.level) if kind == "binary" else mean_interval(
                _restricted(x, kind, spec.horizon), spec.level)  # fmt: skip
            rows.append({"arm": arm, "endpoint": e, "kind": kind, "unit": template.metadata.outcomes[e].unit}
                        | asdict(iv) | {"not_reached": float(np.mean(np.isinf(x))) if kind == "time" and len(x) else math.nan})  # fmt: skip
    return pd.DataFrame(rows)


def _contrasts(spec: TrialSpec, template: Template, values: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    rows = []
    ctl = values[spec.control]
    for arm, by_end in values.items():
        if arm == spec.control:
            continue
        for e in spec.endpoints:
            kind = _endpoint_kind(template, e)
            x, y = _restricted(by_end[e], kind, spec.horizon), _restricted(ctl[e], kind, spec.horizon)
            if spec.design == "paired":
                iv = diff_paired(x, y, spec.level)
            else:
                iv = diff_proportions(x, y, spec.level) if kind == "binary" else diff_means(x, y, spec.level)
            better = template.metadata.outcomes[e].better
            rows.append({"arm": arm, "control": spec.control, "endpoint": e, "kind": kind,
                         "better": better or "lower"} | asdict(iv))  # fmt: skip
    return pd.DataFrame(rows)


def _executor(spec: TrialSpec) -> Executor:
    if spec.scheduler or spec.workers > 1:
        return DaskCluster(address=spec.scheduler, workers=spec.workers)
    return InProcess(overlap=spec.overlap)


def run_trial(
    spec: TrialSpec,
    *,
    executor: Executor | None = None,
    template: Template | None = None,
    progress: Progress | None = None,
) -> TrialResult:
    """Run an in-silico trial (see the module docstring).

    Args:
        spec: the trial (:func:`~immunetwin.cohorts.load_trial`).
        executor: where chunks run; default from ``spec`` (``InProcess`` for one worker and no
            scheduler, else ``DaskCluster``).
        template: the template object (default: loaded by ``spec.template``).
        progress: ``progress(stage, done, total)``, stage ``"population"`` or ``"simulation"``.

    Raises:
        InputError: an unknown arm intervention, endpoint, constraint quantity; too few plausible
            patients.
        SolverError: every patient of an arm failed.
    """
    start = time.perf_counter()
    template = template or load_template(spec.template)
    _check(spec, template)
    with (executor or _executor(spec)).session() as run:
        return _run(spec, template, Opened(run), progress, start)


def _run(
    spec: TrialSpec, template: Template, executor: Executor, progress: Progress | None, start: float
) -> TrialResult:
    stage = (lambda name: lambda d, t: progress(name, d, t)) if progress else (lambda name: None)
    population = sample_population(
        template, spec.patients, key=spec.seed, source=_source(spec, template), constraints=spec.constraints,
        match=spec.match, horizon=spec.horizon, step=spec.step, chunk_size=spec.chunk_size,
        executor=executor, progress=stage("population"),
    )  # fmt: skip
    arms = spec.arm_names
    params = population.parameters
    work = dict(template=template.name, horizon=spec.horizon, step=spec.step, rtol=spec.rtol, atol=spec.atol,
                solver=spec.solver, root=str(template.path.parent), backend=spec.backend,
                outcomes=tuple(spec.endpoints))  # fmt: skip
    if spec.design == "paired":
        res = run_chunks(Work(arms=tuple(spec.arms.values()), **work), params, chunk_size=spec.chunk_size,
                         executor=executor, progress=stage("simulation"))  # fmt: skip
        assigned = {a: np.arange(len(population)) for a in arms}
        ok_all = res.ok.all(axis=1)
        raw = {a: {e: res.outcomes[e][:, j] for e in spec.endpoints} for j, a in enumerate(arms)}
        oks = {a: res.ok[:, j] for j, a in enumerate(arms)}
        used = {a: ok_all for a in arms}
    else:
        # a stream of its own, apart from the population's
        rng = np.random.default_rng(np.random.SeedSequence([abs(spec.seed), 1]))
        group = assign_arms(len(population), spec.allocation, spec.block_size, rng)
        assigned, raw, oks, used = {}, {}, {}, {}
        for j, a in enumerate(arms):
            idx = np.flatnonzero(group == j)
            res = run_chunks(Work(arms=(spec.arms[a],), **work), {k: v[idx] for k, v in params.items()},
                             chunk_size=spec.chunk_size, executor=executor, progress=stage(f"simulation {a}"))  # fmt: skip
            assigned[a], oks[a], used[a] = idx, res.ok[:, 0], res.ok[:, 0]
            raw[a] = {e: res.outcomes[e][:, 0] for e in spec.endpoints}
    for a in arms:
        if not np.any(used[a]):
            raise SolverError(f"trial '{spec.name}': every patient's solve failed in arm '{a}'")
    values = {a: {e: raw[a][e][used[a]] for e in spec.endpoints} for a in arms}
    table = pd.concat([pd.DataFrame({"patient": assigned[a], "arm": a, "ok": oks[a]} | raw[a]) for a in arms],
                      ignore_index=True)  # fmt: skip
    return TrialResult(spec, population, table, _summaries(spec, template, values),
                       _contrasts(spec, template, values), {a: int(np.sum(~oks[a])) for a in arms},
                       time.perf_counter() - start)  # fmt: skip


def write_trial(result: TrialResult, out: str | Path) -> dict[str, Path]:
    """Write the result to folder ``out``: ``patients.parquet``, ``population.parquet``,
    ``summary.parquet``, ``contrasts.parquet`` and ``trial.json`` (spec, population numbers, timing).
    Each file is written to a temporary name and renamed, so a crash leaves no half-written file."""
    from immunetwin import __version__

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    frames = {"patients": result.patients, "population": result.population.to_frame(),
              "summary": result.summary, "contrasts": result.contrasts}  # fmt: skip
    written = {}
    for name, frame in frames.items():
        path = folder / f"{name}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)
        written[name] = path
    spec = {k: v for k, v in asdict(result.spec).items() if k not in ("constraints", "match", "where")}
    meta = {"spec": spec, "constraints": [str(c) for c in result.spec.constraints],
            "population": result.population.summary(), "failed": result.failed,
            "seconds": result.seconds, "immunetwin_version": __version__}  # fmt: skip
    path = folder / "trial.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=_json_default), encoding="utf-8")
    tmp.replace(path)
    written["trial"] = path
    return written


def _json_default(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else str(x)
