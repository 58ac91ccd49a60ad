"""Virtual populations: candidates from a source, kept when plausible, optionally matched to data.

:func:`sample_population` draws candidate patients from a :mod:`~immunetwin.cohorts.sources` source,
simulates them untreated, and keeps those whose outputs satisfy every plausibility
:class:`Constraint` (physiological ranges; Allen et al. 2016 call these *plausible patients*). With a
``match`` it then selects among the plausible patients by prevalence selection
(:mod:`~immunetwin.cohorts.matching`) so that the population reproduces an observed distribution.
Candidates are drawn in rounds sized by the acceptance rate seen so far; every number (candidates
drawn, plausible, rejected by each constraint, failed solves, selected) is kept in the result.

Quantities are named like this: ``peak_viral_load`` is a template outcome metric of the untreated
course; ``viral_load@5`` is the observable ``viral_load`` read at day 5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from immunetwin.cohorts.execute import Executor, InProcess, Opened, Probe, Work, check_work, run_chunks
from immunetwin.cohorts.matching import MatchResult, NormalTarget, SampleTarget, prevalence_select
from immunetwin.cohorts.sources import FromPrior, Source
from immunetwin.errors import InputError, UnknownIdError
from immunetwin.templates import Template

__all__ = ["Constraint", "Match", "VirtualPopulation", "quantity", "rng_from_key", "sample_population"]


def rng_from_key(key: Any) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key (or an int seed): host-side, so the same on any device."""
    from immunetwin.runtime import key_data

    data = (int(key),) if isinstance(key, int | np.integer) else key_data(key)
    return np.random.default_rng(np.random.SeedSequence([abs(x) for x in data]))


@dataclass(frozen=True)
class Quantity:
    """An outcome metric (``probe is None``) or an observable at a day."""

    name: str
    outcome: str | None
    probe: Probe | None


def quantity(template: Template, name: str) -> Quantity:
    """Parse ``metric`` or ``observable@day`` against the template."""
    meta = template.metadata
    if "@" in name:
        obs, _, day = name.partition("@")
        if obs not in meta.observables:
            raise UnknownIdError(f"observable (in '{name}')", obs, tuple(meta.observables))
        try:
            t = float(day)
        except ValueError:
            raise InputError(f"'{name}': the day after '@' must be a number") from None
        return Quantity(name, None, Probe(obs, t))
    if name not in meta.outcomes:
        raise UnknownIdError("outcome metric", name, tuple(meta.outcomes))
    return Quantity(name, name, None)


@dataclass(frozen=True)
class Constraint:
    """Plausibility: ``lower <= quantity <= upper`` on the untreated course (either bound may be open)."""

    quantity: str
    lower: float = -math.inf
    upper: float = math.inf

    def __post_init__(self) -> None:
        lo, hi = float(self.lower), float(self.upper)
        if math.isnan(lo) or math.isnan(hi) or not lo <= hi:
            raise InputError(f"constraint on '{self.quantity}': need lower <= upper, got [{lo}, {hi}]")
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)

    def __str__(self) -> str:
        return f"{self.lower:g} <= {self.quantity} <= {self.upper:g}"


@dataclass(frozen=True)
class Match:
    """Prevalence selection to ``target`` from a plausible pool of ``pool`` patients (default 10 x n)."""

    target: NormalTarget | SampleTarget
    pool: int | None = None


@dataclass(frozen=True)
class VirtualPopulation:
    """A virtual population and how it was made.

    Attributes:
        template: template name.
        parameter_ids: varied parameters, the columns of ``values`` (natural scale); the others keep
            their template values.
        values: (N, d) parameter sets.
        source: description of the source.
        constraints: plausibility constraints applied.
        drawn: candidates simulated (or drawn, without constraints); ``plausible`` passed them all;
            ``failed`` solves among the candidates; ``rejected`` counts per constraint (a candidate can
            fail several).
        match: the prevalence selection, when one was asked for.
        horizon, step: the untreated simulation used for the checks.
    """

    template: str
    parameter_ids: tuple[str, ...]
    values: np.ndarray = field(repr=False)
    source: str
    constraints: tuple[Constraint, ...] = ()
    drawn: int = 0
    plausible: int = 0
    failed: int = 0
    rejected: Mapping[str, int] = field(default_factory=dict)
    match: MatchResult | None = None
    horizon: float = 0.0
    step: float = 0.0

    def __post_init__(self) -> None:
        v = np.array(self.values, dtype=float)
        v.setflags(write=False)
        object.__setattr__(self, "values", v)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def acceptance_rate(self) -> float:
        """Fraction of the candidates drawn that ended in the population."""
        return len(self) / self.drawn if self.drawn else 1.0

    @property
    def parameters(self) -> dict[str, np.ndarray]:
        return {p: self.values[:, j] for j, p in enumerate(self.parameter_ids)}

    def take(self, index: np.ndarray) -> VirtualPopulation:
        """The patients at ``index`` (same provenance)."""
        from dataclasses import replace

        return replace(self, values=self.values[np.asarray(index)])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"patient": np.arange(len(self))} | self.parameters)

    def summary(self) -> dict[str, Any]:
        out = {"size": len(self), "source": self.source, "drawn": self.drawn, "plausible": self.plausible,
               "failed": self.failed, "acceptance_rate": self.acceptance_rate,
               "rejected_by": dict(self.rejected), "constraints": [str(c) for c in self.constraints]}  # fmt: skip
        if self.match is not None:
            out["match"] = {"pool": self.match.pool, "beta": self.match.beta,
                            "selection_rate": self.match.acceptance_rate, "ks_pvalues": dict(self.match.ks_pvalues),
                            "adequate": self.match.adequate}  # fmt: skip
        return out


def _values(res: Any, quantities: Sequence[Quantity], probes: Sequence[Probe]) -> np.ndarray:
    cols = [res.outcomes[q.outcome][:, 0] if q.probe is None else res.probes[:, 0, probes.index(q.probe)] for q in quantities]  # fmt: skip
    return np.stack(cols, axis=1) if cols else np.zeros((len(res.ok), 0))


def sample_population(
    template: Template,
    n: int,
    *,
    key: Any,
    source: Source = FromPrior(),
    constraints: Sequence[Constraint] = (),
    match: Match | None = None,
    horizon: float = 28.0,
    step: float = 0.25,
    max_draws: int | None = None,
    chunk_size: int = 2048,
    executor: Executor = InProcess(),
    progress: Callable[[int, int], None] | None = None,
) -> VirtualPopulation:
    """``n`` virtual patients of ``template`` from ``source``, plausible under ``constraints``.

    Args:
        template: the template.
        n: patients wanted.
        key: JAX random key or int seed (every random number comes from it, on the host).
        source: :class:`~immunetwin.cohorts.sources.FromPrior` (default), ``FromPopulation`` or
            ``FromTwins``.
        constraints: plausibility constraints on the untreated course.
        match: select among the plausible patients to match an observed distribution.
        horizon, step: the untreated simulation used for constraints and matching.
        max_draws: most candidates to simulate (default ``50 x`` the plausible patients needed).
        chunk_size, executor: how the candidate simulations run (see :func:`run_chunks`).
        progress: ``progress(plausible_so_far, needed)``.

    Raises:
        InputError: ``n < 1``, too few plausible patients within ``max_draws`` (the message gives the
            rejections by constraint), or a match that cannot select ``n``.
        UnknownIdError: a constraint or target names an unknown outcome or observable.
    """
    if int(n) != n or n < 1:
        raise InputError(f"a population needs n >= 1 patients, got {n}")
    rng = rng_from_key(key)
    quantities = [quantity(template, c.quantity) for c in constraints]
    matched = [quantity(template, name) for name in (match.target.names if match else ())]
    needed = int(match.pool or 10 * n) if match else int(n)
    if not quantities and not matched:
        values = source.draw(template, int(n), rng)
        return _population(template, source, values, (), drawn=int(n), plausible=int(n))
    probes = tuple(dict.fromkeys(q.probe for q in [*quantities, *matched] if q.probe is not None))
    work = Work(template.name, ("none",), horizon, step, probes, root=str(template.path.parent))
    check_work(work)
    limit = int(max_draws or 50 * needed)
    kept: list[dict[str, np.ndarray]] = []
    kept_match: list[np.ndarray] = []
    drawn = plausible = failed = 0
    rejected = {str(c): 0 for c in constraints}
    with executor.session() as run:  # one session (one cluster start) for every round
        opened = Opened(run)
        while plausible < needed:
            rate = plausible / drawn if drawn else 1.0
            size = min(limit - drawn, max(64, math.ceil((needed - plausible) / max(rate, 0.02) * 1.1)))
            if size <= 0:
                raise InputError(
                    f"only {plausible} of {needed} candidates were plausible after {drawn} draws (max_draws); "
                    f"failed solves {failed}; rejected by constraint: "
                    + ", ".join(f"{k}: {v}" for k, v in rejected.items())
                )
            values = source.draw(template, size, rng)
            res = run_chunks(work, values, chunk_size=chunk_size, executor=opened)
            ok, x = res.ok[:, 0], _values(res, quantities, probes)
            inside = [(x[:, j] >= c.lower) & (x[:, j] <= c.upper) for j, c in enumerate(constraints)]
            good = np.logical_and.reduce([ok, *inside])
            idx = np.flatnonzero(good)[: needed - plausible]
            used = int(idx[-1]) + 1 if plausible + len(idx) >= needed else size  # candidates looked at
            for c, ins in zip(constraints, inside, strict=True):
                rejected[str(c)] += int(np.sum(ok[:used] & ~ins[:used]))
            drawn, failed = drawn + used, failed + int(np.sum(~ok[:used]))
            kept.append({k: v[idx] for k, v in values.items()})
            kept_match.append(_values(res, matched, probes)[idx])
            plausible += len(idx)
            if progress is not None:
                progress(plausible, needed)
    pool = {k: np.concatenate([c[k] for c in kept]) for k in kept[0]}
    result = None
    if match is not None:
        result = prevalence_select(np.concatenate(kept_match), match.target, rng, minimum=int(n))
        pool = {k: v[result.selected[: int(n)]] for k, v in pool.items()}
    return _population(template, source, pool, tuple(constraints), drawn=drawn, plausible=plausible,
                       failed=failed, rejected=rejected, match=result, horizon=horizon, step=step)  # fmt: skip


def _population(template: Template, source: Source, values: Mapping[str, np.ndarray],
                constraints: tuple[Constraint, ...], **fields: Any) -> VirtualPopulation:  # fmt: skip
    ids = tuple(values)
    matrix = np.stack([values[k] for k in ids], axis=1) if ids else np.zeros((0, 0))
    return VirtualPopulation(template.name, ids, matrix, source.describe(), constraints, **fields)
