"""``immunetwin simulate``: one patient or a cohort, to CSV and a self-contained Plotly HTML plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from immunetwin.errors import InputError, MalformedModelError

__all__ = ["parse_assignments", "simulate"]

_SOLVERS = ("rodas5p", "rodas5", "dopri5")


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: '{text}' is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{where}: '{text}' is not a finite number")
    return value


def parse_assignments(items: list[str] | None, option: str) -> dict[str, float]:
    """``["k=0.5", "V=3"]`` -> ``{"k": 0.5, "V": 3.0}``; a bad item raises InputError naming it."""
    out: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{option} {item!r}: expected ID=VALUE")
        out[key.strip()] = _number(value.strip(), f"{option} {item}")
    return out


def _parse_doses(items: list[str] | None) -> list:
    from immunetwin.spec.schedule import Bolus

    doses = []
    for item in items or []:
        parts = item.split(":")
        if len(parts) != 3:
            raise InputError(f"--dose {item!r}: expected TARGET:TIME:AMOUNT, e.g. D:1.5:100")
        doses.append(
            Bolus(
                parts[0], _number(parts[1], f"--dose {item} time"), _number(parts[2], f"--dose {item} amount")
            )
        )
    return doses


def _load(model: str):
    from immunetwin import load_model

    path = Path(model)
    if path.exists():
        return load_model(path)
    try:
        from immunetwin.templates import list_templates, load_template
    except ImportError:
        raise MalformedModelError(f"{model}: no such model file") from None
    if model in list_templates():
        return load_template(model).model
    raise MalformedModelError(
        f"{model}: no such model file or template (templates: {', '.join(list_templates())})"
    )


def _solver(name: str):
    from immunetwin import Dopri5, Rodas5, Rodas5P

    table = {"rodas5p": Rodas5P, "rodas5": Rodas5, "dopri5": Dopri5}
    if name.lower() not in table:
        raise InputError(f"--solver {name!r}: choose one of {', '.join(_SOLVERS)}")
    return table[name.lower()]()


def _cohort_table(path: Path) -> dict[str, np.ndarray]:
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the cohort CSV: {exc}") from None
    if frame.empty:
        raise InputError(f"{path}: the cohort CSV has no rows")
    out = {}
    for col in frame.columns:
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise InputError(
                f"{path}: row {bad[0] + 2}, column '{col}': "
                f"{frame[col].iloc[bad[0]]!r} is not a finite number"
            )
        out[str(col)] = values
    return out


def _plot_single(frame: pd.DataFrame, title: str, path: Path) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for col in frame.columns[1:]:
        fig.add_trace(go.Scatter(x=frame["time"], y=frame[col], mode="lines", name=col))
    fig.update_layout(title=title, xaxis_title="time (days)", yaxis_title="value", template="plotly_white")
    fig.write_html(path, include_plotlyjs=True, full_html=True)


def _plot_cohort(times: np.ndarray, bands: dict[str, np.ndarray], title: str, path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(bands)
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, subplot_titles=names)
    for row, name in enumerate(names, start=1):
        q05, q50, q95 = bands[name]
        fig.add_trace(go.Scatter(x=times, y=q95, line={"width": 0}, showlegend=False), row=row, col=1)
        fig.add_trace(
            go.Scatter(
                x=times, y=q05, fill="tonexty", line={"width": 0}, name=f"{name} 5-95%", showlegend=False
            ),
            row=row,
            col=1,
        )
        fig.add_trace(go.Scatter(x=times, y=q50, name=f"{name} median", showlegend=False), row=row, col=1)
    fig.update_layout(title=title, height=260 * len(names), template="plotly_white")
    fig.update_xaxes(title_text="time (days)", row=len(names), col=1)
    fig.write_html(path, include_plotlyjs=True, full_html=True)


def simulate(
    model: Annotated[str, typer.Argument(help="Model file (.ant Antimony or .xml SBML) or a template name.")],
    days: Annotated[float, typer.Option(help="Simulate from day 0 to this day.")] = 28.0,
    points: Annotated[
        int | None, typer.Option(help="Number of output times (default: 10 per day + 1).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Parameter value, ID=VALUE (repeatable).")
    ] = None,
    init: Annotated[
        list[str] | None, typer.Option(help="Initial value of a state, ID=VALUE (repeatable).")
    ] = None,
    dose: Annotated[list[str] | None, typer.Option(help="Bolus dose TARGET:DAY:AMOUNT (repeatable).")] = None,
    cohort: Annotated[
        Path | None,
        typer.Option(help="CSV of parameter sets: one row per patient, one column per parameter/initial id."),
    ] = None,
    solver: Annotated[
        str, typer.Option(help="rodas5p (stiff, default), rodas5, or dopri5 (non-stiff).")
    ] = "rodas5p",
    rtol: Annotated[float, typer.Option(help="Relative tolerance.")] = 1e-6,
    atol: Annotated[float, typer.Option(help="Absolute tolerance.")] = 1e-9,
    backend: Annotated[
        str,
        typer.Option(
            help="xla (JAX, default: CPU or GPU, any model) or native (the model built as C with this "
            "machine's compiler: CPU, no events, fastest for cohorts)."
        ),
    ] = "xla",
    all_columns: Annotated[
        bool, typer.Option("--all-columns", help="Write every quantity, not only states.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Write the trajectory as CSV (time in days, one column per state).")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a self-contained Plotly HTML plot.")] = None,
) -> None:
    """Simulate MODEL for one patient (or a cohort with --cohort) and write CSV / HTML."""
    from immunetwin import Controls, Schedule, simulate_cohort
    from immunetwin import simulate as simulate_one

    console = Console(stderr=True)
    if not (days > 0 and math.isfinite(days)):
        raise InputError(f"--days {days}: must be a positive number of days")
    n_points = points if points is not None else round(days * 10) + 1
    if n_points < 2:
        raise InputError(f"--points {n_points}: need at least 2 output times")
    if not (rtol > 0 and atol > 0):
        raise InputError("--rtol and --atol must be positive")
    m = _load(model)
    times = np.linspace(0.0, days, n_points)
    params = parse_assignments(set_, "--set")
    initial = parse_assignments(init, "--init")
    sched = Schedule.of(_parse_doses(dose))
    method = _solver(solver)
    ctl = Controls(rtol=rtol, atol=atol)
    columns = list(m.ids) if all_columns else None
    if cohort is None:
        traj = simulate_one(
            m, times, parameters=params, initial=initial, schedule=sched, solver=method, controls=ctl,
            backend=backend,
        )  # fmt: skip
        if not traj.ok:
            raise InputError(f"the solve failed ({traj.status}); try --solver rodas5p or looser --rtol")
        frame = traj.to_frame(columns)
        if out:
            frame.to_csv(out, index=False)
            console.print(f"wrote {out} ({len(frame)} rows, {len(frame.columns) - 1} columns)")
        if plot:
            _plot_single(frame, f"{m.spec.name}: simulated trajectory", plot)
            console.print(f"wrote {plot}")
        if not out and not plot:
            typer.echo(frame.to_string(index=False, max_rows=30))
        return
    table = _cohort_table(cohort)
    table = {k: v for k, v in table.items() if k not in ("patient", "id")}
    with Progress(
        TextColumn("simulating cohort"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("cohort", total=len(next(iter(table.values()))))
        result = simulate_cohort(
            m,
            times,
            parameters=table | params,
            initial=initial,
            schedule=sched,
            solver=method,
            controls=ctl,
            chunk_size=1024,
            progress=lambda done, total: bar.update(task, completed=done),
            backend=backend,
        )
    failed = int((~result.ok).sum())
    if failed:
        console.print(f"[yellow]warning:[/] {failed} of {len(result)} patients failed; see the status column")
    frame = result.to_frame(columns)
    if out:
        frame.to_csv(out, index=False)
        console.print(f"wrote {out} ({len(result)} patients x {len(times)} times)")
    if plot:
        names = columns or list(result.state_ids)
        bands = {n: np.nanpercentile(result[n][result.ok], [5, 50, 95], axis=0) for n in names}
        _plot_cohort(times, bands, f"{m.spec.name}: cohort of {len(result)} (median, 5-95%)", plot)
        console.print(f"wrote {plot}")
