"""The ``immunetwin`` command line (typer + rich).

Every command calls the same library verbs a Python user calls. Errors of the user's making (bad
files, unknown ids, non-numeric values) print one ``error: ...`` line on stderr and exit with code 2;
a traceback means a bug of ours.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from immunetwin.errors import ImmunetwinError

__all__ = ["app", "main"]

app = typer.Typer(
    name="immunetwin",
    help=(
        "Immune digital twins: simulate immune models (SBML / Antimony), use the curated template "
        "library, and (as the platform grows) personalise, forecast and decide.\n\n"
        "Start with:  immunetwin templates list   then   immunetwin simulate MODEL.ant --days 28 "
        "--out traj.csv --plot traj.html   and, to personalise,   immunetwin fit PROBLEM.yaml --method map"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def configure_runtime() -> None:
    """Use every CPU core (one JAX device each), let XLA:CPU compile solver loops whole, and turn on
    JAX's persistent compilation cache (``IMMUNETWIN_CACHE``; ``off`` disables it).

    Called by the command-line entry point only: library users opt in with
    :func:`immunetwin.runtime.use_all_cpu_cores`, :func:`immunetwin.runtime.compile_small_loops_whole`
    and :func:`immunetwin.runtime.enable_compilation_cache`.
    """
    from immunetwin.runtime import (
        compile_small_loops_whole,
        default_cache_dir,
        enable_compilation_cache,
        use_all_cpu_cores,
    )

    use_all_cpu_cores()
    compile_small_loops_whole()
    where = os.environ.get("IMMUNETWIN_CACHE", "")
    if where.lower() == "off":
        return
    enable_compilation_cache(Path(where) if where else default_cache_dir())


def _register() -> None:
    from immunetwin.cli import demo as demo_cmd
    from immunetwin.cli import fit as fit_cmd
    from immunetwin.cli import report as report_cmd
    from immunetwin.cli import simulate as simulate_cmd
    from immunetwin.cli import twin as twin_cmd

    app.command("simulate")(simulate_cmd.simulate)
    app.command("fit")(fit_cmd.fit)
    app.command("demo")(demo_cmd.demo)
    app.command("report")(report_cmd.report)
    app.add_typer(twin_cmd.app, name="twin")
    from immunetwin.cli import trial as trial_cmd

    app.add_typer(trial_cmd.app, name="trial")
    from immunetwin.cli import service as service_cmd  # serve, users, sites, patients, ingest, stored twins

    service_cmd.register(app, twin_cmd.app)
    try:
        from immunetwin.cli.templates import app as templates_app
    except ImportError:  # pragma: no cover - the template CLI is optional while it is being written
        return
    app.add_typer(
        templates_app, name="templates", help="The curated template library: list, show, export, map."
    )


_register()


def main() -> None:
    """Console entry point: run the app, turning our errors into one line and exit code 2."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        configure_runtime()
        app()
    except ImmunetwinError as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True)
        sys.exit(2)
