"""One self-contained HTML page for an in-silico trial: design, population, endpoints, contrasts.

Figures (Plotly, the library inlined once so the page works offline): a forest plot of every arm's
difference to the control with its interval, per endpoint, and the distribution of each endpoint per arm
(box plots of up to :data:`MAX_POINTS` patients per arm).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["MAX_POINTS", "build_trial_report", "write_trial_report"]

#: Most patients per arm drawn in a box plot (an evenly spaced subset beyond that).
MAX_POINTS = 2000
#: One colour per arm, the same in every panel.
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")


def forest_figure(result: Any) -> go.Figure:
    """Difference to the control (point and interval) of every arm, one panel per endpoint."""
    spec, c = result.spec, result.contrasts
    ends = list(spec.endpoints)
    fig = make_subplots(rows=1, cols=len(ends), subplot_titles=ends, shared_yaxes=True)
    for j, e in enumerate(ends, start=1):
        rows = c[c.endpoint == e]
        fig.add_trace(go.Scatter(x=rows.estimate, y=rows.arm, mode="markers", marker={"size": 9},
                                 error_x={"type": "data", "symmetric": False, "array": rows.upper - rows.estimate,
                                          "arrayminus": rows.estimate - rows.lower},
                                 name=e, showlegend=False), row=1, col=j)  # fmt: skip
        fig.add_vline(x=0.0, line={"dash": "dot", "color": "grey"}, row=1, col=j)
    fig.update_layout(title=f"Difference to '{spec.control}' ({spec.level:.0%} intervals)", height=320)
    return fig


def endpoint_figure(result: Any) -> go.Figure:
    """Box plots of each endpoint per arm (times never reached drawn at the horizon)."""
    spec, table = result.spec, result.patients
    kinds = dict(zip(result.summary.endpoint, result.summary.kind, strict=True))
    ends = [e for e in spec.endpoints if kinds[e] != "binary"]
    fig = make_subplots(rows=1, cols=max(1, len(ends)), subplot_titles=ends or ["(binary endpoints only)"])
    for j, e in enumerate(ends, start=1):
        for k, arm in enumerate(spec.arm_names):
            x = table.loc[(table.arm == arm) & table.ok, e].to_numpy(float)
            x = (
                np.minimum(x, spec.horizon)[np.linspace(0, len(x) - 1, min(len(x), MAX_POINTS)).astype(int)]
                if len(x)
                else x
            )
            fig.add_trace(
                go.Box(
                    y=x,
                    name=arm,
                    showlegend=j == 1,
                    legendgroup=arm,
                    boxpoints=False,
                    marker_color=_PALETTE[k % len(_PALETTE)],
                ),
                row=1,
                col=j,
            )
    fig.update_layout(title="Endpoint distributions per arm", height=360)
    return fig


def _table(frame: Any) -> str:
    return frame.to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0, classes="t")


def build_trial_report(result: Any) -> str:
    """The report page as an HTML string."""
    spec, pop = result.spec, result.population
    figs = [forest_figure(result), endpoint_figure(result)]
    plots = "".join(f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs))
    arms = "".join(f"<li><b>{html.escape(a)}</b>: {html.escape(s)}</li>" for a, s in spec.arms.items())
    cons = "".join(f"<li>{html.escape(str(c))}</li>" for c in spec.constraints) or "<li>none</li>"
    match = ""
    if pop.match is not None:
        pv = ", ".join(f"{k}: {v:.3f}" for k, v in pop.match.ks_pvalues.items())
        match = (f"<p>Matched by prevalence selection (Allen et al. 2016) from {pop.match.pool} plausible patients: "
                 f"selection rate {pop.match.acceptance_rate:.1%}, KS p-values {html.escape(pv)}"
                 + ("." if pop.match.adequate else ": <b>the target is not reproduced</b> (a KS test rejects it at 5%).")
                 + "</p>")  # fmt: skip
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(spec.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto}}table.t{{border-collapse:collapse}}
table.t td,table.t th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}</style></head><body>
<h1>In-silico trial: {html.escape(spec.name)}</h1><p>{html.escape(spec.description)}</p>
<h2>Design</h2><p>Template <b>{html.escape(spec.template)}</b>, {spec.design} design, {spec.sample_size} patients per
arm, horizon {spec.horizon:g} days, seed {spec.seed}, control <b>{html.escape(spec.control)}</b>.</p><ul>{arms}</ul>
<h2>Population</h2><p>{html.escape(pop.source)}. {len(pop)} patients from {pop.drawn} candidates
(acceptance {pop.acceptance_rate:.1%}; failed solves {pop.failed}). Plausibility constraints:</p><ul>{cons}</ul>{match}
<h2>Contrasts</h2>{_table(result.contrasts)}<h2>Endpoints per arm</h2>{_table(result.summary)}
<p>Failed solves per arm: {html.escape(str(result.failed))}. Intervals describe Monte Carlo uncertainty over the
virtual patients; time-to-event endpoints are restricted means up to the horizon.</p>{plots}</body></html>"""


def write_trial_report(result: Any, path: str | Path) -> Path:
    """Write :func:`build_trial_report` to ``path`` (atomically)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(build_trial_report(result), encoding="utf-8")
    tmp.replace(path)
    return path
