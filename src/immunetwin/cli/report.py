"""``immunetwin report TWIN``: the self-contained HTML report of a saved twin's latest version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from immunetwin.errors import InputError

__all__ = ["parse_pairs", "report"]


def parse_pairs(text: str, what: str) -> dict[str, float]:
    """``"severe=100,time_to_clearance=1"`` -> ``{"severe": 100.0, "time_to_clearance": 1.0}``."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"{what}: '{part}' is not NAME=NUMBER") from None
    return out


def report(
    twin_file: Annotated[
        Path, typer.Argument(help="A twin saved by `immunetwin demo` or `save_twin` (.zip).")
    ],
    out: Annotated[Path, typer.Option(help="Where to write the HTML report.")] = Path("report.html"),
    horizon: Annotated[float, typer.Option(help="Forecast days after the twin's last data.")] = 14.0,
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            help="Scenario spec, repeatable (e.g. 'antiviral(start=9)'); default: every "
            "intervention alone and together, starting at the twin's last data"
        ),
    ] = None,
    weights: Annotated[
        str, typer.Option(help="Utility weights per unit of each outcome metric.")
    ] = "severe=100,time_to_clearance=1",
    costs: Annotated[
        str, typer.Option(help="Cost of each intervention, in the same points.")
    ] = "antiviral=2,anti_inflammatory=5",
    decide_treatment: Annotated[
        bool, typer.Option("--decide/--no-decide", help="Compare scenarios and decide.")
    ] = True,
) -> None:
    """Write the HTML report of a saved twin (data, forecast, scenarios, decision, credibility)."""
    from immunetwin.decisions import ExpectedUtility, compare_scenarios, decide
    from immunetwin.decisions import scenario as parse_scenario
    from immunetwin.twin import load_twin
    from immunetwin.web import build_report, write_report

    console = Console()
    twin = load_twin(twin_file)
    comparison = decision = None
    if decide_treatment:
        rule = ExpectedUtility(
            parse_pairs(weights, "--weights"), treatment_costs=parse_pairs(costs, "--costs")
        )
        now = twin.reference_time
        ivs = list(twin.template.metadata.interventions)
        specs = scenario or ["none", *(f"{iv}(start={now:g})" for iv in ivs)] + (
            ["+".join(f"{iv}(start={now:g})" for iv in ivs)] if len(ivs) > 1 else []
        )
        scenarios = [parse_scenario(twin.template, s) for s in specs]
        with console.status("comparing scenarios"):
            comparison = compare_scenarios(twin.template, twin.belief.values, scenarios, horizon=now + 40.0,
                                           log_weights=twin.belief.log_weights)  # fmt: skip
            decision = decide(comparison, rule)
    with console.status("writing the report"):
        path = write_report(
            build_report(twin, horizon=horizon, comparison=comparison, decision=decision), out
        )
    if decision is not None:
        console.print(f"decision: [bold]{decision.action}[/] {decision.chosen or ''}")
    console.print(f"report: {path.resolve()}")
