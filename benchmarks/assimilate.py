"""Assimilating one new measurement and refreshing the forecast, beside libroadrunner, in the same run.

Method. A ``viral_immune`` twin with 1,000 particles is personalised (not timed) on the first
``--first`` nasal swabs of one person of Ke et al. 2022 (``immunetwin.datasets``; default ke01, 6
swabs, personalising V0, beta, p, a_T and kappa_E), or read from ``--twin FILE``. Then, timed on warm
(compiled) code:

* **immunetwin**: ``assimilate(twin, next swab)`` followed by ``forecast(new twin, 28)`` (daily
  quantiles of every observable, model and predictive, and of every latent state). Repeated
  ``--repeats`` times from the same twin with different keys; the median is the figure. The first
  call (which compiles the solver for the output lengths used) is reported apart.
* **sequence**: the person's later swabs absorbed one at a time, each followed by a forecast; the
  median over the sequence, with the update method each step used (reweighting, or resampling and
  Metropolis moves when the ESS falls below half).
* **libroadrunner** (CVODE, stiff, the same rtol/atol as the twin's particle simulations): the
  forecast refresh alone, i.e. the same 1,000 particles simulated from their states at the new
  reference time over the same 28 days and outputs (``resetAll``, set the parameters, set the
  states, ``simulate``). The ratio is libroadrunner's time for the simulations alone over
  immunetwin's time for the whole update and forecast; the median viral-load forecast of both is
  compared as a check that they solve the same problem.

Target (issue 5): assimilate one measurement and refresh the forecast with >= 1,000 particles in at
most 1 s (median) on 2 cores.

    python benchmarks/assimilate.py                       # personalise, then time (about 5-10 min)
    python benchmarks/assimilate.py --save-twin t.zip     # keep the twin for later runs
    python benchmarks/assimilate.py --twin t.zip --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

TARGET_S = 1.0
ESTIMATE = ("V0", "beta", "p", "a_T", "kappa_E")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--participant", default="ke01")
    p.add_argument("--first", type=int, default=6, help="swabs the twin is personalised on")
    p.add_argument("--particles", type=int, default=1000)
    p.add_argument("--horizon", type=float, default=28.0)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seed", type=int, default=2022)
    p.add_argument("--twin", type=Path, help="use this twin file instead of personalising")
    p.add_argument("--save-twin", type=Path, help="write the personalised twin here")
    p.add_argument("--cpu-devices", type=int, default=0, help="JAX CPU devices (default: one per core)")
    p.add_argument("--no-roadrunner", action="store_true")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--write", type=Path, help="replace the assimilate section of this markdown file")
    return p.parse_args()


def machine() -> dict[str, Any]:
    import jax

    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {"cpu": cpu.group(1).strip() if cpu else platform.processor(), "cores": len(os.sched_getaffinity(0)),
            "devices": jax.device_count(), "python": platform.python_version(), "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d"), "commit": commit or "?", "load_start": os.getloadavg()[0]}  # fmt: skip


def base_twin(a: argparse.Namespace, data: Any) -> tuple[Any, float | None]:
    import jax

    from immunetwin.twin import load_twin, personalise, save_twin

    if a.twin is not None:
        return load_twin(a.twin), None
    t = time.perf_counter()
    twin = personalise("viral_immune", data.iloc[: a.first], patient=a.participant, draws=a.particles,
                       estimate=ESTIMATE, key=jax.random.PRNGKey(a.seed))  # fmt: skip
    seconds = time.perf_counter() - t
    if a.save_twin is not None:
        save_twin(twin, a.save_twin)
    return twin, seconds


def step(twin: Any, row: Any, key: Any, horizon: float) -> tuple[float, float, Any, Any]:
    """One timed update and forecast: (assimilate s, forecast s, new twin, forecast)."""
    from immunetwin.twin import assimilate, forecast

    t0 = time.perf_counter()
    new = assimilate(twin, row, key=key)
    t1 = time.perf_counter()
    fc = forecast(new, horizon)
    return t1 - t0, time.perf_counter() - t1, new, fc


def roadrunner_forecast(twin: Any, horizon: float) -> tuple[float, np.ndarray]:
    """The same particles from their states at the reference time: wall s and (N, T) log10 V."""
    import roadrunner

    tpl, b, ctl = twin.template, twin.belief, twin.settings.controls
    rr = roadrunner.RoadRunner(tpl.sbml)
    rr.integrator.relative_tolerance, rr.integrator.absolute_tolerance = ctl.rtol, ctl.atol
    rr.integrator.stiff = True
    rr.timeCourseSelections = ["time", "[V]"]
    values, t_r = b.values, twin.reference_time
    points = round(horizon) + 1
    out = np.full((b.size, points), np.nan)
    t = time.perf_counter()
    for i in range(b.size):
        rr.resetAll()
        for k, v in values.items():
            rr[k] = float(v[i])
        rr.reset()
        for j, s in enumerate(b.state_ids):
            rr[f"[{s}]"] = float(b.states[i, j])
        with contextlib.suppress(RuntimeError):  # a failed solve stays NaN and is counted
            out[i] = np.asarray(rr.simulate(t_r, t_r + horizon, points))[:, 1]
    return time.perf_counter() - t, np.log10(np.maximum(out, 1e-3))


def run(a: argparse.Namespace, log: Any) -> dict[str, Any]:
    import jax

    from immunetwin.datasets import ke2022_nasal, viral_load_table
    from immunetwin.twin.belief import weighted_quantiles

    res: dict[str, Any] = {"machine": machine(), "command": "python " + " ".join(sys.argv)}
    data = viral_load_table(ke2022_nasal(), a.participant)
    twin, res["personalise_s"] = base_twin(a, data)
    later = data[data["time"] > twin.reference_time]
    res |= {"particles": twin.belief.size, "reference_time": twin.reference_time, "swabs": len(twin.observations),
            "participant": twin.patient, "estimate": list(twin.belief.parameter_ids)}  # fmt: skip
    log(f"twin: {twin!r}; personalise {res['personalise_s'] or 0:.0f} s")
    row = later.iloc[[0]]
    first = step(twin, row, jax.random.PRNGKey(0), a.horizon)
    res["first_call_s"] = first[0] + first[1]
    walls, methods = [], []
    for r in range(a.repeats):
        s_a, s_f, new, _ = step(twin, row, jax.random.PRNGKey(1 + r), a.horizon)
        walls.append((s_a, s_f))
        methods.append(new.belief.method)
    totals = [x + y for x, y in walls]
    res |= {"repeat_total_s": totals, "repeat_assimilate_s": [x for x, _ in walls],
            "repeat_forecast_s": [y for _, y in walls], "repeat_methods": methods,
            "median_s": statistics.median(totals)}  # fmt: skip
    log(
        f"one swab + forecast: median {res['median_s']:.3f} s over {a.repeats} ({', '.join(sorted(set(methods)))})"
    )
    seq, cur = [], twin
    for k in range(len(later)):
        s_a, s_f, cur, _ = step(cur, later.iloc[[k]], jax.random.PRNGKey(100 + k), a.horizon)
        seq.append({"day": float(later["time"].iloc[k]), "assimilate_s": s_a, "forecast_s": s_f,
                    "method": cur.belief.method, "ess": cur.belief.ess, "alerts": len(cur.alerts)})  # fmt: skip
    res["sequence"] = seq
    res["sequence_median_s"] = statistics.median(x["assimilate_s"] + x["forecast_s"] for x in seq)
    log(f"sequence of {len(seq)} swabs: median {res['sequence_median_s']:.3f} s")
    if not a.no_roadrunner:
        new = step(twin, row, jax.random.PRNGKey(1), a.horizon)[2]
        wall, vl = roadrunner_forecast(new, a.horizon)
        ours = first_forecast_median(new, a.horizon)
        ok = np.all(np.isfinite(vl), axis=1)
        theirs = weighted_quantiles(vl[ok], new.belief.weights[ok], np.array([0.5]))[0]
        res |= {"roadrunner_s": wall, "roadrunner_failed": int((~ok).sum()),
                "ratio": wall / res["median_s"], "median_vl_max_diff": float(np.max(np.abs(theirs - ours)))}  # fmt: skip
        log(f"libroadrunner forecast simulations alone: {wall:.2f} s; ratio {res['ratio']:.1f}x")
    res["machine"]["load_end"] = os.getloadavg()[0]
    return res


def first_forecast_median(twin: Any, horizon: float) -> np.ndarray:
    from immunetwin.twin import forecast

    return forecast(twin, horizon).quantiles("viral_load", "model")[:, 2]


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    met = res["median_s"] <= TARGET_S
    rows = [
        ("immunetwin: assimilate one swab + forecast 28 days (same step repeated)", f"{res['median_s']:.3f}",
         f"median of {len(res['repeat_total_s'])}; assimilate {statistics.median(res['repeat_assimilate_s']):.3f} s"
         f" + forecast {statistics.median(res['repeat_forecast_s']):.3f} s; {', '.join(sorted(set(res['repeat_methods'])))}"),
        ("immunetwin: later swabs one at a time, each + forecast", f"{res['sequence_median_s']:.3f}",
         f"median of {len(res['sequence'])}; methods: "
         + ", ".join(f"{k} x{sum(s['method'] == k for s in res['sequence'])}" for k in sorted({s['method'] for s in res['sequence']}))),
        ("immunetwin: first call (compiles)", f"{res['first_call_s']:.2f}", "once per process and output length"),
    ]  # fmt: skip
    if "roadrunner_s" in res:
        rows.append(("libroadrunner CVODE: forecast simulations alone", f"{res['roadrunner_s']:.2f}",
                     f"same {res['particles']} particles and states; {res['roadrunner_failed']} failed"))  # fmt: skip
    out = [
        "## Twin update: assimilate one measurement and refresh the forecast", "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['devices']} JAX CPU devices); Python {m['python']}, jax {m['jax']};"
        f" {m['date']}; commit {m['commit']} plus the working tree; load average {m['load_start']:.1f} at start,"
        f" {m['load_end']:.1f} at end (other work on the machine slows every figure).  ",
        f"Command: `{res['command']}`", "",
        f"Twin: viral_immune, {res['participant']} (Ke et al. 2022), personalised on {res['swabs']} swabs to day"
        f" {res['reference_time']:g} ({', '.join(res['estimate'])}), {res['particles']} particles"
        + (f"; personalisation took {res['personalise_s']:.0f} s." if res.get("personalise_s") else "."), "",
        "| what | wall s | note |", "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows], "",
    ]  # fmt: skip
    if "ratio" in res:
        out += [f"Ratio: libroadrunner's forecast simulations alone take {res['ratio']:.1f}x immunetwin's whole update"
                f" and forecast. Agreement: largest difference of the median viral-load forecast, immunetwin vs"
                f" libroadrunner, {res['median_vl_max_diff']:.2g} log10.", ""]  # fmt: skip
    out += [
        f"Target: median <= {TARGET_S:g} s on 2 cores: {res['median_s']:.3f} s -> **{'MET' if met else 'NOT MET'}**"
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    a = parse()
    from immunetwin.runtime import (
        compile_small_loops_whole,
        default_cache_dir,
        enable_compilation_cache,
        use_all_cpu_cores,
    )

    use_all_cpu_cores(a.cpu_devices or None)
    compile_small_loops_whole()
    enable_compilation_cache(default_cache_dir())
    res = run(a, lambda s: print(s, flush=True))
    text = markdown(res)
    print(text)
    if a.json is not None:
        a.json.write_text(json.dumps(res, indent=1))
    if a.write is not None:
        from immunetwin.conformance.report import replace_section

        replace_section(a.write, "assimilate", text)
        print(f"wrote the assimilate section of {a.write}")


if __name__ == "__main__":
    main()
