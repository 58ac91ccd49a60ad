"""Virtual patients per second of an in-silico trial, beside named peers, in the same run.

Method. A two-arm paired trial of ``viral_immune`` (14 states, stiff): no treatment vs a 5-day antiviral
course at 90 % efficacy from day 3 (the template's ``antiviral`` intervention: ``eps_av = 0.9`` on
[3, 8) days). Every virtual patient gets both arms (two simulations), 28 days with outputs every 0.25 day
(113 times), rtol 1e-6 / atol 1e-9 for every tool; endpoints peak damage, severe, time to clearance.
Patients are drawn from the template priors of the estimated parameters (no plausibility constraints,
so every drawn patient is simulated once per arm: the figure is simulation throughput, not acceptance).

* immunetwin ``run_trial`` with each engine (``--backends``: the XLA engine and the native backend,
  the model's solver generated as C), timed from the trial definition to the endpoint tables (population draw,
  chunked simulation, outcomes, intervals), after a warm-up trial that compiles the programs:
  in process (JAX sees one CPU device per core, a chunk split over them), and on Dask ``LocalCluster``
  s of 1 and 2 worker processes (each with the cores shared out, persistent compilation cache), two ways
  (``--cluster``): ``started``, the timing includes starting the cluster and its workers' imports (a
  cluster per trial), and ``running``, the trial on a cluster already started and warmed up by the
  warm-up trial (as the service keeps one: ``immunetwin.service.runners.DaskRunner``).
* libroadrunner (CVODE, stiff): the per-patient loop the field uses, both arms per patient: untreated
  ``simulate(0, 28)``; treated in three segments (0-3, set ``eps_av``, 3-8, reset, 8-28) on the same
  output grid. Run on a subset and reported per patient, in slices, one after each immunetwin run (the
  shared machine's speed drifts by tens of percent within minutes, so a baseline timed once, before
  or after, can be off for every ratio); the ratio uses the pooled rate, the JSON keeps each slice's.
  The baseline on the CPU (one core).
* diffrax (GPU run, ``--diffrax-patients``): a plain ``jax.vmap`` of ``diffeqsolve`` with ``Kvaerno5``
  and a PID controller whose ``jump_ts`` are the course's start and end, ``eps_av`` switched inside the
  vector field; both arms, a subset.

Targets (issue 7): at least 20x libroadrunner per CPU core on the 2-core CPU; on an H100 one
1,000,000-patient arm of the flagship under 10 s. Run ``python benchmarks/trial.py --write BENCHMARKS.md``
(CPU) or ``--patients 1000000 --no-roadrunner --workers 0 --chunk 250000 --diffrax-patients 2000`` on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cohort import initial_states, machine, numpy_functions, write_section

TEMPLATE, DAYS, STEP, RTOL, ATOL = "viral_immune", 28.0, 0.25, 1e-6, 1e-9
START, DURATION, EFFICACY = 3.0, 5.0, 0.9
ARMS = {
    "none": "none",
    "antiviral": f"antiviral(start={START:g},duration={DURATION:g},efficacy={EFFICACY:g})",
}
TARGET_PER_CORE, TARGET_GPU_ARM_S = 20.0, 10.0


def spec(n: int, chunk: int, seed: int, backend: str = "xla") -> Any:
    from immunetwin.cohorts import parse_trial

    return parse_trial({"name": "benchmark", "template": TEMPLATE, "seed": seed, "horizon": DAYS, "step": STEP,
                        "arms": ARMS, "control": "none", "endpoints": ["peak_damage", "severe", "time_to_clearance"],
                        "sample_size": n, "execution": {"chunk_size": chunk}, "solver": {"backend": backend}},
                       where="benchmark")  # fmt: skip


def executor(workers: int, cache: str | None) -> Any:
    from immunetwin.cohorts import DaskCluster, InProcess

    return InProcess() if workers == 0 else DaskCluster(workers=workers, cache_dir=cache)


def run_immunetwin(n: int, chunk: int, workers: int, seed: int, cache: str | None, backend: str = "xla",
                   running: bool = False) -> dict[str, Any]:  # fmt: skip
    """Warm-up trial, then the timed one. ``running``: both on one Dask session opened before the
    clock (the cluster's start and the workers' imports are not timed); otherwise each trial gets
    its own executor, and a Dask run's timing includes starting its cluster."""
    from immunetwin.cohorts import Opened, run_trial

    with contextlib.ExitStack() as stack:
        if running:
            ex = Opened(stack.enter_context(executor(workers, cache).session()))
            make = lambda: ex  # noqa: E731
        else:
            make = lambda: executor(workers, cache)  # noqa: E731
        t = time.perf_counter()
        run_trial(spec(min(n, chunk), chunk, seed + 1, backend), executor=make())  # warm-up: compiles
        warm = time.perf_counter() - t
        t = time.perf_counter()
        res = run_trial(spec(n, chunk, seed, backend), executor=make())
        wall = time.perf_counter() - t
    ok = int(res.patients.ok.sum())
    c = res.contrast("antiviral", "peak_damage")
    return {"workers": workers, "backend": backend, "running": running, "patients": n, "wall_s": wall, "warmup_s": warm,
            "ok_sims": ok, "sims": 2 * n, "patients_per_s": n / wall, "peak_damage_diff": [c.estimate, c.lower, c.upper],
            "params": {k: v[:2000].tolist() for k, v in res.population.parameters.items()}}  # fmt: skip


def run_roadrunner(params: dict[str, np.ndarray], n: int, first: int = 0) -> dict[str, Any]:
    """libroadrunner's loop over patients ``first .. first + n - 1`` of ``params``, both arms each."""
    import roadrunner

    from immunetwin.templates import load_template

    tpl = load_template(TEMPLATE)
    rr = roadrunner.RoadRunner(tpl.sbml)
    rr.integrator.relative_tolerance, rr.integrator.absolute_tolerance = RTOL, ATOL
    rr.integrator.stiff = True
    rr.timeCourseSelections = ["time", "[V]", "[D]"]
    grid = np.linspace(0.0, DAYS, int(DAYS / STEP) + 1)
    cut = [0.0, START, START + DURATION, DAYS]
    fails, peak = 0, []
    t = time.perf_counter()
    for i in range(first, first + n):
        for arm in ("none", "antiviral"):
            rr.resetAll()
            for k, v in params.items():
                rr[k] = float(v[i])
            rr.reset()
            try:
                if arm == "none":
                    out = np.asarray(rr.simulate(0.0, DAYS, len(grid)))
                else:
                    parts = []
                    for s, (a, b) in enumerate(itertools.pairwise(cut)):
                        rr["eps_av"] = EFFICACY if s == 1 else 0.0
                        pts = round((b - a) / STEP) + 1
                        seg = np.asarray(rr.simulate(a, b, pts))
                        parts.append(seg if s == 0 else seg[1:])
                    out = np.concatenate(parts)
                peak.append(float(out[:, 2].max()))
            except RuntimeError:
                fails += 1
    wall = time.perf_counter() - t
    return {"patients": n, "wall_s": wall, "patients_per_s": n / wall, "failed": fails,
            "peak_damage_diff": float(np.mean(np.array(peak[1::2]) - np.array(peak[0::2]))) if peak else float("nan"),
            "peaks": peak}  # fmt: skip


def pool_roadrunner(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """The slices of :func:`run_roadrunner` as one run: pooled rate, and each slice's rate."""
    n, wall = sum(s["patients"] for s in slices), sum(s["wall_s"] for s in slices)
    peak = np.array([p for s in slices for p in s["peaks"]])
    return {"patients": n, "wall_s": wall, "patients_per_s": n / wall, "failed": sum(s["failed"] for s in slices),
            "peak_damage_diff": float(np.mean(peak[1::2] - peak[0::2])),
            "slices_patients_per_s": [s["patients_per_s"] for s in slices]}  # fmt: skip


def diffrax_child(n: int, seed: int) -> None:
    import diffrax
    import jax
    import jax.numpy as jnp

    from immunetwin.cohorts import FromPrior, sample_population
    from immunetwin.templates import load_template

    jax.config.update("jax_enable_x64", True)
    tpl = load_template(TEMPLATE)
    params = sample_population(tpl, n, key=seed, source=FromPrior()).parameters
    y0, c = initial_states(tpl.model, numpy_functions(tpl.model), params)
    i_eps = tpl.model.spec.constants.index("eps_av")
    grid = jnp.linspace(0.0, DAYS, int(DAYS / STEP) + 1)
    ctrl = diffrax.PIDController(rtol=RTOL, atol=ATOL, jump_ts=jnp.array([START, START + DURATION]))

    def one(y0: Any, c: Any, on: Any) -> Any:
        def f(t: Any, y: Any, args: Any) -> Any:
            eps = jnp.where((t >= START) & (t < START + DURATION), EFFICACY * on, 0.0)
            return tpl.model.functions.rhs(t, y, args.at[i_eps].set(eps))

        sol = diffrax.diffeqsolve(diffrax.ODETerm(f), diffrax.Kvaerno5(), 0.0, DAYS, None, y0, args=c,
                                  saveat=diffrax.SaveAt(ts=grid), stepsize_controller=ctrl, max_steps=16384,
                                  throw=False)  # fmt: skip
        return sol.ys, sol.result == diffrax.RESULTS.successful

    y2, c2 = jnp.asarray(np.repeat(y0, 2, axis=0)), jnp.asarray(np.repeat(c, 2, axis=0))
    on = jnp.tile(jnp.array([0.0, 1.0]), n)
    t = time.perf_counter()
    compiled = jax.jit(jax.vmap(one)).lower(y2, c2, on).compile()
    comp = time.perf_counter() - t
    t = time.perf_counter()
    _, ok = jax.block_until_ready(compiled(y2, c2, on))
    print(json.dumps({"compile_s": comp, "wall_s": time.perf_counter() - t, "ok_sims": int(np.sum(ok)),
                      "patients": n}), flush=True)  # fmt: skip


def run_diffrax(n: int, seed: int, limit: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--diffrax-child", str(n), "--seed", str(seed)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        res = json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, IndexError, json.JSONDecodeError) as err:
        return {"patients": n, "error": f"{type(err).__name__}"}
    return res | {"patients_per_s": n / res["wall_s"]}


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"## In-silico trial throughput ({m['platform'].upper()})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores; device {m['platform']} ({m['device']}); Python {m['python']}, "
             f"jax {m['jax']}; {m['date']}.  ", f"Command: `{res['command']}`", "",
             f"Trial: `{TEMPLATE}`, two arms paired (none vs antiviral {START:g}-{START + DURATION:g} d at "
             f"{EFFICACY:.0%}), {DAYS:g} days, outputs every {STEP} d, rtol {RTOL:g} / atol {ATOL:g}; patients from "
             "the template priors; immunetwin timed from definition to endpoint tables after a warm-up trial.", "",
             "| tool | workers | patients | wall s | patients/s | per core vs libroadrunner | vs diffrax | note |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    rr, dx = res.get("roadrunner"), res.get("diffrax")
    cores = m["cores"]
    dx_rate = dx["patients_per_s"] if dx and "wall_s" in dx else None
    for r in res["immunetwin"]:
        name = "in process" if r["workers"] == 0 else f"Dask LocalCluster, {r['workers']} worker(s)"
        if r["workers"]:
            name += ", running" if r.get("running") else ", started in the timing"
        ratio = f"{r['patients_per_s'] / cores / rr['patients_per_s']:.1f}x" if rr else "-"
        d = r["peak_damage_diff"]
        vs_dx = f"{r['patients_per_s'] / dx_rate:.1f}x" if dx_rate else "-"
        lines.append(f"| immunetwin run_trial ({r.get('backend', 'xla')}) | {name} | {r['patients']:,} | {r['wall_s']:.1f} | "
                     f"{r['patients_per_s']:,.0f} | {ratio} | {vs_dx} | {r['ok_sims']:,}/{r['sims']:,} sims ok; warm-up "
                     f"{r['warmup_s']:.1f} s; peak damage diff {d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}] |")  # fmt: skip
    if rr:
        sl = rr.get("slices_patients_per_s", [])
        spread = (
            f"; {len(sl)} slices, one after each run: {min(sl):,.1f}-{max(sl):,.1f} patients/s"
            if len(sl) > 1
            else ""
        )
        lines.append(f"| libroadrunner CVODE loop | 1 process | {rr['patients']:,} | {rr['wall_s']:.1f} | "
                     f"{rr['patients_per_s']:,.1f} | 1.0x | - | {rr['failed']} failed; subset, same patients{spread}; "
                     f"peak damage diff {rr['peak_damage_diff']:+.4f} |")  # fmt: skip
    if dx and "wall_s" in dx:
        lines.append(f"| diffrax Kvaerno5 vmap | in process | {dx['patients']:,} | {dx['wall_s']:.1f} | "
                     f"{dx['patients_per_s']:,.1f} | - | 1.0x | compile {dx['compile_s']:.1f} s; {dx['ok_sims']}/"
                     f"{2 * dx['patients']} sims ok; subset |")  # fmt: skip
    elif dx:
        lines.append(
            f"| diffrax Kvaerno5 vmap | in process | {dx['patients']:,} | - | - | - | - | {dx['error']} |"
        )
    lines += ["", "Targets:", ""]
    for r in res["immunetwin"]:
        if rr:
            per_core = r["patients_per_s"] / cores / rr["patients_per_s"]
            ok = "MET" if per_core >= TARGET_PER_CORE else "NOT MET"
            how = (
                ""
                if not r["workers"]
                else (", running cluster" if r.get("running") else ", cluster started in the timing")
            )
            lines.append(f"- {r.get('backend', 'xla')}, {r['workers'] or 'in-process'} worker(s){how}: >= {TARGET_PER_CORE:g}x "
                         f"libroadrunner per core: {per_core:.1f}x -> **{ok}**")  # fmt: skip
        if m["platform"] == "gpu":
            arm_s = r["wall_s"] / 2 * 1_000_000 / r["patients"]
            ok = "MET" if arm_s <= TARGET_GPU_ARM_S else "NOT MET"
            lines.append(f"- one 1,000,000-patient arm (half of the two-arm wall time, scaled to 10^6): "
                         f"{arm_s:.1f} s vs {TARGET_GPU_ARM_S:g} s -> **{ok}**")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patients", type=int, default=100_000)
    p.add_argument("--workers", default="0,1,2", help="comma list; 0 = in process (no Dask)")
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--backends", default="xla,native", help="comma list of engines (xla, native)")
    p.add_argument(
        "--cluster", default="started,running", help="Dask runs: started (cluster start timed), running"
    )
    p.add_argument("--rr-patients", type=int, default=1000)
    p.add_argument("--no-roadrunner", action="store_true")
    p.add_argument("--diffrax-patients", type=int, default=0)
    p.add_argument("--diffrax-limit", type=float, default=900.0)
    p.add_argument("--seed", type=int, default=20261123)
    p.add_argument("--json", type=Path)
    p.add_argument("--write", type=Path)
    p.add_argument("--from-json", type=Path)
    p.add_argument("--diffrax-child", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.diffrax_child:
        diffrax_child(a.diffrax_child, a.seed)
        return
    if a.from_json:
        res = json.loads(a.from_json.read_text())
    else:
        from immunetwin.runtime import (
            compile_small_loops_whole,
            default_cache_dir,
            enable_compilation_cache,
            use_all_cpu_cores,
        )

        use_all_cpu_cores()
        compile_small_loops_whole()
        cache = os.environ.get("IMMUNETWIN_CACHE") or str(default_cache_dir())
        enable_compilation_cache(Path(cache))
        res: dict[str, Any] = {"machine": machine(), "command": "python benchmarks/trial.py " + " ".join(sys.argv[1:]),
                               "immunetwin": []}  # fmt: skip
        workers = [int(x) for x in a.workers.split(",") if x.strip()]
        modes = [m.strip() == "running" for m in a.cluster.split(",") if m.strip()]
        runs = [(b.strip(), w, mode) for b, w in itertools.product([b for b in a.backends.split(",") if b.strip()], workers)
                for mode in (modes if w else [False])]  # fmt: skip
        params: dict[str, np.ndarray] | None = None
        slices: list[dict[str, Any]] = []
        bounds: list[int] = []
        for i, (backend, w, running) in enumerate(runs):
            r = run_immunetwin(a.patients, a.chunk, w, a.seed, cache, backend, running)
            print(f"immunetwin {backend} workers={w}{' running' if running else ''}: {r['wall_s']:.1f} s, "
                  f"{r['patients_per_s']:,.0f} patients/s", flush=True)  # fmt: skip
            got = r.pop("params")
            if params is None:  # the same patients in every run (same seed): the baseline's subset
                params = {k: np.asarray(v) for k, v in got.items()}
                total = min(a.rr_patients, len(next(iter(params.values()))))
                bounds = np.linspace(0, total, len(runs) + 1).astype(int).tolist()
            res["immunetwin"].append(r)
            if not a.no_roadrunner and bounds[i + 1] > bounds[i]:
                slices.append(run_roadrunner(params, bounds[i + 1] - bounds[i], bounds[i]))
                print(f"libroadrunner slice {i}: {slices[-1]['patients_per_s']:.1f} patients/s", flush=True)
        if slices:
            res["roadrunner"] = pool_roadrunner(slices)
            print(f"libroadrunner: {res['roadrunner']['patients_per_s']:.1f} patients/s", flush=True)
        if a.diffrax_patients:
            res["diffrax"] = run_diffrax(a.diffrax_patients, a.seed, a.diffrax_limit)
            print(f"diffrax: {res['diffrax']}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    text = markdown(res)
    print(text)
    if a.write:
        write_section(a.write, f"trial-{res['machine']['platform']}", text)


if __name__ == "__main__":
    main()
