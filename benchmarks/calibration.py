"""Wall time to a MAP and to a converged posterior: immunetwin beside pyPESTO (libroadrunner), same run.

Problems (all read by both tools from the same PEtab files):

* one patient, two templates: participant ke01 of Ke et al. (2022, Nat Microbiol 7:640), the detected
  nasal viral loads only (pyPESTO has no censored likelihood), fitted with ``viral_immune`` (14 states)
  and ``viral_tiv`` (the cheap within-host model), estimating V0, beta, delta and p. The problem is
  exported with :func:`immunetwin.io.petab.write_petab`; two edits keep it readable by PEtab's parser
  and make both tools evaluate the same posterior: sympy's ``Max(`` is written as PEtab's ``max(``, and
  each ``logNormal(mu, s)`` prior of a log10-scaled parameter is written as the identical density of
  ``theta = log10 x``, ``parameterScaleNormal(mu / ln 10, s / ln 10)`` (pyPESTO 0.7 evaluates
  priors of linear values without the change-of-variables term; immunetwin includes it);
* two problems of the PEtab benchmark collection (Hass et al. 2019, Bioinformatics 35:3073):
  ``Boehm_JProteomeRes2014`` (9 parameters) and ``Crauste_CellSystems2017`` (CD8 T-cell
  differentiation, 12 parameters). pyPESTO's libroadrunner path refuses timepoint-specific
  overrides, so it gets ``petab.flatten_timepoint_specific_output_overrides`` of the same files.

Before timing, both tools evaluate the log-likelihood and log prior at the nominal parameters; the
difference is reported (a ratio between tools that compute different things is worthless). Each
tool's MAP wall is the best of ``--repeats`` (default 3) identical fits in the same process, as the
cohort benchmark takes the best of 3: on the shared 2-core machine one fit's wall moved by 1.5x from
run to run.

immunetwin: ``compile_objective(..., backend=--backend)`` + ``fit_map`` (L-BFGS-B, forward-sensitivity
gradients) with N starts (the nominal point, then uniform draws in the bounds), after a first call
that compiles; its JAX compile time (tracing, lowering, XLA; ``jax.monitoring`` spans, overlaps
merged) is reported apart. ``--backend native`` (default): the model and its forward sensitivity
equations as generated C (built, or loaded from the cache, in the setup, which is not timed), and
the starts run in lockstep, their points solved together as lanes of one native call;
``--backend xla``: the JAX engine differentiated by ``jax.jacfwd``, starts one after another.
Then ``sample_posterior`` (NUTS, 4 chains x 1,000 draws after 1,000 warm-up, from pyPESTO's
starts; ``--metric dense``, the default: NumPyro's adapted dense metric; ``adapt``: the adapted
diagonal metric, which ``viral_tiv`` gets by default (``--problem-metric``; ``PROBLEM_METRICS``
says why); ``laplace``: a dense metric from the Laplace approximation at the MAP, held fixed, and
starts drawn from it; ``laplace_adapt``: the same starts, and the dense metric adapted in warm-up
starting from the Laplace one), in a child process killed after ``--max-seconds``. Both samplers solve at
``--posterior-rtol`` / ``--posterior-atol`` (default 1e-6 / 1e-8, the class of Stan's ODE defaults;
the MAPs at 1e-8 / 1e-10), and the report gives the largest change of the log-likelihood from those
tolerances to the MAP's over 200 of each tool's draws: the error the looser solves put in the
density the sampler saw. ``--chain-method parallel`` (default): each chain is one program,
compiled once and run by one thread per core (pyPESTO's sampler runs its chains one after another on one core: the posterior
walls compare the tools as each is used, not per core); ``vectorized``: the 4 chains in lockstep as one
batched program on one device. ``--target-accept``: NUTS's target acceptance probability in warm-up
(default 0.8; a higher one takes smaller steps, more of them, and fewer divergences), except where
``--problem-target-accept`` sets one problem's (``PROBLEM_TARGET_ACCEPT`` says why Boehm gets 0.9).
NUTS is not started when ``seconds per value+grad x chains x (warm-up + draws) x 10`` (leapfrog
steps per iteration; 15-59 were measured on viral_tiv) exceeds ``--max-seconds``. The table says
which.

Then (``--metropolis``, default on) ``sample_posterior(sampler="metropolis")``: adaptive random-walk
Metropolis on the parameter scales, ``--metropolis-chains`` (default 16) chains x
``--metropolis-draws`` (4,000) after ``--metropolis-warmup`` (1,000), the chains started as pyPESTO's
(the MAP jittered the same way, drawn for 16 chains), run with ``--chain-method`` (``parallel``: one
batch of chains per core, each batch's solves one native call), in a child process as NUTS is. It
is a row of its own in the table, judged by the same convergence rule, and its ESS per second is
compared with pyPESTO's as NUTS's is.

pyPESTO 0.7 without AMICI: ``PetabImporter(petab_problem, simulator_type="roadrunner")`` (CVODE at
immunetwin's calibration tolerances, rtol 1e-8, atol 1e-10, for the MAP), ``optimize.minimize`` with
``ScipyOptimizer("L-BFGS-B")`` and the same options and the *same start points* (``x_guesses``);
its RoadRunner objective has no sensitivities, so scipy differentiates by 2-point forward
differences (n + 1 simulations per gradient). Posterior: ``AdaptiveMetropolisSampler`` (no gradient,
so no NUTS), one chain per immunetwin chain from the same starts, the first half discarded as
adaptation. Both posteriors are judged alike (rank-normalised R-hat <= 1.01, bulk and tail ESS >= 400,
ArviZ) and compared by ESS per second.

Targets (issue 4, on the 2-core CPU): MAP <= 2 s, converged posterior <= 60 s, >= 5x faster than
pyPESTO. Run ``python benchmarks/calibration.py --markdown BENCHMARKS.md`` on a quiet machine
(``--quick`` for a smoke test; ``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COLLECTION = ROOT.parent / "shared" / "conformance" / "petab-benchmark"
TEMPLATES = ("viral_immune", "viral_tiv")
DEFAULT_PROBLEMS = (*TEMPLATES, "Boehm_JProteomeRes2014", "Crauste_CellSystems2017")
ESTIMATE, PARTICIPANT = ("V0", "beta", "delta", "p"), "ke01"
TARGET_MAP_S, TARGET_POSTERIOR_S, TARGET_RATIO = 2.0, 60.0, 5.0
_METRICS = {
    "laplace": "dense Laplace metric at the MAP, held fixed; starts drawn from the Laplace Gaussian",
    "adapt": "diagonal metric adapted in warm-up; starts as pyPESTO's",
    "dense": "dense metric adapted in warm-up; starts as pyPESTO's",
    "laplace_adapt": (
        "dense metric adapted in warm-up from the Laplace covariance at the MAP; starts drawn from the"
        " Laplace Gaussian"
    ),
}
# viral_tiv: with the adapted dense metric the smallest tail ESS of 4 x 1,000 draws was 231-405 in six
# runs (five below the 400 that convergence asks), with the diagonal one 413-868 in three
# (benchmarks/README.md, "Sampling tolerances and metrics")
PROBLEM_METRICS: tuple[tuple[str, str], ...] = (("viral_tiv", "adapt"),)
# Boehm_JProteomeRes2014: with the dense metric at target acceptance 0.8, 1-6 divergent transitions in
# 5 of 7 runs of 4 x 1,000 draws (any divergence fails the convergence check); at 0.9 none in 4, at
# 49.1-66.1 s (benchmarks/README.md, "Chains sharing one compiled program"; BENCHMARKS.md)
PROBLEM_TARGET_ACCEPT: tuple[tuple[str, float], ...] = (("Boehm_JProteomeRes2014", 0.9),)
TOLERANCE_DRAWS = 200  # posterior draws at which the sampling tolerances are checked against the MAP's
LEAPFROG = 10  # leapfrog steps per NUTS iteration assumed by the skip rule (viral_tiv, ke01: 15-59 measured)
AGREE = 1e-3  # |llh_a - llh_b| <= AGREE * (1 + |llh_b|): AMICI's rule for the benchmark collection
_LN10 = math.log(10.0)
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


# -- problems ---------------------------------------------------------------------------------------


def _scale_prior(p: Any) -> Any:
    """``logNormal`` of a log/log10-scaled parameter as the same density of ``theta``."""
    from immunetwin.inference import Prior

    if p.prior is None or p.prior.kind != "logNormal" or p.scale == "lin":
        return p
    mu, s = p.prior.params
    k = _LN10 if p.scale == "log10" else 1.0
    return dataclasses.replace(p, prior=Prior("parameterScaleNormal", (mu / k, s / k)))


def patient_petab(template: str, folder: Path) -> tuple[Path, Any]:
    """ke01's detected viral loads as a ``template`` problem in PEtab files; returns (yaml, original)."""
    from immunetwin.datasets import ke2022_nasal, viral_load_table
    from immunetwin.inference.patient import patient_problem
    from immunetwin.io.petab import write_petab
    from immunetwin.templates import load_template

    data = viral_load_table(ke2022_nasal(), PARTICIPANT)
    data = data[~data["censored"]].reset_index(drop=True)
    original = patient_problem(
        load_template(template), data, estimate=ESTIMATE, name=f"{template}_{PARTICIPANT}"
    )
    problem = dataclasses.replace(original, parameters=tuple(_scale_prior(p) for p in original.parameters))
    yaml_path = write_petab(problem, folder)
    obs = folder / "observables.tsv"
    obs.write_text(obs.read_text().replace("Max(", "max(").replace("Min(", "min("))
    return yaml_path, original


def collection_yaml(name: str, collection: Path) -> Path:
    folder = collection / "Benchmark-Models" / name
    path = folder / f"{name}.yaml"
    return path if path.is_file() else sorted(folder.glob("*.yaml"))[0]


# -- timing helpers ---------------------------------------------------------------------------------


class CompileClock:
    """Seconds JAX spends tracing, lowering and compiling, from ``jax.monitoring`` time spans
    (nested spans merged, so a jit traced inside another counts once)."""

    def __init__(self) -> None:
        import jax.monitoring

        self.spans: list[tuple[float, float]] = []
        jax.monitoring.register_event_time_span_listener(self._record)

    def _record(self, event: str, start: float, end: float, **_: Any) -> None:
        if event in _COMPILE_EVENTS:
            self.spans.append((start, end))

    def seconds_since(self, mark: int) -> float:
        total, last = 0.0, -math.inf
        for a, b in sorted(self.spans[mark:]):
            if b > last:
                total += b - max(a, last)
                last = b
        return total


@contextlib.contextmanager
def timed(clock: CompileClock, out: dict[str, Any], key: str) -> Any:
    mark, t0 = len(clock.spans), time.perf_counter()
    try:
        yield
    finally:
        out[f"{key}_s"] = time.perf_counter() - t0
        out[f"{key}_compile_s"] = clock.seconds_since(mark)


def chain_starts(theta: np.ndarray, lo: np.ndarray, hi: np.ndarray, chains: int, seed: int) -> np.ndarray:
    """(chains, dim) starts: ``theta`` moved by U(-0.5, 0.5) in ``u = logit((theta - lo) / (hi - lo))``
    (``sample_posterior``'s own jitter), the same for both tools."""
    frac = np.clip((theta - lo) / (hi - lo), 1e-6, 1 - 1e-6)
    u = np.log(frac) - np.log1p(-frac) + np.random.default_rng(seed).uniform(-0.5, 0.5, (chains, len(theta)))
    return lo + (hi - lo) / (1.0 + np.exp(-u))


def diagnostics(draws: np.ndarray) -> dict[str, float]:
    """Largest R-hat, smallest bulk/tail ESS of (chains, draws, dim), ArviZ rank-normalised."""
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = az.convert_to_dataset({"theta": draws})
        rhat = float(az.rhat(data)["theta"].max())
        bulk = float(az.ess(data, method="bulk")["theta"].min())
        tail = float(az.ess(data, method="tail")["theta"].min())
    return {"rhat_max": rhat, "ess_bulk_min": bulk, "ess_tail_min": tail}


# -- immunetwin -------------------------------------------------------------------------------------


def immunetwin_map(yaml_path: Path, a: argparse.Namespace, clock: CompileClock) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from immunetwin.inference import compile_objective
    from immunetwin.inference.fit import fit_map
    from immunetwin.io.petab import read_petab

    r: dict[str, Any] = {"tool": f"immunetwin ({a.backend})", "backend": a.backend}
    with timed(clock, r, "setup"):  # the native backend builds its C here (or loads it from the cache)
        objective = compile_objective(read_petab(yaml_path), backend=a.backend)
    problem = objective.problem
    nominal = np.clip(problem.nominal, problem.lower, problem.upper)
    with timed(clock, r, "check"), jax.enable_x64(True):
        r["llh_nominal"] = float(objective.jitted("log_likelihood")(jnp.asarray(nominal)))
        r["log_prior_nominal"] = float(objective.jitted("log_prior")(jnp.asarray(nominal)))
    with timed(clock, r, "first_fit"):  # compiles what fit_map runs (value and forward gradient,
        # the start points' draw, and on the native backend the batched program of lockstep starts)
        fit_map(objective, key=jax.random.PRNGKey(a.seed), starts=a.starts, max_iterations=1)
    r["compile_s"] = r["setup_s"] + r["check_compile_s"] + r["first_fit_compile_s"]
    walls = []
    for _ in range(a.repeats):  # the same fit each time: the best wall of --repeats
        with timed(clock, r, "map"):
            fit = fit_map(objective, key=jax.random.PRNGKey(a.seed), starts=a.starts)
        walls.append((r["map_s"], r["map_compile_s"]))
    r["map_s"], r["map_compile_s"] = min(walls)
    r["map_walls_s"] = [w for w, _ in walls]
    evals = sum(s.evaluations for s in fit.starts)
    r |= {
        "ids": list(problem.free_ids), "nominal": nominal.tolist(), "lower": problem.lower.tolist(),
        "upper": problem.upper.tolist(), "starts": [s.start.tolist() for s in fit.starts],
        "theta": fit.theta.tolist(), "neg_llh": -fit.log_likelihood, "log_prior": fit.log_prior,
        "objective": fit.objective, "at_best": fit.at_best, "n_starts": len(fit.starts), "evaluations": evals,
        "map_converged": fit.converged, "failed_starts": sum(1 for s in fit.starts if not math.isfinite(s.value)),
        "seconds_per_eval": max(r["map_s"] - r["map_compile_s"], 1e-9) / max(evals, 1),
    }  # fmt: skip
    return r


def metric_of(name: str, a: argparse.Namespace) -> str:
    """The NUTS metric for problem ``name``: its ``--problem-metric``, else ``--metric``."""
    return dict(a.problem_metric).get(name, a.metric)


def target_accept_of(name: str, a: argparse.Namespace) -> float:
    """NUTS's target acceptance for problem ``name``: its ``--problem-target-accept``, else
    ``--target-accept``."""
    return dict(a.problem_target_accept).get(name, a.target_accept)


def child_spec(
    yaml_path: Path, a: argparse.Namespace, cache: Path, sampler: str, **own: Any
) -> dict[str, Any]:
    """What the ``--_nuts`` child runs: the settings both samplers share, and ``own``."""
    return {"yaml": str(yaml_path), "seed": a.seed + 1, "cache": str(cache), "out": str(cache.parent / f"{sampler}.json"),
            "backend": a.backend, "chain_method": a.chain_method, "rtol": a.posterior_rtol, "atol": a.posterior_atol,
            "sampler": sampler} | own  # fmt: skip


def run_child(
    spec: dict[str, Any], spec_path: Path, what: str, r: dict[str, Any], a: argparse.Namespace
) -> bool:
    """Run the sampler ``spec`` describes in a child process killed after ``--max-seconds``; its
    figures go into ``r`` (with the ESS per second), or the reason it gave none into
    ``r["posterior_note"]``. Returns whether it finished."""
    spec_path.write_text(json.dumps(spec))
    try:
        subprocess.run(
            [sys.executable, __file__, "--_nuts", str(spec_path)], check=True, timeout=a.max_seconds
        )
    except subprocess.TimeoutExpired:
        r["posterior_note"] = f"{what} did not finish within --max-seconds {a.max_seconds:g} (killed)"
        return False
    except subprocess.CalledProcessError as err:
        r["posterior_note"] = f"{what} failed (exit status {err.returncode}; its error is printed above)"
        return False
    r |= json.loads(Path(spec["out"]).read_text())
    r["ess_per_s"] = r["ess_bulk_min"] / r["posterior_s"]
    return True


def immunetwin_posterior(
    name: str, r: dict[str, Any], yaml_path: Path, a: argparse.Namespace, cache: Path
) -> None:
    """NUTS in a child process (same persistent compilation cache), killed after ``--max-seconds``;
    not started when ``--leapfrog`` gradient evaluations per iteration would take longer."""
    estimate = r["seconds_per_eval"] * a.chains * (a.warmup + a.draws) * a.leapfrog
    r["posterior_estimate_s"] = estimate
    if estimate > a.max_seconds:
        r["posterior_note"] = (
            f"NUTS skipped: {r['seconds_per_eval']:.3g} s per value+grad x {a.chains} chains x "
            f"{a.warmup + a.draws} iterations x {a.leapfrog} leapfrog steps = {estimate:,.0f} s > "
            f"--max-seconds {a.max_seconds:g}"
        )
        return
    metric = r["metric"] = metric_of(name, a)
    target_accept = r["target_accept"] = target_accept_of(name, a)
    inits = (
        r["theta"] if metric.startswith("laplace") else r["chain_starts"]
    )  # laplace: starts around the MAP
    spec = child_spec(yaml_path, a, cache, "nuts", inits=inits, chains=a.chains, metric=metric, draws=a.draws,
                      warmup=a.warmup, target_accept=target_accept)  # fmt: skip
    if not run_child(spec, cache.parent / "nuts-spec.json", "NUTS", r, a):
        return
    r["posterior_note"] = (
        f"NUTS {a.chains} x {a.draws} after {a.warmup} warm-up ({_METRICS[metric]}; target acceptance "
        f"{target_accept:g}; chain_method "
        f"'{r['chain_method']}', {_workers_text(r)}); {_wall_text(r)}; {r['leapfrog_mean']:.1f} leapfrog steps"
        f" per iteration on average; {_diagnostics_text(r)}, {r['divergences']} divergences; {_tolerance_note(r, a)}"
    )


def immunetwin_metropolis(
    name: str, it: dict[str, Any], yaml_path: Path, a: argparse.Namespace, cache: Path
) -> None:
    """``sample_posterior(sampler="metropolis")`` in a child process, as NUTS runs; its figures go to
    ``it["metropolis"]``."""
    r = it["metropolis"] = {"tool": f"immunetwin Metropolis ({a.backend})"}
    starts = chain_starts(
        np.asarray(it["theta"]), np.asarray(it["lower"]), np.asarray(it["upper"]), a.metropolis_chains, a.seed
    )
    spec = child_spec(yaml_path, a, cache, "metropolis", inits=starts.tolist(), chains=a.metropolis_chains,
                      metric="adapt", draws=a.metropolis_draws, warmup=a.metropolis_warmup)  # fmt: skip
    if not run_child(spec, cache.parent / "metropolis-spec.json", "Metropolis", r, a):
        return
    r["posterior_note"] = (
        f"adaptive random-walk Metropolis {a.metropolis_chains} x {a.metropolis_draws} after "
        f"{a.metropolis_warmup} warm-up (starts as pyPESTO's, drawn the same way for {a.metropolis_chains} chains; "
        f"chain_method '{r['chain_method']}', {r['threads']} thread(s), each running its chains as one batch); "
        f"{_wall_text(r)}; acceptance rate {r['accept_mean']:.3f}; {_diagnostics_text(r)}; {_tolerance_note(r, a)}"
    )


def _wall_text(r: dict[str, Any]) -> str:
    return f"wall {r['posterior_s']:.1f} s includes {r['posterior_compile_s']:.1f} s compile"


def _diagnostics_text(r: dict[str, Any]) -> str:
    return f"max R-hat {r['rhat_max']:.3f}, min ESS bulk/tail {r['ess_bulk_min']:.0f}/{r['ess_tail_min']:.0f}"


def _workers_text(r: dict[str, Any]) -> str:
    if "threads" in r:  # from 2026-11-24 (one compiled program, the chains on threads)
        return f"{r['threads']} thread(s) sharing one compiled program"
    return f"on {r['devices']} CPU device(s)"  # earlier reports: one program per chain, over devices


def _tolerance_note(r: dict[str, Any], a: argparse.Namespace) -> str:
    from immunetwin.inference import CALIBRATION_CONTROLS as CTL

    return (
        f"solves at rtol {a.posterior_rtol:g} / atol {a.posterior_atol:g}; largest |log-likelihood change| "
        f"from them to the MAP's rtol {CTL.rtol:g} / atol {CTL.atol:g} over {TOLERANCE_DRAWS} of the draws: "
        f"{r['tolerance_max_diff']:.1e}"
    )


def _spread(draws: np.ndarray) -> np.ndarray:
    """At most :data:`TOLERANCE_DRAWS` of the (chains, draws, dim) draws, evenly spaced over all."""
    flat = draws.reshape(-1, draws.shape[-1])
    return flat[np.linspace(0, len(flat) - 1, min(TOLERANCE_DRAWS, len(flat))).astype(int)]


def _batched(objective: Any, thetas: np.ndarray) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        return np.asarray(jax.jit(jax.vmap(objective.log_likelihood))(jnp.asarray(thetas)))


def tolerance_diff(loose: Any, tight: Any, thetas: np.ndarray) -> float:
    """Largest |log-likelihood at the sampling tolerances - at the MAP's| over ``thetas``: how much the
    looser solves move the density the sampler saw (inf where only one of them is finite)."""
    a, b = np.asarray(loose(thetas), dtype=float), np.asarray(tight(thetas), dtype=float)
    both = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return math.inf
    return float(np.max(np.abs(a[both] - b[both]))) if both.any() else math.nan


def nuts_child(spec_path: Path) -> None:
    """Run ``sample_posterior`` as ``spec_path`` says and write its figures (the ``--_nuts`` child)."""
    import jax

    from immunetwin.engines.integrate import Controls
    from immunetwin.inference import compile_objective
    from immunetwin.inference.posterior import sample_posterior
    from immunetwin.io.petab import read_petab
    from immunetwin.runtime import available_cores, compile_small_loops_whole, enable_compilation_cache

    compile_small_loops_whole()
    spec = json.loads(spec_path.read_text())
    method = spec.get("chain_method", "vectorized")
    enable_compilation_cache(Path(spec["cache"]))
    clock, r = CompileClock(), {}
    problem = read_petab(spec["yaml"])
    objective = compile_objective(
        problem, backend=spec["backend"], controls=Controls(spec["rtol"], spec["atol"])
    )
    sampler = spec.get("sampler", "nuts")
    options = (
        {"metric": "adapt" if spec["metric"] == "dense" else spec["metric"], "dense_mass": spec["metric"] != "adapt",
         "target_accept": spec.get("target_accept", 0.8)}
        if sampler == "nuts" else {}
    )  # fmt: skip
    with timed(clock, r, "posterior"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = sample_posterior(
            objective, key=jax.random.PRNGKey(spec["seed"]), sampler=sampler, chains=spec["chains"],
            draws=spec["draws"], warmup=spec["warmup"], init=np.asarray(spec["inits"]), chain_method=method,
            **options,
        )  # fmt: skip
    draws = post.idata.posterior["theta"].values
    r |= diagnostics(draws)
    tight = compile_objective(problem, backend=spec["backend"])  # the MAP's tolerances
    r["tolerance_max_diff"] = tolerance_diff(
        lambda x: _batched(objective, x), lambda x: _batched(tight, x), _spread(draws)
    )
    stats = post.idata.sample_stats
    r |= {"converged": post.converged, "divergences": post.divergences, "posterior_warnings": list(post.warnings),
          "chain_method": method, "threads": min(spec["chains"], available_cores()) if method == "parallel" else 1}  # fmt: skip
    if sampler == "nuts":
        r["leapfrog_mean"] = float(stats["n_steps"].mean())
    else:
        r["accept_mean"] = float(stats["acceptance_rate"].mean())
    Path(spec["out"]).write_text(json.dumps(r, default=float))


# -- pyPESTO ----------------------------------------------------------------------------------------


def pypesto_problem(yaml_path: Path, flatten: bool) -> tuple[Any, Any]:
    """pyPESTO problem with a libroadrunner objective at immunetwin's calibration tolerances (MAP)."""
    import petab.v1 as petab
    import pypesto.petab

    from immunetwin.inference import CALIBRATION_CONTROLS as CTL

    pb = petab.Problem.from_yaml(str(yaml_path))
    if flatten and petab.lint.measurement_table_has_timepoint_specific_mappings(pb.measurement_df):
        petab.flatten_timepoint_specific_output_overrides(pb)
    importer = pypesto.petab.PetabImporter(pb, simulator_type="roadrunner")
    objective = importer.create_objective_creator(simulator_type="roadrunner").create_objective()
    set_tolerances(objective, CTL.rtol, CTL.atol)
    return importer.create_problem(objective=objective), objective


def set_tolerances(objective: Any, rtol: float, atol: float) -> None:
    """CVODE's tolerances for every later call of a pyPESTO RoadRunner objective."""
    from pypesto.objective.roadrunner import SolverOptions

    from immunetwin.inference import CALIBRATION_CONTROLS as CTL

    objective.solver_options = SolverOptions(
        relative_tolerance=rtol, absolute_tolerance=atol, maximum_num_steps=CTL.max_steps
    )


def _reduced(problem: Any, ids: list[str], theta: np.ndarray) -> np.ndarray:
    """immunetwin's ``theta`` (order ``ids``) as pyPESTO's free-parameter vector."""
    names = [problem.x_names[i] for i in problem.x_free_indices]
    return np.asarray(theta, dtype=float)[..., [ids.index(n) for n in names]]


def _llh_prior(problem: Any, x: np.ndarray) -> tuple[float, float]:
    lp = -float(problem.x_priors(x)) if problem.x_priors is not None else 0.0
    return -float(problem.objective(x)) - lp, lp


def pypesto_map(
    yaml_path: Path, flatten: bool, it: dict[str, Any], a: argparse.Namespace
) -> tuple[dict[str, Any], Any]:
    import pypesto.optimize as optimize
    from pypesto.engine import SingleCoreEngine

    r: dict[str, Any] = {"tool": "pyPESTO + libroadrunner"}
    t0 = time.perf_counter()
    problem, _ = pypesto_problem(yaml_path, flatten)
    r["compile_s"] = time.perf_counter() - t0  # PEtab import + roadrunner's LLVM JIT of the model
    ids = it["ids"]
    if sorted(ids) != sorted(problem.x_names[i] for i in problem.x_free_indices):
        raise RuntimeError("pyPESTO and immunetwin estimate different parameters")
    r["llh_nominal"], r["log_prior_nominal"] = _llh_prior(
        problem, _reduced(problem, ids, np.asarray(it["nominal"]))
    )
    starts = _reduced(problem, ids, np.asarray(it["starts"]))
    problem.set_x_guesses(np.stack([problem.get_full_vector(x, problem.x_fixed_vals) for x in starts]))
    optimizer = optimize.ScipyOptimizer(
        method="L-BFGS-B", options={"maxiter": 500, "ftol": 1e-9, "gtol": 1e-8}
    )
    walls = []
    for _ in range(a.repeats):  # the same fit each time: the best wall of --repeats
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = optimize.minimize(
                problem, optimizer, n_starts=len(starts), engine=SingleCoreEngine(), progress_bar=False,
                options=optimize.OptimizeOptions(allow_failed_starts=True),
            )  # fmt: skip
        walls.append(time.perf_counter() - t0)
    r["map_s"], r["map_walls_s"] = min(walls), walls
    runs = result.optimize_result.list  # sorted, best first
    best = runs[0]
    x = problem.get_reduced_vector(np.asarray(best["x"]))
    llh, lp = _llh_prior(problem, x)
    fvals = np.array([o["fval"] for o in runs], dtype=float)
    evals = int(sum(o["n_fval"] or 0 for o in runs))
    r |= {
        "neg_llh": -llh, "log_prior": lp, "objective": -float(best["fval"]), "n_starts": len(runs),
        "at_best": int(np.sum(np.isfinite(fvals) & (fvals - fvals[0] <= 0.1))), "evaluations": evals,
        "failed_starts": int(sum(1 for o in runs if o["exitflag"] == -1)),  # an exception ended the start
        "seconds_per_eval": r["map_s"] / max(evals, 1),
        "gradient": "scipy 2-point forward differences (RoadRunnerObjective gives no sensitivities)",
    }  # fmt: skip
    return r, problem


def roadrunner_objective(problem: Any) -> Any:
    """The RoadRunner objective that ``problem`` calls: pyPESTO's problem holds a copy of the one it
    was made with, beside the priors, so tolerances must be set on this one."""
    from pypesto.objective.roadrunner import RoadRunnerObjective

    found = [o for o in (problem.objective, *getattr(problem.objective, "_objectives", ())) if isinstance(o, RoadRunnerObjective)]  # fmt: skip
    if len(found) != 1:
        raise RuntimeError(f"expected one RoadRunnerObjective in the pyPESTO problem, found {len(found)}")
    return found[0]


def pypesto_posterior(problem: Any, ids: list[str], r: dict[str, Any], a: argparse.Namespace) -> None:
    """AdaptiveMetropolis from the chain starts, the objective's CVODE at the posterior tolerances."""
    import pypesto.sample as sample

    from immunetwin.inference import CALIBRATION_CONTROLS as CTL

    n = 2 * a.pypesto_draws
    estimate = r["seconds_per_eval"] * a.chains * n
    r["posterior_estimate_s"] = estimate
    if estimate > a.max_seconds:
        r["posterior_note"] = (
            f"sampling skipped: estimated {estimate:,.0f} s > --max-seconds {a.max_seconds:g}"
        )
        return
    inits = _reduced(problem, ids, np.asarray(r["chain_starts"]))
    traces = []
    objective = roadrunner_objective(problem)
    set_tolerances(objective, a.posterior_rtol, a.posterior_atol)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, x0 in enumerate(inits):
            np.random.seed(a.seed + k)  # pyPESTO's samplers draw from NumPy's global generator
            res = sample.sample(
                problem,
                n_samples=n,
                sampler=sample.AdaptiveMetropolisSampler({"show_progress": False}),
                x0=x0,
            )
            traces.append(np.asarray(res.sample_result.trace_x)[0, -a.pypesto_draws :])
    r["posterior_s"] = time.perf_counter() - t0
    draws = np.stack(traces)[
        ..., [[problem.x_names[i] for i in problem.x_free_indices].index(p) for p in ids]
    ]
    r |= diagnostics(draws)
    r["converged"] = r["rhat_max"] <= 1.01 and min(r["ess_bulk_min"], r["ess_tail_min"]) >= 400
    r["ess_per_s"] = r["ess_bulk_min"] / r["posterior_s"]
    spread = _spread(np.stack(traces))  # pyPESTO's own parameter order

    def llh(rtol: float, atol: float) -> Any:
        def at(xs: np.ndarray) -> np.ndarray:
            set_tolerances(objective, rtol, atol)
            return np.array([-float(problem.objective(x)) for x in xs])  # the prior is the same in both

        return at

    r["tolerance_max_diff"] = tolerance_diff(
        llh(a.posterior_rtol, a.posterior_atol), llh(CTL.rtol, CTL.atol), spread
    )
    r["posterior_note"] = (
        f"AdaptiveMetropolis {a.chains} x {a.pypesto_draws} after {a.pypesto_draws} adaptation; max R-hat "
        f"{r['rhat_max']:.3f}, min ESS bulk/tail {r['ess_bulk_min']:.0f}/{r['ess_tail_min']:.0f}; "
        f"{_tolerance_note(r, a)}"
    )


# -- one problem ------------------------------------------------------------------------------------


def prior_check(original: Any, yaml_path: Path, points: np.ndarray) -> float:
    """Largest |log prior(original) - log prior(as exported)| over ``points``: the rewrite of the
    priors must not change immunetwin's posterior."""
    import jax
    import jax.numpy as jnp

    from immunetwin.inference import compile_objective
    from immunetwin.io.petab import read_petab

    a, b = compile_objective(original).log_prior, compile_objective(read_petab(yaml_path)).log_prior
    with jax.enable_x64(True):
        diff = jax.jit(jax.vmap(lambda t: a(t) - b(t)))(jnp.asarray(points))
    return float(np.max(np.abs(np.asarray(diff))))


def bench_problem(
    name: str, a: argparse.Namespace, clock: CompileClock, cache: Path, log: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"problem": name}
    if name in TEMPLATES:
        yaml_path, original = patient_petab(name, cache.parent / name)
        out["kind"] = (
            f"one patient ({PARTICIPANT}, detected samples), template {name}, estimating {', '.join(ESTIMATE)}"
        )
    else:
        yaml_path, original = collection_yaml(name, a.collection), None
        out["kind"] = "PEtab benchmark collection"
    log(f"== {name}: immunetwin MAP ({a.starts} starts)")
    it = immunetwin_map(yaml_path, a, clock)
    out["immunetwin"] = it
    if original is not None:
        out["prior_rewrite_max_diff"] = prior_check(original, yaml_path, np.asarray(it["starts"]))
    log(f"   MAP {it['map_s']:.1f} s (compile {it['compile_s']:.1f} s); -llh {it['neg_llh']:.4f}")
    log(f"== {name}: pyPESTO MAP (same starts)")
    try:
        pp, pproblem = pypesto_map(yaml_path, name not in TEMPLATES, it, a)
    except Exception as err:  # report the peer's exact failure, keep our figures
        out["pypesto_error"] = f"{type(err).__name__}: {err}"
        log(f"   pyPESTO failed: {out['pypesto_error']}")
        pp, pproblem = None, None
    if pp is not None:
        out["pypesto"] = pp
        out["llh_diff"] = it["llh_nominal"] - pp["llh_nominal"]
        out["agree"] = abs(out["llh_diff"]) <= AGREE * (1 + abs(pp["llh_nominal"]))
        out["log_prior_offset"] = it["log_prior_nominal"] - pp["log_prior_nominal"]
        out["log_prior_offset_at_map"] = it["log_prior"] - _llh_prior(
            pproblem, _reduced(pproblem, it["ids"], np.asarray(it["theta"]))
        )[1]  # fmt: skip
        log(
            f"   MAP {pp['map_s']:.1f} s; -llh {pp['neg_llh']:.4f}; llh diff at nominal {out['llh_diff']:.2e}"
        )
    starts = chain_starts(
        np.asarray(it["theta"]), np.asarray(it["lower"]), np.asarray(it["upper"]), a.chains, a.seed
    )
    it["chain_starts"] = starts.tolist()
    if a.posterior:
        log(f"== {name}: immunetwin NUTS")
        immunetwin_posterior(name, it, yaml_path, a, cache)
        log(f"   {it['posterior_note']}")
        if a.metropolis:
            log(f"== {name}: immunetwin Metropolis")
            immunetwin_metropolis(name, it, yaml_path, a, cache)
            log(f"   {it['metropolis']['posterior_note']}")
        if pp is not None:
            pp["chain_starts"] = it["chain_starts"]
            log(f"== {name}: pyPESTO AdaptiveMetropolis")
            try:
                pypesto_posterior(pproblem, it["ids"], pp, a)
                log(f"   {pp['posterior_note']}")
            except Exception as err:
                pp["posterior_note"] = f"sampling failed: {type(err).__name__}: {err}"
                log(f"   {pp['posterior_note']}")
    return out


# -- report -----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import jax
    import numpyro
    import pypesto
    import roadrunner
    import scipy

    import immunetwin

    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": cpu.group(1).strip() if cpu else platform.processor(), "cores": len(os.sched_getaffinity(0)),
        "load_start": os.getloadavg()[0], "python": platform.python_version(), "immunetwin": immunetwin.__version__,
        "jax": jax.__version__, "numpyro": numpyro.__version__, "pypesto": pypesto.__version__,
        "roadrunner": roadrunner.__version__, "scipy": scipy.__version__, "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip


def _f(x: Any, fmt: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _ratio(num: Any, den: Any) -> float | None:
    return num / den if num and den else None


def table(p: dict[str, Any]) -> list[str]:
    it, pp = p["immunetwin"], p.get("pypesto")
    head = "| tool | compile s | MAP wall s (starts) | best -log-lik | at best | posterior wall s | ESS/s | converged | MAP speed-up vs pyPESTO | ESS/s vs pyPESTO |"  # fmt: skip
    rows = [head, "|" + "---|" * 10]
    for r in (it, pp):
        if r is None:
            continue
        if r is pp and "metropolis" in it:  # the MAP columns are immunetwin's row's
            m = it["metropolis"]
            ess_x = _ratio(m.get("ess_per_s"), pp.get("ess_per_s")) if pp else None
            conv = {True: "yes", False: "no", None: "-"}[m.get("converged")]
            rows.append(
                f"| {m['tool']} | - | - | - | - | {_f(m.get('posterior_s'), '.1f')} | {_f(m.get('ess_per_s'), '.2f')} | "
                f"{conv} | - | {_x(ess_x)} |"
            )
        map_x = _ratio(pp["map_s"], r["map_s"]) if pp else None
        ess_x = _ratio(r.get("ess_per_s"), pp.get("ess_per_s")) if pp else None
        conv = {True: "yes", False: "no", None: "-"}[r.get("converged")]
        failed = f" ({r['failed_starts']} failed)" if r.get("failed_starts") else ""
        rows.append(
            f"| {r['tool']} | {_f(r['compile_s'], '.1f')} | {_f(r['map_s'])} ({r['n_starts']}) | "
            f"{_f(r['neg_llh'], '.4f')} | {r['at_best']}/{r['n_starts']}{failed} | {_f(r.get('posterior_s'), '.1f')} | "
            f"{_f(r.get('ess_per_s'), '.2f')} | {conv} | {_x(map_x)} | {_x(ess_x)} |"
        )
    return rows


def problem_markdown(p: dict[str, Any]) -> list[str]:
    it, pp = p["immunetwin"], p.get("pypesto")
    lines = [f"### {p['problem']}", "", f"{p['kind']}; {len(it['ids'])} estimated parameters.", ""]
    lines += [*table(p), ""]
    if pp is not None:
        agree = "agree" if p["agree"] else "**DISAGREE: the ratios compare different computations**"
        lines.append(
            f"- Log-likelihood at the nominal parameters: immunetwin {it['llh_nominal']:.6f}, pyPESTO "
            f"{pp['llh_nominal']:.6f}, difference {p['llh_diff']:.2e} ({agree}). Log prior immunetwin - pyPESTO: "
            f"{p['log_prior_offset']:.4g} at the nominal point, {p['log_prior_offset_at_map']:.4g} at the MAP"
            " (equal: a constant, the same posterior)."
        )
        # both tools maximise the log posterior (log-likelihood + log prior); the priors differ by the
        # constant log_prior_offset, so the optima compare on log posterior - offset
        gap = (it["objective"] - p["log_prior_offset"]) - pp["objective"]
        if abs(gap) > 0.1:
            better = "immunetwin" if gap > 0 else "pyPESTO"
            lines.append(
                f"- From the same starts the best MAPs differ: {better}'s log posterior is higher by {abs(gap):.3g} "
                f"(-log-lik immunetwin {it['neg_llh']:.4f}, pyPESTO {pp['neg_llh']:.4f}; log prior immunetwin "
                f"{it['log_prior'] - p['log_prior_offset']:.4f}, pyPESTO {pp['log_prior']:.4f}, on pyPESTO's constant)."
            )
    else:
        lines.append(f"- pyPESTO could not run this problem: `{p.get('pypesto_error')}`")
    if "prior_rewrite_max_diff" in p:
        lines.append(f"- Priors rewritten on the parameter scale: largest change of immunetwin's log prior over the starts {p['prior_rewrite_max_diff']:.1e}.")  # fmt: skip
    lines.append(
        f"- immunetwin ({it.get('backend', 'xla')}): compile {it['compile_s']:.1f} s (PEtab import and the model's "
        f"C build or cache load {it['setup_s']:.1f} s; JAX tracing + lowering + XLA: nominal check "
        f"{it['check_compile_s']:.1f} s, first fit_map call {it['first_fit_compile_s']:.1f} s); the timed "
        f"fit_map call spent {it['map_compile_s']:.1f} s of its {it['map_s']:.2f} s tracing or compiling; "
        f"{it['evaluations']} value+gradient evaluations, "
        f"{it['seconds_per_eval'] * 1e3:.1f} ms each."
    )
    if pp is not None:
        lines.append(
            f"- pyPESTO: {pp['evaluations']} simulations ({pp['seconds_per_eval'] * 1e3:.1f} ms each); gradient by "
            f"{pp['gradient']}; {pp['failed_starts']} failed starts (a CVODE failure raises in pyPESTO's"
            " RoadRunner objective and ends that start)."
        )
    lines.append(f"- Posterior, immunetwin: {it.get('posterior_note', 'not run (--no-posterior)')}.")
    if "metropolis" in it:
        lines.append(f"- Posterior, immunetwin Metropolis: {it['metropolis'].get('posterior_note')}.")
    if pp is not None:
        lines.append(f"- Posterior, pyPESTO: {pp.get('posterior_note', 'not run')}.")
    return [*lines, ""]


def targets(res: dict[str, Any]) -> list[str]:
    out = []
    for p in res["problems"]:
        it, pp, n = p["immunetwin"], p.get("pypesto"), p["problem"]
        out.append(
            f"- {n}: MAP <= {TARGET_MAP_S:g} s: {it['map_s']:.2f} s -> {_met(it['map_s'] <= TARGET_MAP_S)}"
        )
        samplers = [("NUTS", it)] + ([("Metropolis", it["metropolis"])] if "metropolis" in it else [])
        for label, r in samplers:
            post = r.get("posterior_s") if r.get("converged") else None
            what = f"{post:.1f} s" if post else ("not converged" if "posterior_s" in r else "not run")
            out.append(f"- {n}: converged posterior <= {TARGET_POSTERIOR_S:g} s ({label}): {what} -> {_met(bool(post and post <= TARGET_POSTERIOR_S))}")  # fmt: skip
        if pp is None or not p["agree"]:
            continue
        x = _ratio(pp["map_s"], it["map_s"])
        if pp["failed_starts"]:
            out.append(f"- {n}: MAP vs pyPESTO: not comparable, {pp['failed_starts']} pyPESTO starts failed")
        else:
            out.append(f"- {n}: MAP >= {TARGET_RATIO:g}x faster than pyPESTO: {_x(x)} -> {_met(bool(x and x >= TARGET_RATIO))}")  # fmt: skip
        for label, r in samplers:
            e = _ratio(r.get("ess_per_s"), pp.get("ess_per_s")) if r.get("converged") else None
            why = "" if r.get("converged") or "posterior_s" not in r else " (not converged)"
            out.append(f"- {n}: posterior ESS/s >= {TARGET_RATIO:g}x pyPESTO's ({label}): {_x(e)}{why} -> {_met(bool(e and e >= TARGET_RATIO))}")  # fmt: skip
    return out


def _met(ok: bool) -> str:
    return "met" if ok else "**NOT MET**"


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "## Calibration: time to MAP and to a converged posterior",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (load average {m['load_start']:.1f} at start, "
        f"{res['load_end']:.1f} at end); Python {m['python']}, immunetwin {m['immunetwin']} (commit {m['commit']}), "
        f"jax {m['jax']}, numpyro {m['numpyro']}, pyPESTO {m['pypesto']}, libroadrunner {m['roadrunner']}, "
        f"scipy {m['scipy']}; {m['date']}.  ",
        f"Command: `{res['command']}`",
        "",
        res["method"],
        "",
    ]  # fmt: skip
    for p in res["problems"]:
        lines += problem_markdown(p)
    return "\n".join([*lines, "Targets (issue 4):", "", *targets(res), ""])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = ap.add_argument
    add("--quick", action="store_true", help="smoke test: 3 starts, NUTS 4 x 50 after 50, pyPESTO 4 x 500")
    add("--problems", help=f"comma-separated (default {','.join(DEFAULT_PROBLEMS)}; any collection problem)")
    add("--starts", type=int, help="MAP starts, the same for both tools (default 10; --quick 3)")
    add("--chains", type=int, default=4)
    add(
        "--repeats",
        type=int,
        default=3,
        help="MAP timings: the best wall of this many identical fits, each tool",
    )
    add("--draws", type=int, help="NUTS draws per chain (default 1000; --quick 50)")
    add("--warmup", type=int, help="NUTS warm-up per chain (default 1000; --quick 50)")
    add("--pypesto-draws", type=int, help="kept AdaptiveMetropolis draws per chain, after as many adaptation draws (default 2500; --quick 500)")  # fmt: skip
    add("--posterior", action=argparse.BooleanOptionalAction, default=True)
    add(
        "--metropolis",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also sample with sample_posterior(sampler='metropolis') (default on)",
    )
    add("--metropolis-chains", type=int, help="Metropolis chains (default 16, sample_posterior's; --quick 8)")
    add("--metropolis-draws", type=int, help="Metropolis draws per chain (default 4000; --quick 200)")
    add("--metropolis-warmup", type=int, help="Metropolis warm-up per chain (default 1000; --quick 200)")
    add(
        "--chain-method",
        choices=("parallel", "vectorized", "sequential"),
        default="parallel",
        help="sample_posterior's chain_method (default parallel: one compiled program, one thread per core)",
    )
    add(
        "--metric",
        choices=sorted(_METRICS),
        default="dense",
        help="NUTS metric: dense (default) or adapt (diagonal) learnt in warm-up, laplace (dense, fixed) or"
        " laplace_adapt (dense, learnt from the Laplace one)",
    )
    add(
        "--problem-metric",
        type=_problem_metric,
        action="append",
        default=None,
        metavar="PROBLEM=METRIC",
        help=f"one problem's NUTS metric (repeat; default {' '.join('='.join(p) for p in PROBLEM_METRICS)})",
    )
    add(
        "--target-accept",
        type=float,
        default=0.8,
        help="NUTS's target acceptance probability in warm-up (default 0.8, NumPyro's and Stan's)",
    )
    add(
        "--problem-target-accept",
        type=_problem_target_accept,
        action="append",
        default=None,
        metavar="PROBLEM=P",
        help="one problem's target acceptance (repeat; default "
        f"{' '.join(f'{n}={p:g}' for n, p in PROBLEM_TARGET_ACCEPT)})",
    )
    add(
        "--posterior-rtol",
        type=float,
        default=1e-6,
        help="both samplers' ODE relative tolerance (default 1e-6; the MAPs run at 1e-8)",
    )
    add(
        "--posterior-atol",
        type=float,
        default=1e-8,
        help="both samplers' ODE absolute tolerance (default 1e-8; the MAPs run at 1e-10)",
    )
    add(
        "--max-seconds",
        type=float,
        default=900.0,
        help="skip a posterior estimated to take longer (default 900)",
    )
    add("--seed", type=int, default=20240101)
    add(
        "--backend",
        choices=("native", "xla"),
        default="native",
        help="immunetwin's engine (compile_objective's backend=; default native)",
    )
    add(
        "--leapfrog", type=float, default=LEAPFROG, help="leapfrog steps per NUTS iteration for the skip rule"
    )
    add("--collection", type=Path, default=COLLECTION, help="PEtab benchmark collection folder")
    add("--json", type=Path, help="write every figure here (after each problem)")
    add("--markdown", type=Path, help="file whose <!-- calibration:start/end --> section to replace")
    add("--from-json", type=Path, help="only render a --json file (to stdout and --markdown)")
    add("--_nuts", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.problem_metric = PROBLEM_METRICS if a.problem_metric is None else a.problem_metric
    if a.problem_target_accept is None:
        a.problem_target_accept = PROBLEM_TARGET_ACCEPT
    if a._nuts:
        return nuts_child(a._nuts)
    if a.from_json:
        return _emit(json.loads(a.from_json.read_text(encoding="utf-8")), a)
    a.starts = a.starts or (3 if a.quick else 10)
    a.draws = a.draws or (50 if a.quick else 1000)
    a.warmup = a.warmup if a.warmup is not None else (50 if a.quick else 1000)
    a.pypesto_draws = a.pypesto_draws or (500 if a.quick else 2500)
    a.metropolis_chains = a.metropolis_chains or (8 if a.quick else 16)
    a.metropolis_draws = a.metropolis_draws or (200 if a.quick else 4000)
    a.metropolis_warmup = (
        a.metropolis_warmup if a.metropolis_warmup is not None else (200 if a.quick else 1000)
    )
    a.metropolis = a.metropolis and a.posterior
    names = a.names = a.problems.split(",") if a.problems else list(DEFAULT_PROBLEMS)

    from immunetwin.runtime import compile_small_loops_whole, enable_compilation_cache

    compile_small_loops_whole()
    tmp = tempfile.TemporaryDirectory(prefix="immunetwin-calbench-", ignore_cleanup_errors=True)
    work = Path(tmp.name)
    cache = enable_compilation_cache(
        work / "jax-cache"
    )  # fresh: the first compile is real, later calls reuse it
    clock = CompileClock()
    res: dict[str, Any] = {
        "machine": machine(),
        "command": "python benchmarks/calibration.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "method": (
            f"Same PEtab files, same {a.starts} L-BFGS-B start points (nominal + uniform in the bounds, seed "
            f"{a.seed}), same options (maxiter 500, ftol 1e-9, gtol 1e-8), both objectives at rtol 1e-8 / atol 1e-10; "
            f"MAP walls the best of {a.repeats} identical fits per tool. "
            f"Posterior: both samplers' solves at rtol {a.posterior_rtol:g} / atol {a.posterior_atol:g}, checked against "
            f"the MAP's tolerances at {TOLERANCE_DRAWS} draws; {a.chains} chains around immunetwin's MAP; immunetwin NUTS "
            f"{a.draws} draws after {a.warmup} warm-up ({_metrics_text(a)}; {_target_accept_text(a)}); pyPESTO AdaptiveMetropolis {a.pypesto_draws} kept after "
            f"{a.pypesto_draws} adaptation; {_metropolis_text(a)}ESS/s = smallest bulk ESS / posterior wall. Ratios: pyPESTO time / "
            "immunetwin time (above 1: immunetwin faster). Figures from a shared machine are noisy."
        ),
        "problems": [],
    }  # fmt: skip
    for name in names:
        res["problems"].append(bench_problem(name, a, clock, cache, lambda s: print(s, flush=True)))
        res["load_end"] = os.getloadavg()[0]
        if a.json:
            a.json.write_text(json.dumps(res, indent=1, default=float), encoding="utf-8")
    _emit(res, a)


def _metropolis_text(a: argparse.Namespace) -> str:
    if not a.metropolis:
        return ""
    return (
        f"immunetwin Metropolis {a.metropolis_chains} chains x {a.metropolis_draws} draws after "
        f"{a.metropolis_warmup} warm-up, starts drawn as pyPESTO's; "
    )


def _metrics_text(a: argparse.Namespace) -> str:
    own = "; ".join(f"{n}: {_METRICS[m]}" for n, m in a.problem_metric if n in a.names)
    return _METRICS[a.metric] + (f"; except {own}" if own else "")


def _target_accept_text(a: argparse.Namespace) -> str:
    own = ", ".join(f"{n} {p:g}" for n, p in a.problem_target_accept if n in a.names)
    return f"target acceptance {a.target_accept:g}" + (f" except {own}" if own else "")


def _problem_target_accept(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        p = float(value) if sep else math.nan
    except ValueError:
        p = math.nan
    if not 0.0 < p < 1.0:
        raise argparse.ArgumentTypeError(f"'{text}': give PROBLEM=P with 0 < P < 1")
    return name, p


def _problem_metric(text: str) -> tuple[str, str]:
    name, sep, metric = text.partition("=")
    if not sep or metric not in _METRICS:
        raise argparse.ArgumentTypeError(
            f"'{text}': give PROBLEM=METRIC with METRIC one of {', '.join(_METRICS)}"
        )
    return name, metric


def _emit(res: dict[str, Any], a: argparse.Namespace) -> None:
    text = markdown(res)
    print(text)
    if a.markdown:
        from immunetwin.conformance.report import replace_section

        replace_section(a.markdown, "calibration", text)
        print(f"wrote the calibration section of {a.markdown}")


if __name__ == "__main__":
    main()
