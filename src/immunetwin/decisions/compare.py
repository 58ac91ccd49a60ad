"""``compare_scenarios``: simulate a twin's particles under each scenario and summarise the outcomes.

The particles are simulated with the template's model under every scenario (common random numbers, see
:mod:`immunetwin.decisions.comparison` for the summaries, the censoring of time-to-event metrics and the
handling of failed solves), and every outcome metric of the template is computed per particle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np

from immunetwin.decisions.comparison import ScenarioComparison, _check_scenarios
from immunetwin.decisions.scenarios import NO_TREATMENT, Scenario, scenario, standard_scenarios
from immunetwin.decisions.stats import normalise_log_weights
from immunetwin.engines.integrate import Controls
from immunetwin.engines.ode import simulate_cohort
from immunetwin.engines.solvers import AbstractMethod
from immunetwin.errors import InputError, UnknownIdError
from immunetwin.spec.schedule import Schedule
from immunetwin.templates import Template

__all__ = ["BATCH", "compare_scenarios"]

#: Most simulations per cohort solve. Bounds the trajectories held at once (about 190 MB for the
#: 14-state ``viral_immune`` at 401 output times) while letting every batch reuse one compiled program.
BATCH = 1024


def _check_parameters(parameters: Mapping[str, object]) -> dict[str, np.ndarray]:
    if not parameters:
        raise InputError("parameters: give at least one parameter with one value per particle")
    out = {k: np.asarray(v, dtype=float) for k, v in parameters.items()}
    for key, arr in out.items():
        if arr.ndim != 1:
            raise InputError(f"parameters['{key}'] must be 1-D (one value per particle), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise InputError(f"parameters['{key}'] contains NaN or infinite values")
    sizes = sorted({a.shape[0] for a in out.values()})
    if len(sizes) > 1:
        raise InputError(f"parameter arrays disagree on the number of particles: {sizes}")
    if sizes[0] == 0:
        raise InputError("parameters: there are no particles (empty draws)")
    return out


def _output_times(horizon: float, step: float) -> np.ndarray:
    if not (math.isfinite(horizon) and horizon > 0):
        raise InputError(f"horizon must be a positive number of days, got {horizon}")
    if not (math.isfinite(step) and 0 < step <= horizon):
        raise InputError(f"step must be in (0, horizon], got {step}")
    return np.linspace(0.0, horizon, math.ceil(horizon / step - 1e-9) + 1)


def _as_scenarios(template: Template, scenarios: Sequence[Scenario | str] | None) -> tuple[Scenario, ...]:
    if scenarios is None:
        return standard_scenarios(template)
    if isinstance(scenarios, str | Scenario):
        raise InputError("scenarios must be a sequence of scenarios or specs, e.g. ['none', 'antiviral']")
    return tuple(s if isinstance(s, Scenario) else scenario(template, s) for s in scenarios)


def _simulate(
    template: Template,
    params: Mapping[str, np.ndarray],
    schedules: Sequence[Schedule],
    times: np.ndarray,
    solver: AbstractMethod | None,
    controls: Controls,
    progress: Callable[[int, int], None] | None,
) -> dict[str, np.ndarray]:
    """Every outcome metric of every particle under every schedule, ``(S, n_scenarios)``, NaN on failure.

    Simulations are ordered particle by particle (all schedules of particle 0, then of particle 1, ...)
    and solved in equal batches of at most :data:`BATCH`, the last one padded by wrapping around: every
    batch has the same size and contains every schedule, so all batches share one compiled program, and
    no more than one batch of trajectories is held in memory.
    """
    size, n = next(iter(params.values())).shape[0], len(schedules)
    total = size * n
    batch = -(-total // -(-total // BATCH))  # equal batches of at most BATCH: at most one wasted per batch
    out: dict[str, list[np.ndarray]] = {}
    for lo in range(0, total, batch):
        idx = np.arange(lo, lo + batch) % total
        keep = min(batch, total - lo)
        cohort = simulate_cohort(
            template.model, times, parameters={k: v[idx // n] for k, v in params.items()},
            schedule=[schedules[j] for j in idx % n], solver=solver, controls=controls, chunk_size=batch,
        )  # fmt: skip
        ok = np.asarray(cohort.ok)[:keep]
        for k, v in template.outcomes(cohort).items():
            out.setdefault(k, []).append(np.where(ok, np.asarray(v, dtype=float)[:keep], np.nan))
        if progress is not None:
            progress(lo + keep, total)
    return {k: np.concatenate(v).reshape(size, n) for k, v in out.items()}


def compare_scenarios(
    template: Template,
    parameters: Mapping[str, object],
    scenarios: Sequence[Scenario | str] | None = None,
    *,
    horizon: float,
    log_weights: object = None,
    reference: str = NO_TREATMENT,
    higher_is_better: Collection[str] | None = None,
    level: float = 0.9,
    step: float = 0.1,
    solver: AbstractMethod | None = None,
    controls: Controls = Controls(),
    progress: Callable[[int, int], None] | None = None,
) -> ScenarioComparison:
    """Simulate the same particles under each scenario and summarise every outcome metric.

    Particle ``i`` runs under every scenario with the same parameters. All scenarios are solved together
    in batches of at most :data:`BATCH` simulations that share one compiled program (see
    :func:`_simulate`).

    Args:
        template: the template (its model, interventions and outcome metrics).
        parameters: parameter draws by id, each ``(S,)`` (natural scale); other parameters keep their
            model values.
        scenarios: :class:`Scenario` objects or specs (``"antiviral(start=3)"``); default
            :func:`standard_scenarios`.
        horizon: simulate days ``0 .. horizon`` from the template's time origin.
        log_weights: ``(S,)`` log importance weights of the particles; ``None`` for equal weights.
        reference: the scenario paired differences are taken against.
        higher_is_better: metrics for which a larger value is better; ``None`` (default) takes the
            template's outcome metadata (``better: higher``, e.g. ``lymphocyte_nadir``).
        level: mass of the central credible intervals.
        step: output spacing in days (time-to-event metrics are interpolated between outputs).
        solver, controls: passed to :func:`~immunetwin.engines.ode.simulate_cohort`.
        progress: ``progress(done, total)`` over the ``S * len(scenarios)`` simulations.

    Raises:
        InputError: empty or ragged draws, non-finite values, bad weights, horizon, step or level.
        UnknownIdError: an unknown parameter id, reference or metric.
        TemplateError: an unknown intervention or argument in a scenario spec.
        SolverError: every particle failed under some scenario.
    """
    params = _check_parameters(parameters)
    size = next(iter(params.values())).shape[0]
    normalise_log_weights(log_weights, size)  # fail before simulating
    scen = _check_scenarios(_as_scenarios(template, scenarios), reference)
    if higher_is_better is None:
        higher_is_better = [k for k, o in template.metadata.outcomes.items() if o.better == "higher"]
    for m in higher_is_better:
        if m not in template.metadata.outcomes:
            raise UnknownIdError("outcome metric (in higher_is_better)", m, tuple(template.metadata.outcomes))
    if not 0.0 < level < 1.0:
        raise InputError(f"level must be in (0, 1), got {level}")
    times = _output_times(horizon, step)
    outcomes = _simulate(template, params, [s.schedule for s in scen], times, solver, controls, progress)
    values = {s.name: {k: v[:, j] for k, v in outcomes.items()} for j, s in enumerate(scen)}
    info = template.metadata.outcomes
    return ScenarioComparison.from_values(
        scen, values, log_weights=log_weights, reference=reference,
        units={k: o.unit for k, o in info.items()},
        binary=[k for k, o in info.items() if o.kind == "exceeds"],
        timed=[k for k, o in info.items() if o.kind == "time_below"],
        higher_is_better=higher_is_better, horizon=float(times[-1]), level=level,
        interventions=tuple(template.metadata.interventions),
    )  # fmt: skip
