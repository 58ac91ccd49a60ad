"""A posterior of one real person's viral-load series, with its diagnostics.

Data: participant ke01 of Ke et al. 2022 (Nat Microbiol 7:640; daily nasal swabs; CC-BY-4.0; shipped
as immunetwin.datasets). Model: the viral_tiv template (Baccam et al. 2006 target-cell-limited model
with eclipse phase), personalising beta, delta, p and V0 with the template's priors (c fixed); negative swabs are
left-censored at 2 log10 copies/mL; model time = days since symptom onset + 5 days of incubation.
The template's V is an infectious titre (TCID50/mL); fitted to RNA copies/mL, V0 and p absorb the
unit (they become copies, not TCID50), while the rates (beta*T0, delta, c) keep their meaning.

    python examples/posterior_ke2022.py [--participant ke01] [--draws 1000] [--out out/ke01]
    python examples/posterior_ke2022.py --sampler metropolis     # 16 batched random-walk chains

Writes posterior.nc (ArviZ InferenceData), summary.csv, report.md (diagnostics) and fit.html (data,
MAP curve and 90% posterior predictive band).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

_SAMPLERS = {"nuts": "NUTS", "metropolis": "Adaptive random-walk Metropolis"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participant", default="ke01")
    parser.add_argument("--template", default="viral_tiv")
    parser.add_argument("--sampler", choices=("nuts", "metropolis"), default="nuts")
    parser.add_argument("--chains", type=int, help="default: the sampler's (NUTS 4, Metropolis 16)")
    parser.add_argument("--draws", type=int, help="default: the sampler's (NUTS 1000, Metropolis 4000)")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=2022)
    parser.add_argument(
        "--estimate", default="beta,delta,p,V0",
        help="parameters to personalise (default: all of the template's but c, the virion clearance rate,"
        " which viral-load data alone do not identify well and is often fixed, as in Ke et al. 2021)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("out/ke01"))
    args = parser.parse_args()

    from immunetwin.datasets import ke2022_nasal, viral_load_table
    from immunetwin.inference import compile_objective
    from immunetwin.inference.fit import fit_map
    from immunetwin.inference.patient import patient_problem
    from immunetwin.inference.posterior import sample_posterior
    from immunetwin.runtime import default_cache_dir, enable_compilation_cache
    from immunetwin.templates import load_template

    enable_compilation_cache(default_cache_dir())
    args.out.mkdir(parents=True, exist_ok=True)
    data = viral_load_table(ke2022_nasal(), args.participant)
    estimate = [p for p in args.estimate.split(",") if p]
    problem = patient_problem(load_template(args.template), data, estimate=estimate, name=args.participant)
    objective = compile_objective(problem)
    key_map, key_nuts = jax.random.split(jax.random.PRNGKey(args.seed))
    t0 = time.perf_counter()
    fit = fit_map(objective, key=key_map, starts=8)
    t_map = time.perf_counter() - t0
    t0 = time.perf_counter()
    post = sample_posterior(
        objective,
        key=key_nuts,
        sampler=args.sampler,
        chains=args.chains,
        draws=args.draws,
        warmup=args.warmup,
        init=fit.theta,
        dense_mass=True,  # NUTS: beta, p and V0 are correlated: a dense mass matrix keeps the trees short
        chain_method="parallel",
    )
    t_nuts = time.perf_counter() - t0
    chains, draws = post.idata.posterior.sizes["chain"], post.idata.posterior.sizes["draw"]
    post.to_netcdf(args.out / "posterior.nc")
    summary = post.summary()
    summary.to_csv(args.out / "summary.csv")
    lines = [
        f"# Posterior of {args.participant} ({args.template})",
        "",
        f"Data: {len(data)} nasal swabs of {args.participant} (Ke et al. 2022), {int(data.censored.sum())} negative (censored).",
        f"MAP: {fit.at_best}/{len(fit.starts)} starts at the best log posterior {fit.objective:.3f} ({t_map:.1f} s with compilation).",
        f"{_SAMPLERS[args.sampler]}: {chains} chains x {draws} draws after {args.warmup} warm-up, {t_nuts:.1f} s; "
        f"divergences {post.divergences}; converged: **{post.converged}** "
        "(max R-hat <= 1.01, bulk and tail ESS >= 400, no divergences).",
        "",
        "```",
        summary.to_string(),
        "```",
        "",
    ]
    lines += [f"- warning: {w}" for w in post.warnings] or ["- no convergence warnings"]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(problem, objective, fit, post, data, args.out / "fit.html")


def _plot(problem, objective, fit, post, data, path: Path) -> None:
    import plotly.graph_objects as go

    from immunetwin import simulate

    times = np.linspace(0.0, float(data.time.max()) + 2.0, 121)
    draws = post.theta_draws[:: max(1, len(post.theta_draws) // 200)]
    curves = []
    for theta in draws:
        traj = simulate(problem.model, times, parameters=problem.values(theta))
        curves.append(np.log10(np.maximum(traj["V"], 1e-3)))
    lo, hi = np.percentile(np.array(curves), [5, 95], axis=0)
    best = simulate(problem.model, times, parameters=fit.values)
    fig = go.Figure()
    fig.add_scatter(x=times, y=hi, line={"width": 0}, showlegend=False)
    fig.add_scatter(x=times, y=lo, fill="tonexty", line={"width": 0}, name="90% posterior band (model)")
    fig.add_scatter(x=times, y=np.log10(np.maximum(best["V"], 1e-3)), name="MAP")
    det = data[~data.censored]
    cen = data[data.censored]
    fig.add_scatter(x=det.time, y=det.value, mode="markers", name="measured")
    fig.add_scatter(
        x=cen.time, y=cen.value, mode="markers", marker={"symbol": "triangle-down"}, name="negative (below 2)"
    )
    fig.update_layout(xaxis_title="days since infection", yaxis_title="log10 copies/mL")
    fig.write_html(path, include_plotlyjs=True)


if __name__ == "__main__":
    main()
