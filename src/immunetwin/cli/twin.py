"""``immunetwin twin``: personalise a twin, absorb new measurements, forecast, show its history.

Every command reads or writes one twin file (a zip holding the whole history, provenance-checked on
load; :func:`immunetwin.twin.save_twin`). Measurement CSVs have the columns ``observable``, ``time``
(days since the twin's origin, e.g. infection), ``value`` and optionally ``censored`` and ``unit``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from immunetwin.errors import InputError

__all__ = ["app"]

app = typer.Typer(
    name="twin",
    help="Digital twins: personalise, assimilate new measurements (with drift alerts), forecast, show.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _csv(path: Path) -> Any:
    import pandas as pd

    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return pd.read_csv(path)
    except (ValueError, OSError) as err:
        raise InputError(f"{path}: not a readable CSV ({err})") from None


def _key(seed: int) -> Any:
    import jax

    return jax.random.PRNGKey(seed)


@app.command("personalise")
def personalise_cmd(
    csv: Annotated[Path, typer.Argument(help="Measurements: observable, time, value[, censored][, unit]")],
    template: Annotated[str, typer.Option(help="Template name, e.g. viral_immune")],
    patient: Annotated[str, typer.Option(help="Patient id")],
    out: Annotated[Path, typer.Option(help="Twin file to write (zip)")],
    estimate: Annotated[
        list[str] | None, typer.Option(help="Parameter to personalise (repeat; default: the template's)")
    ] = None,
    draws: Annotated[int, typer.Option(help="Particles of the belief")] = 1000,
    method: Annotated[
        str, typer.Option(help="tempering (SMC from the prior) or laplace (MAP + importance sampling)")
    ] = "tempering",
    starts: Annotated[int, typer.Option(help="laplace: MAP starts")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
) -> None:
    """Personalise a template to one patient's measurements: writes twin version 1."""
    from immunetwin.twin import LaplaceImportance, Tempering, TwinSettings, personalise, save_twin

    methods = {"tempering": Tempering(), "laplace": LaplaceImportance(starts=starts)}
    if method not in methods:
        raise InputError(f"--method '{method}': choose tempering or laplace")
    console = Console(highlight=False)
    data = _csv(csv)
    with console.status(f"personalising {template} on {len(data)} measurements ({method})..."):
        twin = personalise(template, data, patient=patient, key=_key(seed), estimate=estimate, draws=draws,
                           settings=TwinSettings(personalisation=methods[method]))  # fmt: skip
    save_twin(twin, out)
    _summary(console, twin)
    console.print(f"twin written to {out}")


@app.command("assimilate")
def assimilate_cmd(
    twin_file: Annotated[Path, typer.Argument(metavar="TWIN", help="Twin file")],
    csv: Annotated[Path, typer.Argument(help="New measurements (none before the twin's reference time)")],
    out: Annotated[Path | None, typer.Option(help="Twin file to write (default: replace TWIN)")] = None,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
) -> None:
    """Absorb new measurements, one update per measurement day (each day scored against the forecast
    made before it); alerts are printed and kept on the twin."""
    import jax

    from immunetwin.twin import assimilate, load_twin, save_twin

    console = Console(highlight=False)
    twin = load_twin(twin_file)
    data = _csv(csv)
    if "time" not in data.columns:
        raise InputError(f"{csv}: missing column 'time'")
    days = sorted(data["time"].unique())
    first_alert = len(twin.alerts)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("assimilating", total=len(days))
        for k, day in enumerate(days):
            bar.update(task, description=f"assimilating day {day:g}")
            twin = assimilate(twin, data[data["time"] == day], key=jax.random.fold_in(_key(seed), k))
            bar.advance(task)
    save_twin(twin, out or twin_file)
    _summary(console, twin)
    for alert in twin.alerts[first_alert:]:
        console.print(f"ALERT: {alert.message}", style="bold red", markup=False)
    console.print(f"twin written to {out or twin_file}")


def _schedule(twin: Any, treatment: list[str] | None, args: list[str] | None) -> Any:
    """The sum of the template's interventions ``name`` or ``name(key=value, ...)``; ``args`` apply to each."""
    from immunetwin.cli.simulate import parse_assignments

    if not treatment:
        if args:
            raise InputError("--arg needs a --treatment")
        return None
    common = parse_assignments(args, "--arg")
    total = None
    for term in treatment:
        match = re.fullmatch(r"\s*(\w+)\s*(?:\((.*)\))?\s*", term)
        if match is None:
            raise InputError(f"--treatment {term!r}: expected NAME or NAME(key=value, ...)")
        own = parse_assignments(
            [x for x in (match.group(2) or "").split(",") if x.strip()], f"--treatment {term}"
        )
        schedule = twin.template.intervention(match.group(1), **(common | own))
        total = schedule if total is None else total + schedule
    return total


@app.command("forecast")
def forecast_cmd(
    twin_file: Annotated[Path, typer.Argument(metavar="TWIN", help="Twin file")],
    horizon: Annotated[float, typer.Option(help="Days after the twin's reference time")] = 28.0,
    out: Annotated[
        Path | None, typer.Option(help="CSV of every quantile (quantity, kind, unit, time, q5..q95)")
    ] = None,
    treatment: Annotated[
        list[str] | None,
        typer.Option(help="Template intervention, e.g. antiviral or 'antiviral(start=9)' (repeat)"),
    ] = None,
    arg: Annotated[
        list[str] | None,
        typer.Option("--arg", help="Argument NAME=VALUE of every treatment, e.g. start=9 (repeat)"),
    ] = None,
) -> None:
    """Forecast every observable and latent state (5/25/50/75/95% predictive quantiles)."""
    from immunetwin.twin import forecast, load_twin

    console = Console(highlight=False)
    twin = load_twin(twin_file)
    result = forecast(twin, horizon, _schedule(twin, treatment, arg))
    table = Table(title=f"{twin.patient}: forecast of version {twin.version} ({result.scenario})")
    table.add_column("day")
    for name in result.predictive:
        table.add_column(f"{name} median [90%]")
    step = max(1, len(result.times) // 8)
    for k in range(0, len(result.times), step):
        cells = [
            f"{q[k, 2]:.3g} [{q[k, 0]:.3g}, {q[k, -1]:.3g}]" for q in map(result.quantiles, result.predictive)
        ]
        table.add_row(f"{result.times[k]:g}", *cells)
    console.print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        result.to_frame().to_csv(out, index=False)
        console.print(f"forecast written to {out}")


@app.command("show")
def show_cmd(twin_file: Annotated[Path, typer.Argument(metavar="TWIN", help="Twin file")]) -> None:
    """Show a twin: identity, version history, belief and alerts."""
    from immunetwin.twin import load_twin

    console = Console(highlight=False)
    twin = load_twin(twin_file)
    _summary(console, twin)
    history = Table(title="history")
    for col in ("version", "verb", "data to day", "rows", "method", "ESS", "alerts", "created", "provenance"):
        history.add_column(col)
    for t in twin.history:
        history.add_row(str(t.version), t.step.verb, f"{t.reference_time:g}", str(t.step.rows), t.belief.method,
                        f"{t.belief.ess:.0f}", str(len(t.alerts)), t.step.created, t.provenance[:12])  # fmt: skip
    console.print(history)
    console.print(twin.belief.summary().to_string(index=False), markup=False)
    for alert in twin.alerts:
        console.print(f"alert (v{alert.version}): {alert.message}", style="bold red", markup=False)


def _summary(console: Console, twin: Any) -> None:
    b = twin.belief
    console.print(
        f"[bold]{twin.patient}[/]: {twin.template_name} {twin.template_version}, version {twin.version},"
        f" data to day {twin.reference_time:g} ({len(twin.observations)} measurements), {b.size} particles"
        f" (ESS {b.ess:.0f}, {b.method}), {len(twin.alerts)} alerts, provenance {twin.provenance[:12]}"
    )
