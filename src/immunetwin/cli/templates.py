"""``immunetwin templates``: list, inspect, export and draw the template library.

Templates are searched in the folders named by ``IMMUNETWIN_TEMPLATES_PATH`` (separated like ``PATH``),
read when a command runs, and then in the templates shipped with immunetwin. Errors are
:mod:`immunetwin.errors` exceptions, left for the main CLI to print as one ``error:`` line.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from immunetwin.errors import ImmunetwinError, InputError
from immunetwin.templates import builtin_root, export_template, list_templates, load_template, template_map
from immunetwin.templates.library import Template
from immunetwin.templates.metadata import DoseSeries, Prior

__all__ = ["app", "search_path"]

app = typer.Typer(
    help="The template library: list, inspect, export (SBML, Antimony, PEtab) and draw model templates.",
    no_args_is_help=True,
)


def search_path(environ: Mapping[str, str]) -> tuple[Path, ...]:
    """Template folders to search: those in ``IMMUNETWIN_TEMPLATES_PATH``, then the built-in ones."""
    listed = environ.get("IMMUNETWIN_TEMPLATES_PATH", "").split(os.pathsep)
    return (*(Path(p).expanduser() for p in listed if p.strip()), builtin_root())


def _load(name: str) -> Template:
    return load_template(name, root=search_path(os.environ))


@app.command("list")
def list_command() -> None:
    """List the templates: name, title, number of states and parameters."""
    root = search_path(os.environ)
    table = Table(title="immunetwin templates")
    for column in ("name", "title", "states", "parameters"):
        table.add_column(column, overflow="fold")
    for name in list_templates(root=root):
        try:
            meta = load_template(name, root=root).metadata
        except ImmunetwinError as err:  # one broken folder must not hide the others
            table.add_row(name, f"[red]invalid: {err}[/red]", "-", "-")
            continue
        table.add_row(name, meta.title, str(len(meta.states)), str(len(meta.parameters)))
    Console().print(table)


def _prior_text(prior: Prior) -> str:
    return prior.distribution + "(" + ", ".join(f"{k}={v:g}" for k, v in prior.parameters.items()) + ")"


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _doses_text(tpl: Template, name: str) -> str:
    spec = tpl.metadata.interventions[name]
    parts = [f"{w.target} = {w.value} on [{w.start}, {w.start} + {w.duration})" for w in spec.inputs]
    for d in spec.doses:
        if isinstance(d.times, DoseSeries):
            when = f"{d.times.count} doses every {d.times.every} d from {d.times.start}"
        else:
            when = "t = " + ", ".join(str(t) for t in d.times)
        parts.append(f"bolus {d.amount} into {d.target} at {when}")
    return "; ".join(parts)


def _show_tables(tpl: Template) -> list[Table]:
    m = tpl.metadata
    states = [(k, s.description, s.unit) for k, s in m.states.items()]
    params = [
        (k, f"{p.value:g}", p.unit, f"[{p.range[0]:g}, {p.range[1]:g}]", _prior_text(p.prior),
         "yes" if p.estimate else "no", p.source)
        for k, p in m.parameters.items()
    ]  # fmt: skip
    observables = [
        (k, o.formula, o.unit, o.loinc or "-", f"{o.noise.model}(sigma={o.noise.sigma:g})",
         "-" if o.lloq is None else f"{o.lloq:g}")
        for k, o in m.observables.items()
    ]  # fmt: skip
    interventions = [
        (k, i.description, ", ".join(f"{a}={v:g}" for a, v in i.arguments.items()), _doses_text(tpl, k))
        for k, i in m.interventions.items()
    ]
    outcomes = [
        (k, o.kind, o.expression, "-" if o.threshold is None else f"{o.threshold:g}", o.unit, o.description)
        for k, o in m.outcomes.items()
    ]
    return [
        _table("States", ("id", "description", "unit"), states),
        _table("Parameters", ("id", "value", "unit", "range", "prior", "estimate", "source"), params),
        _table("Observables", ("id", "formula", "unit", "LOINC", "noise", "LLOD"), observables),
        _table("Interventions", ("id", "description", "arguments (defaults)", "schedule"), interventions),
        _table("Outcomes", ("id", "kind", "expression", "threshold", "unit", "description"), outcomes),
        _table("Citations", ("key", "reference"), list(m.citations.items())),
    ]


@app.command("show")
def show_command(name: Annotated[str, typer.Argument(help="Template name, e.g. viral_tiv.")]) -> None:
    """Show a template for a modeller: purpose, states, parameters with sources, observables, treatments."""
    tpl = _load(name)
    m = tpl.metadata
    console = Console()
    console.print(f"[bold]{m.name}[/bold] {m.version}: {m.title}")
    console.print(f"[bold]Purpose.[/bold] {m.purpose}")
    console.print(f"[bold]Context of use.[/bold] {m.context_of_use}")
    console.print(f"[bold]Folder.[/bold] {tpl.path}")
    for table in _show_tables(tpl):
        console.print(table)
    console.print("[bold]Limits[/bold]")
    for line in m.limits:
        console.print(f"  - {line}")
    console.print("[bold]Published checks[/bold]")
    for line in m.checks:
        console.print(f"  - {line}")


class ExportFormat(StrEnum):
    """Formats ``export`` writes."""

    sbml = "sbml"
    antimony = "antimony"
    petab = "petab"


@app.command("export")
def export_command(
    name: Annotated[str, typer.Argument(help="Template name.")],
    format: Annotated[ExportFormat, typer.Option("--format", "-f", help="What to write.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write into (created if missing).")],
) -> None:
    """Write a template as SBML (model.xml), Antimony (model.ant) or a PEtab v1 problem."""
    written = export_template(_load(name), out, format=format.value)
    Console().print(f"wrote {written}")


@app.command("map")
def map_command(
    name: Annotated[str, typer.Argument(help="Template name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="FILE.svg or FILE.html.")],
) -> None:
    """Draw the template's conceptual map (states, reactions, signed influences) as SVG or HTML."""
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in ("svg", "html"):
        raise InputError(f"--out {out}: the file name must end in .svg or .html")
    text = template_map(_load(name), format=suffix)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    Console().print(f"wrote {out}")
