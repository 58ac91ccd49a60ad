"""``immunetwin fit``: personalise a model to data (a PEtab problem, or a template and a CSV)."""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from immunetwin.errors import InputError

__all__ = ["fit"]

_METHODS = ("map", "laplace", "nuts", "metropolis")


def _problem(source: str, data: Path | None, estimate: list[str] | None):
    """A PEtab YAML file, or a template name with ``--data`` (columns observable, time, value[, censored])."""
    if source.endswith((".yaml", ".yml")):
        if data is not None:
            raise InputError("--data is for templates; a PEtab problem brings its own measurement table")
        from immunetwin.io.petab import read_petab

        return read_petab(source)
    import pandas as pd

    from immunetwin.inference.patient import patient_problem
    from immunetwin.templates import load_template

    template = load_template(source)
    if data is None:
        raise InputError(
            f"template '{source}' needs --data CSV (columns observable, time, value[, censored])"
        )
    if not data.is_file():
        raise InputError(f"--data {data}: file not found")
    return patient_problem(template, pd.read_csv(data), estimate=estimate, name=data.stem)


def _controls(rtol: float | None, atol: float | None) -> Any:
    """The solver's controls: the calibration tolerances, with ``--rtol``/``--atol`` where given
    (refused by option name unless finite, positive and, for ``--rtol``, below 1)."""
    import dataclasses

    from immunetwin.inference.likelihood import CALIBRATION_CONTROLS

    for name, value, top in (("--rtol", rtol, 1.0), ("--atol", atol, math.inf)):
        if value is not None and not (math.isfinite(value) and 0.0 < value < top):
            limit = "between 0 and 1" if top == 1.0 else "positive and finite"
            raise InputError(f"{name} must be {limit}, got {value}")
    given = {k: v for k, v in (("rtol", rtol), ("atol", atol)) if v is not None}
    return dataclasses.replace(CALIBRATION_CONTROLS, **given)


def fit(
    problem: Annotated[str, typer.Argument(help="PEtab problem YAML, or a template name (then give --data)")],
    method: Annotated[
        str,
        typer.Option(
            help="map (multi-start optimisation), laplace (Gaussian at the MAP), nuts, or metropolis"
            " (adaptive random walk, many chains batched: no gradients; fast for a few parameters)"
        ),
    ] = "map",
    data: Annotated[
        Path | None,
        typer.Option(help="CSV of one patient's data for a template: observable, time, value[, censored]"),
    ] = None,
    estimate: Annotated[
        list[str] | None, typer.Option(help="parameter to personalise (repeat; default: the template's)")
    ] = None,
    starts: Annotated[int, typer.Option(help="MAP: number of starts")] = 10,
    optimizer: Annotated[
        str,
        typer.Option(
            help="MAP: each start's local optimiser, L-BFGS-B (line search) or fides (trust region:"
            " backs off from parameters where the model cannot be solved)"
        ),
    ] = "L-BFGS-B",
    chains: Annotated[int | None, typer.Option(help="NUTS / Metropolis: chains (default 4 / 16)")] = None,
    draws: Annotated[
        int | None,
        typer.Option(help="NUTS / Metropolis / Laplace: draws per chain (default 1000 / 4000 / 1000)"),
    ] = None,
    warmup: Annotated[int, typer.Option(help="NUTS / Metropolis: warm-up iterations per chain")] = 1000,
    metric: Annotated[
        str,
        typer.Option(
            help="NUTS: adapt (diagonal mass matrix learnt in warm-up), dense (a dense one learnt in"
            " warm-up: correlated parameters), laplace (dense, from the Laplace approximation at the"
            " MAP, fixed: for short warm-ups of near-Gaussian posteriors) or laplace_adapt (dense,"
            " learnt in warm-up starting from the Laplace one: shorter warm-up trees)"
        ),
    ] = "adapt",
    chain_method: Annotated[
        str,
        typer.Option(
            help="NUTS: vectorized (chains in lockstep in one program), sequential, or parallel (each"
            " chain one program, compiled once, the chains run by one thread per core; its draws do not"
            " depend on the core count). Metropolis: all chains in one batch, one at a time, or one"
            " batch per core"
        ),
    ] = "vectorized",
    seed: Annotated[int, typer.Option(help="random seed (starts, draws)")] = 0,
    rtol: Annotated[
        float | None,
        typer.Option(
            help="ODE relative tolerance (default: the calibration tolerance, 1e-8; NUTS runs well at 1e-6)"
        ),
    ] = None,
    atol: Annotated[
        float | None, typer.Option(help="ODE absolute tolerance (default: the calibration tolerance, 1e-10)")
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="xla (the JAX engine, every model) or native (the model and its sensitivity equations"
            " as generated C: CPU, no events or pre-equilibration; several times faster)"
        ),
    ] = "xla",
    out: Annotated[
        Path | None,
        typer.Option(help="folder for results: map.json, and posterior.nc for laplace/nuts/metropolis"),
    ] = None,
) -> None:
    """Fit a model to data: the MAP estimate (multi-start), a Laplace approximation, or a posterior
    by NUTS or random-walk Metropolis.

    Examples:  immunetwin fit problem.yaml --method map --starts 20
               immunetwin fit viral_tiv --data patient.csv --method nuts --out fit/
               immunetwin fit viral_tiv --data patient.csv --method metropolis --chain-method parallel
    """
    import jax

    from immunetwin.engines.ode import BACKENDS
    from immunetwin.inference import compile_objective
    from immunetwin.inference.chains import CHAIN_METHODS
    from immunetwin.inference.fit import OPTIMIZERS, fit_map

    if method not in _METHODS:
        raise InputError(f"--method '{method}': choose one of {', '.join(_METHODS)}")
    if metric not in ("adapt", "dense", "laplace", "laplace_adapt"):
        raise InputError(f"--metric '{metric}': choose adapt, dense, laplace or laplace_adapt")
    if chain_method not in CHAIN_METHODS:
        raise InputError(f"--chain-method '{chain_method}': choose {', '.join(CHAIN_METHODS)}")
    if backend not in BACKENDS:
        raise InputError(f"--backend '{backend}': choose {' or '.join(BACKENDS)}")
    if optimizer not in OPTIMIZERS:
        raise InputError(f"--optimizer '{optimizer}': choose {' or '.join(OPTIMIZERS)}")
    if method == "metropolis" and metric.startswith("laplace"):
        raise InputError(f"--metric '{metric}' is for NUTS: Metropolis learns its proposal in warm-up")
    for name, value in (("--starts", starts), ("--chains", chains), ("--draws", draws)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    controls = _controls(rtol, atol)
    console = Console(highlight=False)
    prob = _problem(problem, data, estimate)
    console.print(
        f"[bold]{prob.name}[/]: {len(prob.measurements)} measurements, estimating {', '.join(prob.free_ids)}"
    )
    objective = compile_objective(prob, backend=backend, controls=controls)
    key = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    with console.status(f"MAP from {starts} starts (the first call compiles the model)..."):
        result = fit_map(objective, key=key, starts=starts, optimizer=optimizer)  # type: ignore[arg-type]
    table = Table(
        title=f"MAP ({result.at_best}/{len(result.starts)} starts at the best value; {result.seconds:.1f} s)"
    )
    for col in ("parameter", "estimate", "scale"):
        table.add_column(col)
    for p in prob.free:
        table.add_row(p.id, f"{result.values[p.id]:.4g}", p.scale)
    console.print(table)
    console.print(f"log posterior {result.objective:.4f}, log likelihood {result.log_likelihood:.4f}")
    summary: dict = {
        "problem": prob.name,
        "map": result.values,
        "log_posterior": result.objective,
        "log_likelihood": result.log_likelihood,
        "starts_at_best": result.at_best,
        "starts": len(result.starts),
        "optimizer": optimizer,
        "tolerances": {"rtol": controls.rtol, "atol": controls.atol},
    }
    posterior = None
    if method != "map":
        from immunetwin.inference.posterior import ConvergenceWarning, laplace, sample_posterior

        key_post = jax.random.fold_in(key, 1)
        with console.status(f"{method}..."), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # printed below, once
            if method == "laplace":
                posterior = laplace(objective, result.theta, key=key_post, draws=draws or 1000)
            else:
                posterior = sample_posterior(
                    objective, key=key_post, sampler=method, chains=chains, draws=draws, warmup=warmup,
                    init=result.theta, metric="adapt" if metric == "dense" else metric,
                    dense_mass=metric != "adapt", chain_method=chain_method,
                )  # fmt: skip
        console.print(posterior.summary().to_string(), markup=False)
        for message in posterior.warnings:
            console.print("warning: " + message, style="bold yellow", markup=False)
        summary[method] = {"warnings": list(posterior.warnings)}
        if method in ("nuts", "metropolis"):
            summary[method] |= {
                "converged": posterior.converged,
                "rhat": posterior.rhat,
                "ess_bulk": posterior.ess_bulk,
            }
    summary["seconds"] = time.perf_counter() - t0
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "map.json").write_text(json.dumps(summary, indent=2, default=float))
        if posterior is not None:
            posterior.to_netcdf(out / "posterior.nc")
        console.print(f"results in {out}/")
