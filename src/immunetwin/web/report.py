"""A self-contained HTML report of one twin version (Plotly charts inlined; opens offline).

Sections: the patient and the twin's version history; data, fit and forecast bands of every
measured observable; latent states (e.g. tissue damage); the scenario comparison and the decision
with its reasons and its sensitivity to the utility weights; alerts; the belief's diagnostics; a
credibility section in the structure of ASME V&V 40-2018 (*Assessing Credibility of Computational
Modeling through Verification and Validation: Application to Medical Devices*): context of use and
question of interest, verification checks run on this twin, validation metrics of this patient's
own measurements, and an uncertainty summary with one handle per source named by the immune
digital twin roadmap (Laubenbacher et al. 2022, npj Digit Med 5:64): parametric (the posterior),
observational (the noise model), algorithmic (a solver-tolerance check) and structural (the
template's stated limits); and provenance.

The report renders what it is given: :func:`build_report` computes the fit and forecast bands and
runs the verification checks; the scenario comparison and decision come from
:mod:`immunetwin.decisions` (the CLI and the demo compute them with stated rules).
"""

from __future__ import annotations

import dataclasses
import html
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from scipy.stats import norm

from immunetwin.decisions import Decision, ScenarioComparison
from immunetwin.engines.integrate import Controls
from immunetwin.engines.ode import simulate_cohort
from immunetwin.errors import InputError
from immunetwin.twin import Forecast, Twin, forecast
from immunetwin.twin.belief import weighted_quantiles
from immunetwin.twin.particles import natural, simulate_particles
from immunetwin.web.figures import band_figure, parameter_figure, scenario_figure, state_figure

__all__ = ["Check", "Report", "build_report", "write_report"]

#: Tight tolerances of the algorithmic-uncertainty check (the twin's own are looser).
TIGHT = Controls(rtol=1e-10, atol=1e-12)
#: Particles re-simulated at tight tolerances (the heaviest ones).
CHECK_PARTICLES = 16


@dataclass(frozen=True)
class Check:
    """One verification check: what was checked, whether it passed, and the measured detail."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True, eq=False)
class Report:
    """A rendered report and the numbers behind it."""

    html: str
    forecast: Forecast
    checks: tuple[Check, ...]
    validation: Mapping[str, float]
    comparison: ScenarioComparison | None = None
    decision: Decision | None = None


def _fit_bands(twin: Twin, step: float) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Weighted quantiles from infection to the reference time: observables (model value) and states."""
    b = twin.belief
    times = np.arange(0.0, twin.reference_time + step / 2, step)
    out = simulate_particles(twin.template, natural(b.theta, b.parameter_ids, b.scales), times, start=0.0,
                             states=None, controls=twin.settings.controls)  # fmt: skip
    w = np.where(out.ok, b.weights, 0.0)
    w = w / w.sum()
    levels = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
    obs = {
        k: weighted_quantiles(v[out.ok], w[out.ok], levels).T
        for k, v in twin.template.observe(out.traj).items()
    }
    states = {s: weighted_quantiles(out.traj[s][out.ok], w[out.ok], levels).T for s in out.traj.state_ids}
    return out.times, obs, states


def _tolerance_check(twin: Twin, horizon_end: float) -> Check:
    """Max |difference| of every observable between the twin's tolerances and ``TIGHT``, in units of
    the observable's noise sd, for the heaviest particles; passes below 0.1 sd."""
    b, tpl = twin.belief, twin.template
    top = np.argsort(-b.weights)[: min(CHECK_PARTICLES, b.size)]
    pars = {k: v[top] for k, v in natural(b.theta, b.parameter_ids, b.scales).items()}
    times = np.linspace(0.0, horizon_end, 60)
    runs = [
        simulate_cohort(tpl.model, times, parameters=pars, controls=c)
        for c in (twin.settings.controls, TIGHT)
    ]
    ok = runs[0].ok & runs[1].ok
    worst, where = 0.0, ""
    for name, info in tpl.metadata.observables.items():
        a, t = tpl.observe(runs[0])[name][ok], tpl.observe(runs[1])[name][ok]
        d = float(np.nanmax(np.abs(a - t))) / info.noise.sigma if a.size else np.inf
        if d >= worst:
            worst, where = d, name
    c = twin.settings.controls
    detail = (f"{int(ok.sum())}/{len(top)} heaviest particles re-solved at rtol {TIGHT.rtol:g}/atol {TIGHT.atol:g}"
              f" (twin: rtol {c.rtol:g}/atol {c.atol:g}): largest difference {worst:.2g} noise sd ({where})")  # fmt: skip
    return Check("solver tolerance (algorithmic uncertainty)", bool(ok.all() and worst < 0.1), detail)


def _checks(twin: Twin, fc: Forecast, fit_states: Mapping[str, np.ndarray]) -> tuple[Check, ...]:
    b = twin.belief
    low = {s: float(q[:, 0].min()) for s, q in {**fit_states, **fc.states}.items()}
    negative = {s: v for s, v in low.items() if v < -1e-6}
    return (
        Check(
            "provenance chain",
            twin.verify(),
            f"{len(twin.history)} versions, every hash recomputed and equal",
        ),
        _tolerance_check(twin, float(fc.times[-1])),
        Check(
            "particle solves",
            fc.failed == 0,
            f"{fc.failed} of {fc.particles + fc.failed} forecast solves failed",
        ),
        Check(
            "effective sample size",
            b.ess >= min(100.0, 0.1 * b.size),
            f"ESS {b.ess:.0f} of {b.size} particles (method: {b.method})",
        ),
        Check(
            "non-negative states",
            not negative,
            "every state's 5% quantile >= 0" if not negative else f"negative: {negative}",
        ),
    )


def _validation(twin: Twin) -> dict[str, float]:
    """Calibration of this patient's measurements against the forecasts made before they were seen."""
    pct = np.array([s.percentile for s in twin.scores], dtype=float)
    out: dict[str, float] = {"scored measurements": float(pct.size), "alerts": float(len(twin.alerts))}
    if pct.size:
        for level in (0.5, 0.9, 0.95):
            out[f"inside central {level:.0%}"] = float(np.mean(np.abs(pct - 0.5) <= level / 2))
        out["mean probit (0 if unbiased)"] = float(np.mean(norm.ppf(np.clip(pct, 1e-6, 1 - 1e-6))))
    return out


def _html_table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda x: f"{x:.3g}", border=0, classes="table", na_rep="")


def _figure_html(fig: Any, first: bool) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=bool(first), config={"displaylogo": False})


def _history(twin: Twin) -> pd.DataFrame:
    rows = [{"version": t.version, "data up to day": t.reference_time, "measurements": len(t.observations),
             "verb": t.step.verb, "method": t.belief.method, "ESS": t.belief.ess,
             "new alerts": sum(a.version == t.version for a in t.alerts), "created": t.step.created,
             "provenance": t.provenance[:16]} for t in twin.history]  # fmt: skip
    return pd.DataFrame(rows)


def build_report(
    twin: Twin,
    *,
    horizon: float = 28.0,
    comparison: ScenarioComparison | None = None,
    decision: Decision | None = None,
    decision_note: str = "",
    step: float = 0.25,
) -> Report:
    """Compute the fit and forecast bands and the verification checks, and render the report.

    Args:
        twin: the twin version to report on (its history is shown too).
        horizon: forecast days after the reference time.
        comparison, decision: the scenario comparison and decision to show (optional).
        decision_note: when and by which version the decision was taken, if not by this one.
        step: grid of the fit bands (days).

    Raises:
        InputError: a non-positive horizon or step.
    """
    if not (horizon > 0 and step > 0):
        raise InputError(f"report: horizon and step must be positive, got {horizon}, {step}")
    fc = forecast(twin, horizon)
    fit_t, fit_obs, fit_states = _fit_bands(twin, step)
    checks = _checks(twin, fc, fit_states)
    validation = _validation(twin)
    meta = twin.template.metadata
    measured = [str(o) for o in dict.fromkeys(np.asarray(twin.observations.observable))]
    figs = [band_figure(twin, n, (fit_t, fit_obs[n]), (fc.times, fc.quantiles(n, "predictive")), fc.levels,
                        fc.units[n], fc.lod.get(n)) for n in measured]  # fmt: skip
    all_t = np.concatenate([fit_t, fc.times])
    states = {s: np.concatenate([fit_states[s], fc.states[s]]) for s in fc.states}
    figs.append(state_figure(all_t, states, fc.levels, fc.units, twin.reference_time))
    figs.append(parameter_figure(twin))
    if comparison is not None:
        figs.append(scenario_figure(comparison))
    rendered = [_figure_html(f, i == 0) for i, f in enumerate(figs)]
    n_obs = len(measured)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    source = resources.files("immunetwin.web").joinpath("templates/report.html.j2").read_text()
    noise = pd.DataFrame([{"observable": k, "unit": o.unit, "noise": o.noise.model, "sd": o.noise.sigma,
                           "limit of detection": o.lloq} for k, o in meta.observables.items()])  # fmt: skip
    page = env.from_string(source).render(
        twin=twin, meta=meta, now=datetime.now(UTC).isoformat(timespec="seconds"), horizon=horizon,
        observable_figures=rendered[:n_obs], state_figure=rendered[n_obs], parameter_figure=rendered[n_obs + 1],
        scenario_figure=rendered[n_obs + 2] if comparison is not None else None, comparison=comparison,
        decision=decision, decision_note=decision_note, checks=checks, validation=validation, markup=jinja2.utils.markupsafe.Markup,
        history_table=_html_table(_history(twin)), belief_table=_html_table(twin.belief.summary()),
        noise_table=_html_table(noise),
        comparison_table=_html_table(comparison.to_frame()) if comparison is not None else "",
        decision_table=_html_table(decision.to_frame()) if decision is not None else "",
        alerts=twin.alerts, settings=dataclasses.asdict(twin.settings), escape=html.escape,
    )  # fmt: skip
    return Report(page, fc, checks, validation, comparison, decision)


def write_report(report: Report, path: str | Path) -> Path:
    """Write the HTML atomically (a temporary file in the same folder, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(report.html)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
