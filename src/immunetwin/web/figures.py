"""Plotly figures of a twin: data with fit and forecast bands, latent states, scenarios, parameters.

Each function returns a ``plotly.graph_objects.Figure``; :mod:`immunetwin.web.report` embeds them.
Bands are weighted quantiles of the twin's particles (5-95 % and 25-75 %, median line); measured
values are dots, values below the limit of detection open triangles drawn at the limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from immunetwin.decisions import ScenarioComparison
from immunetwin.twin import Twin

__all__ = ["band_figure", "parameter_figure", "scenario_figure", "state_figure"]

_BLUE, _GREY, _RED = "31,119,180", "120,120,120", "214,39,40"


def _band(fig: go.Figure, t: np.ndarray, q: np.ndarray, levels: Sequence[float], colour: str, name: str,
          row: int | None = None, col: int | None = None, legend: bool = True) -> None:  # fmt: skip
    """Add 5-95 % and 25-75 % bands and the median of ``q`` (T, L) to ``fig``."""
    at = {round(float(v), 6): i for i, v in enumerate(levels)}
    pairs = [(0.05, 0.95, 0.15, "90%"), (0.25, 0.75, 0.3, "50%")]
    where = {"row": row, "col": col} if row is not None else {}
    for lo, hi, alpha, label in pairs:
        if lo in at and hi in at:
            x = np.concatenate([t, t[::-1]])
            y = np.concatenate([q[:, at[hi]], q[::-1, at[lo]]])
            fig.add_trace(go.Scatter(x=x, y=y, fill="toself", fillcolor=f"rgba({colour},{alpha})", line={"width": 0},
                                     name=f"{name} {label}", hoverinfo="skip", showlegend=legend), **where)  # fmt: skip
    if 0.5 in at:
        fig.add_trace(go.Scatter(x=t, y=q[:, at[0.5]], line={"color": f"rgb({colour})"}, name=f"{name} median",
                                 showlegend=legend), **where)  # fmt: skip


def band_figure(
    twin: Twin,
    name: str,
    fit: tuple[np.ndarray, np.ndarray],
    forecast: tuple[np.ndarray, np.ndarray],
    levels: Sequence[float],
    unit: str,
    lod: float | None,
) -> go.Figure:
    """One observable: the fit up to the reference time (grey), the forecast after it (blue), the
    measurements the twin has seen (black) and its alerts (red)."""
    fig = go.Figure()
    _band(fig, fit[0], fit[1], levels, _GREY, "fit")
    _band(fig, forecast[0], forecast[1], levels, _BLUE, "forecast")
    obs = twin.observations
    mine = np.asarray(obs.observable) == name
    t, v, c = np.asarray(obs.time)[mine], np.asarray(obs.value)[mine], np.asarray(obs.censored)[mine]
    fig.add_trace(go.Scatter(x=t[~c], y=v[~c], mode="markers", marker={"color": "black"}, name="measured"))
    if c.any():
        fig.add_trace(go.Scatter(x=t[c], y=v[c], mode="markers", name="below detection",
                                 marker={"symbol": "triangle-down-open", "color": "black", "size": 9}))  # fmt: skip
    alerts = [a for a in twin.alerts if a.observable == name]
    if alerts:
        fig.add_trace(go.Scatter(x=[a.time for a in alerts], y=[a.value for a in alerts], mode="markers",
                                 marker={"symbol": "x", "color": f"rgb({_RED})", "size": 13}, name="alert",
                                 text=[a.message for a in alerts], hoverinfo="text"))  # fmt: skip
    if lod is not None:
        fig.add_hline(y=lod, line={"dash": "dot", "color": "grey"}, annotation_text="limit of detection")
    fig.add_vline(x=twin.reference_time, line={"dash": "dash", "color": "black"}, annotation_text="now")
    fig.update_layout(title=f"{name} ({unit})", xaxis_title="days since infection", yaxis_title=unit,
                      template="plotly_white", height=380, margin={"t": 50, "b": 40})  # fmt: skip
    return fig


def state_figure(
    times: np.ndarray, states: Mapping[str, np.ndarray], levels: Sequence[float], units: Mapping[str, str],
    reference_time: float,
) -> go.Figure:  # fmt: skip
    """Small multiples of every latent state's bands (from infection to the horizon)."""
    names = list(states)
    cols = 3
    rows = max(1, math.ceil(len(names) / cols))
    titles = [f"{n} ({units.get(n, '')})" for n in names]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, vertical_spacing=0.6 / rows)
    for k, n in enumerate(names):
        r, c = k // cols + 1, k % cols + 1
        _band(fig, times, states[n], levels, _BLUE, n, row=r, col=c, legend=False)
        fig.add_vline(x=reference_time, line={"dash": "dash", "color": "black", "width": 1}, row=r, col=c)
    fig.update_layout(template="plotly_white", height=230 * rows, showlegend=False, margin={"t": 40, "b": 30})
    return fig


def scenario_figure(comparison: ScenarioComparison) -> go.Figure:
    """Posterior mean and credible interval of every outcome metric under every scenario."""
    metrics = comparison.metrics
    cols = 2
    rows = max(1, math.ceil(len(metrics) / cols))
    titles = [f"{m} ({comparison.units.get(m, '')})" for m in metrics]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, vertical_spacing=0.5 / rows)
    for k, m in enumerate(metrics):
        summ = [comparison.summary(s, m) for s in comparison.names]
        mean = np.array([s.mean for s in summ])
        lo, hi = np.array([s.lower for s in summ]), np.array([s.upper for s in summ])
        err = {"type": "data", "array": np.maximum(hi - mean, 0.0), "arrayminus": np.maximum(mean - lo, 0.0)}
        binary = m in comparison.binary
        fig.add_trace(go.Bar(x=list(comparison.names), y=mean, error_y=None if binary else err, name=m,
                             marker_color=f"rgb({_BLUE})"), row=k // cols + 1, col=k % cols + 1)  # fmt: skip
    fig.update_layout(template="plotly_white", height=260 * rows, showlegend=False, margin={"t": 40, "b": 30})
    return fig


def parameter_figure(twin: Twin) -> go.Figure:
    """Weighted histograms of the personalised parameters (log10 scale where the problem uses it)."""
    b = twin.belief
    ids = b.parameter_ids
    cols = 3
    rows = max(1, math.ceil(len(ids) / cols))
    titles = [f"{'log10 ' if s == 'log10' else ''}{p}" for p, s in zip(ids, b.scales, strict=True)]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles)
    for j, _ in enumerate(ids):
        fig.add_trace(go.Histogram(x=b.theta[:, j], y=b.weights, histfunc="sum", nbinsx=30,
                                   marker_color=f"rgb({_BLUE})"), row=j // cols + 1, col=j % cols + 1)  # fmt: skip
    fig.update_layout(template="plotly_white", height=230 * rows, showlegend=False, margin={"t": 40, "b": 30})
    return fig
