"""``immunetwin demo``: the whole twin cycle on one real person's viral loads (the README's main job).

1. Data: participant ``ke01`` (default) of Ke et al. 2022 (Nat Microbiol 7:640; daily nasal swabs,
   CC-BY-4.0, shipped as :mod:`immunetwin.datasets`); model time is days since infection (symptom
   onset + 5 days, Lauer et al. 2020).
2. Personalise the ``viral_immune`` template on the first ``--first`` swabs: a twin, version 1.
3. Forecast, compare treatment scenarios that start now (none, antiviral, anti-inflammatory, both)
   and decide with a stated expected-utility rule; scan the antiviral's start day.
4. Receive the later swabs one at a time: assimilate each (a new version), score it against the
   forecast made before it, raise alerts.
5. Write the report of the last version (with the decision taken at version 1), the twin file
   (whole history), the forecast and decision tables; print where the report is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["demo"]

#: The stated decision rule (points lost, lower is better): a severe course costs 100, each day of
#: viral shedding 1; an antiviral course 2 and an anti-inflammatory course 5 (side effects, cost).
WEIGHTS = {"severe": 100.0, "time_to_clearance": 1.0}
COSTS = {"antiviral": 2.0, "anti_inflammatory": 5.0}


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the report, the twin file and the tables.")] = Path(
        "out"
    ),
    participant: Annotated[str, typer.Option(help="Ke 2022 participant id (ke01..ke60).")] = "ke01",
    first: Annotated[int, typer.Option(help="Swabs the first twin is personalised on.")] = 4,
    draws: Annotated[int, typer.Option(help="Particles of the twin's belief.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed (every random choice derives from it).")] = 2022,
) -> None:
    """Run the whole twin cycle on a real person's viral loads and write a report."""
    import jax

    from immunetwin.datasets import ke2022_nasal, viral_load_table
    from immunetwin.decisions import ExpectedUtility, best_start_day, compare_scenarios, decide, scenario
    from immunetwin.templates import load_template
    from immunetwin.twin import assimilate, forecast, personalise, save_twin
    from immunetwin.web import build_report, write_report

    console = Console()
    started = time.perf_counter()
    template = load_template("viral_immune")
    data = viral_load_table(ke2022_nasal(), participant)
    if not 2 <= first < len(data):
        raise typer.BadParameter(f"--first must lie in [2, {len(data) - 1}] for {participant}")
    keys = jax.random.split(jax.random.PRNGKey(seed), len(data) + 2)
    later = data.iloc[first:]
    out.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(
            f"personalising viral_immune on {participant}'s first {first} swabs", total=5 + len(later)
        )
        twin = personalise(template, data.iloc[:first], patient=participant, key=keys[0], draws=draws,
                           estimate=("V0", "beta", "p", "a_T", "kappa_E"))  # fmt: skip
        bar.advance(task)
        bar.update(task, description="forecasting and comparing treatments that start now")
        now = twin.reference_time
        forecast(twin, 14.0).to_frame().to_csv(out / "forecast_v1.csv", index=False)
        specs = ["none", f"antiviral(start={now:g})", f"anti_inflammatory(start={now:g})",
                 f"antiviral(start={now:g})+anti_inflammatory(start={now:g})"]  # fmt: skip
        params = twin.belief.values
        comparison = compare_scenarios(template, params, [scenario(template, s) for s in specs], horizon=40.0,
                                       log_weights=twin.belief.log_weights)  # fmt: skip
        rule = ExpectedUtility(WEIGHTS, treatment_costs=COSTS)
        decision = decide(comparison, rule)
        decision.to_frame().to_csv(out / "decision_v1.csv", index=False)
        bar.advance(task, 2)
        bar.update(task, description="scanning the antiviral's start day")
        timing = best_start_day(template, params, "antiviral", [now + d for d in range(0, 6)], rule, horizon=40.0,
                                log_weights=twin.belief.log_weights)  # fmt: skip
        timing.to_frame().to_csv(out / "antiviral_start_day_v1.csv", index=False)
        bar.advance(task)
        for i in range(len(later)):
            row = later.iloc[[i]]
            bar.update(task, description=f"assimilating the swab of day {float(row['time'].iloc[0]):g}")
            twin = assimilate(twin, row, key=keys[2 + i])
            bar.advance(task)
        bar.update(task, description="writing the report")
        note = (f"Taken on day {now:g} by version 1 of the twin (its first {first} swabs), before the later "
                f"swabs; this report shows version {twin.version}.")  # fmt: skip
        report = build_report(
            twin, horizon=14.0, comparison=comparison, decision=decision, decision_note=note
        )
        path = write_report(report, out / "report.html")
        save_twin(twin, out / "twin.zip")
        bar.advance(task)
    console.print(f"twin of {participant}: {twin!r}")
    console.print(f"decision on day {now:g} (version 1): [bold]{decision.action}[/] {decision.chosen or ''}")
    for reason in decision.reasons:
        console.print(f"  - {reason}")
    best = "none feasible" if timing.best_day is None else f"day {timing.best_day:g}"
    console.print(f"best antiviral start day (scanned {timing.days[0]:g}-{timing.days[-1]:g}): {best}")
    console.print(f"alerts: {len(twin.alerts)}; versions: {len(twin.history)}; "
                  f"took {time.perf_counter() - started:.0f} s")  # fmt: skip
    console.print(f"report: [bold]{path.resolve()}[/]")
