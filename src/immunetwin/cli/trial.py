"""``immunetwin trial``: run an in-silico trial from a YAML file (see :mod:`immunetwin.cohorts.trialspec`)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["app"]

app = typer.Typer(
    help="In-silico trials on virtual populations: arms, endpoints with intervals, results in Parquet.",
    no_args_is_help=True,
)


def _overrides(spec: Any, **values: Any) -> Any:
    return dataclasses.replace(spec, **{k: v for k, v in values.items() if v is not None})


def _table(result: Any) -> Table:
    spec = result.spec
    tab = Table(title=f"{spec.name}: arm - {spec.control}, {spec.level:.0%} intervals ({spec.design} design)")
    for col in ("arm", "endpoint", "control arm", "this arm", "difference", "interval"):
        tab.add_column(col, justify="left" if col in ("arm", "endpoint") else "right", no_wrap=True)
    summary = result.summary.set_index(["arm", "endpoint"])
    for row in result.contrasts.itertuples():
        ctl, arm = summary.loc[(spec.control, row.endpoint)], summary.loc[(row.arm, row.endpoint)]
        tab.add_row(row.arm, row.endpoint, f"{ctl.estimate:.3g}", f"{arm.estimate:.3g}", f"{row.estimate:+.3g}",
                    f"[{row.lower:+.3g}, {row.upper:+.3g}]")  # fmt: skip
    return tab


@app.command("run")
def run_cmd(
    file: Annotated[Path, typer.Argument(metavar="TRIAL.yaml", help="Trial definition (YAML)")],
    out: Annotated[Path, typer.Option(help="Folder for the Parquet results, trial.json and report.html")],
    sample_size: Annotated[int | None, typer.Option(help="Override the patients per arm")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the seed")] = None,
    workers: Annotated[int | None, typer.Option(help="Dask workers (>1 starts a local cluster)")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Address of a running Dask scheduler")] = None,
    chunk_size: Annotated[int | None, typer.Option(help="Patients per chunk (one task each)")] = None,
    report: Annotated[bool, typer.Option(help="Write report.html (Plotly figures)")] = True,
) -> None:
    """Run TRIAL.yaml: make the virtual population, simulate every arm, summarise the endpoints.

    Example:  immunetwin trial run examples/trials/antiviral_timing.yaml --out trial-out
    """
    from immunetwin.cohorts import DaskCluster, load_trial, run_trial, write_trial

    spec = _overrides(load_trial(file), sample_size=sample_size, seed=seed, workers=workers,
                      scheduler=scheduler, chunk_size=chunk_size)  # fmt: skip
    executor = None
    if spec.scheduler or spec.workers > 1:
        cache = os.environ.get("IMMUNETWIN_CACHE", "")
        from immunetwin.runtime import default_cache_dir

        cache_dir = None if cache.lower() == "off" else (cache or str(default_cache_dir()))
        executor = DaskCluster(address=spec.scheduler, workers=spec.workers, cache_dir=cache_dir)
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                unit = "plausible patients" if stage == "population" else "chunks"
                tasks[stage] = bar.add_task(f"{stage} ({unit})", total=total)
            bar.update(tasks[stage], completed=done, total=total)

        result = run_trial(spec, executor=executor, progress=progress)
    paths = write_trial(result, out)
    if report:
        from immunetwin.web.trial_report import write_trial_report

        paths["report"] = write_trial_report(result, Path(out) / "report.html")
    out_console = Console()
    pop = result.population
    out_console.print(f"population: {len(pop)} patients of {pop.drawn} drawn (acceptance {pop.acceptance_rate:.1%}), "
                      f"failed solves per arm: {result.failed}, {result.seconds:.1f} s")  # fmt: skip
    out_console.print(_table(result))
    for name, path in paths.items():
        out_console.print(f"{name}: {path}")
