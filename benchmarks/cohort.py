"""Virtual-cohort throughput of the immunetwin engine beside named peers, in the same run.

Method. A cohort of N virtual patients (default 10,000) is drawn once per model (numpy Generator, explicit
seed): each *estimated* parameter of the template (``estimate: true``, the first five) is the nominal value
times a mean-one log-normal factor with CV 25 %, clipped to the template's plausible range. Every tool
solves the *same* parameter sets over 28 days with 29 daily outputs of the states and the same tolerances
(rtol 1e-6, atol 1e-9):

* immunetwin ``simulate_cohort`` (one batched loop per chunk): Rodas5P (the default, stiff) for both
  models, and Dopri5 for the non-stiff one. On a CPU the engine sees one JAX device per core
  (``immunetwin.runtime.use_all_cpu_cores``; ``--cpu-devices``) and splits each chunk over them, one loop
  per core; the peers below run on one core. Throughput is timed on warm (already compiled) code, the best of
  ``--repeats`` runs (default 3; libroadrunner too); compilation is
  reported on its own: the first call in a fresh process (persistent cache off), the first call in a
  fresh process whose persistent cache another process filled, and the second call in-process (each
  the smallest over ``--repeats`` fresh processes).
* libroadrunner (CVODE, BDF + Newton, stiff=True): the usual per-patient loop ``resetAll``, set the
  parameters, ``reset`` (re-evaluates initial assignments), ``simulate(0, 28, 29)``. The baseline.
* scipy ``solve_ivp(method="LSODA")`` with the model's generated right-hand side and exact Jacobian run
  through NumPy (subset of patients).
* diffrax ``Kvaerno5`` + ``PIDController``, ``jax.vmap`` over a subset, in a subprocess with a time limit
  (the path that once took 94 s to compile a 4-state model on this kind of machine).

The stiff model is ``viral_immune`` (14 states). The non-stiff one is chosen among viral_tiv, tumor_immune
and vaccine_response by measurement: the fewest Dopri5 steps per Rodas5P step on the nominal patient (below
1, the explicit method is not held back by stability). Answers are cross-checked: the largest relative
difference (relative to max(|ref|, 1e-6 peak)) to libroadrunner on the first 20 patients, and the initial
states with overridden parameters (initial assignments re-evaluated alike).

Targets (issue): throughput >= 20x libroadrunner for both models; compile <= 5 s per model; <= 0.5 s when
cached. On a GPU (``--patients 1000000 --no-roadrunner --no-scipy``) ratios are to diffrax on that device.
Run ``python benchmarks/cohort.py --write BENCHMARKS.md`` (``--quick`` for a smoke test; ``--help``); the
figures replace the ``<!-- cohort:cpu -->`` (or ``cohort:gpu``) section and keep the rest of the file.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DAYS, TIMES = 28.0, np.linspace(0.0, 28.0, 29)
RTOL, ATOL, CV, N_VARIED = 1e-6, 1e-9, 0.25, 5
STIFF, CANDIDATES = "viral_immune", ("viral_tiv", "tumor_immune", "vaccine_response")
OBSERVABLE = {"viral_immune": "V", "viral_tiv": "V", "tumor_immune": "y", "vaccine_response": "Ab"}
TARGET_RATIO, TARGET_FIRST_S, TARGET_CACHED_S = 20.0, 5.0, 0.5
Params = dict[str, np.ndarray]


def cohort(tpl: Any, n: int, seed: int) -> Params:
    """N patients: log-normal (mean 1, CV 25 %) factors on the first estimated parameters."""
    rng = np.random.default_rng(seed)
    est = [(k, p) for k, p in tpl.metadata.parameters.items() if p.estimate][:N_VARIED]
    sigma = np.sqrt(np.log1p(CV**2))
    z = rng.standard_normal((len(est), n))
    return {k: np.clip(p.value * np.exp(sigma * z[i] - sigma**2 / 2), *p.range) for i, (k, p) in enumerate(est)}  # fmt: skip


class _NumpyShim:
    """The part of ``jax.numpy`` the generated model source uses, on NumPy: vectorised over patients
    (``init``) and fast on one patient's scalars (``rhs``/``jac`` under scipy)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def asarray(x: Any, dtype: Any = None) -> Any:
        return x

    @staticmethod
    def where(c: Any, a: Any, b: Any) -> Any:
        return np.where(c, a, b) if isinstance(c, np.ndarray) and c.ndim else (a if c else b)

    @staticmethod
    def unstack(x: Any) -> tuple[Any, ...]:
        return tuple(x)  # rows (NumPy < 2.1 has no np.unstack)

    @staticmethod
    def stack(xs: list[Any]) -> np.ndarray:
        if not any(isinstance(x, np.ndarray) and x.ndim for x in xs):
            return np.array(xs, dtype=float)
        return np.stack(np.broadcast_arrays(*xs)).astype(float)


def numpy_functions(model: Any) -> dict[str, Any]:
    """The model's generated ``init``/``rhs``/``jac`` executed over NumPy (for scipy)."""
    ns: dict[str, Any] = {"jnp": _NumpyShim(), "jax": None, "functools": functools, "nan": np.nan}
    exec(compile(model.functions.source, f"<numpy {model.spec.id}>", "exec"), ns)
    return ns


def initial_states(model: Any, ns: dict[str, Any], params: Params) -> tuple[np.ndarray, np.ndarray]:
    """y0 (B, n) and constants (B, nc) from the generated ``init`` (overrides win, like the engine)."""
    b = len(next(iter(params.values())))
    index = {q: i for i, q in enumerate(model.ids)}
    d = np.tile(np.array([v for _, v in model.spec.declared], float)[:, None], (1, b))
    m = np.zeros(d.shape, bool)
    for k, v in params.items():
        d[index[k]], m[index[k]] = v, True
    with np.errstate(all="ignore"):
        y0, c = ns["init"](d, m, 0.0)
    per_patient = [np.broadcast_to(x.reshape(len(x), -1), (len(x), b)).T.copy() for x in (y0, c)]
    return per_patient[0], per_patient[1]


def simulate(model: Any, params: Params, solver: str, chunk: int) -> Any:
    """immunetwin ``simulate_cohort`` with the benchmark's times and tolerances."""
    import immunetwin as it

    solver, _, backend = solver.partition("@")  # "Rodas5P@native": the native backend
    ctl, method = it.Controls(rtol=RTOL, atol=ATOL), getattr(it, solver)()
    # the states, as libroadrunner's time-course selections (not every assignment rule and parameter:
    # 58 quantities of viral_immune, 13.5 GB for 10^6 patients, whose transfer dominated the GPU run)
    return it.simulate_cohort(model, TIMES, parameters=params, solver=method, controls=ctl, chunk_size=chunk,
                              outputs=list(model.state_ids), backend=backend or "xla")  # fmt: skip


def engine(model: Any, params: Params, solver: str, chunk: int, repeats: int = 1) -> tuple[float, Any]:
    """Warm-up (compile) on one chunk, then the timed full-cohort run: the best of ``repeats``."""
    simulate(model, {k: v[:chunk] for k, v in params.items()}, solver, chunk)
    walls = []
    for _ in range(repeats):
        t = time.perf_counter()
        coh = simulate(model, params, solver, chunk)
        walls.append(time.perf_counter() - t)
    return min(walls), coh


def best_chunk(model: Any, params: Params, solver: str, candidates: list[int]) -> tuple[int, str]:
    """The chunk size with the highest warm throughput on one chunk (GPU: what fits and is fastest)."""
    rates: dict[int, float] = {}
    for ch in candidates:
        try:
            wall, _ = engine(model, {k: v[:ch] for k, v in params.items()}, solver, ch)
            rates[ch] = ch / wall
        except Exception as err:  # out of device memory: XlaRuntimeError RESOURCE_EXHAUSTED
            print(f"  chunk {ch:,}: failed ({str(err).splitlines()[0][:80]})")
    sweep = ", ".join(f"{ch:,}: {r:,.0f}/s" for ch, r in rates.items())
    print(f"  chunk sweep: {sweep}")
    if not rates:
        raise SystemExit("no chunk size fits on this device")
    return max(rates, key=rates.__getitem__), f"sweep {sweep}"


def roadrunner_loop(
    tpl: Any, params: Params, n: int, repeats: int = 1
) -> tuple[float, list[np.ndarray], int]:
    """The per-patient libroadrunner loop over the first n patients, ``repeats`` times: the best wall s,
    the first 20 results and the failures of the last run."""
    runs = [_roadrunner_once(tpl, params, n) for _ in range(repeats)]
    return min(r[0] for r in runs), runs[-1][1], runs[-1][2]


def _roadrunner_once(tpl: Any, params: Params, n: int) -> tuple[float, list[np.ndarray], int]:
    import roadrunner

    rr = roadrunner.RoadRunner(tpl.sbml)
    rr.integrator.relative_tolerance, rr.integrator.absolute_tolerance = RTOL, ATOL
    rr.integrator.stiff = True
    rr.timeCourseSelections = ["time", *(f"[{s}]" for s in tpl.model.state_ids)]
    keep, fails = [], 0
    t = time.perf_counter()
    for i in range(n):
        rr.resetAll()
        for k, v in params.items():
            rr[k] = float(v[i])
        rr.reset()  # re-evaluate initial assignments with the new parameter values
        try:
            res = rr.simulate(0.0, DAYS, len(TIMES))
        except RuntimeError:
            fails += 1
            res = np.full((len(TIMES), 1 + len(tpl.model.state_ids)), np.nan)
        if i < 20:
            keep.append(np.asarray(res)[:, 1:])
    return time.perf_counter() - t, keep, fails


def scipy_loop(model: Any, params: Params, n: int) -> tuple[float, list[np.ndarray], int]:
    """scipy LSODA over the first n patients with the NumPy right-hand side and exact Jacobian
    (states and constants passed as lists of floats: scalar arithmetic is fastest on Python floats)."""
    from scipy.integrate import solve_ivp

    ns = numpy_functions(model)
    y0, c = initial_states(model, ns, {k: v[:n] for k, v in params.items()})
    size, has_jac = y0.shape[1], ns["jac"] is not None
    rows, cols = np.array(ns["jac_pattern"]).T if has_jac else (None, None)

    def rhs(t: float, y: np.ndarray, ci: list[float]) -> np.ndarray:
        return ns["rhs"](t, y.tolist(), ci)

    def jac(t: float, y: np.ndarray, ci: list[float]) -> np.ndarray:
        out = np.zeros((size, size))
        out[rows, cols] = ns["jac"](t, y.tolist(), ci)[0]
        return out

    keep, fails, kw = [], 0, {"method": "LSODA", "t_eval": TIMES, "rtol": RTOL, "atol": ATOL}
    t = time.perf_counter()
    for i in range(n):
        sol = solve_ivp(rhs, (0.0, DAYS), y0[i], args=(c[i].tolist(),), jac=jac if has_jac else None, **kw)
        fails += int(not sol.success)
        if i < 20:
            keep.append(sol.y.T if sol.success else np.full((len(TIMES), size), np.nan))
    return time.perf_counter() - t, keep, fails


def rel_diff(a: np.ndarray, ref: np.ndarray) -> float:
    """Largest |a - ref| / max(|ref|, 1e-6 * peak |ref|) per patient (trajectories (P, T))."""
    floor = 1e-6 * np.nanmax(np.abs(ref), axis=1, keepdims=True)
    return float(np.nanmax(np.abs(a - ref) / np.maximum(np.abs(ref), floor)))


def initial_check(tpl: Any) -> float:
    """Initial states with every varied parameter (and T0 when present) x1.5, engine vs libroadrunner."""
    import roadrunner

    import immunetwin as it

    over = {k: 1.5 * float(v[0]) for k, v in cohort(tpl, 1, 0).items()}
    if "T0" in tpl.model.parameter_ids:
        over["T0"] = 1.5 * tpl.model.defaults["T0"]
    ours = it.simulate(tpl.model, TIMES[:2], parameters=over)
    rr = roadrunner.RoadRunner(tpl.sbml)
    for k, v in over.items():
        rr[k] = v
    rr.reset()
    theirs = np.array([rr[f"[{s}]"] for s in tpl.model.state_ids])
    mine = np.array([ours[s][0] for s in tpl.model.state_ids])
    return float(np.max(np.abs(mine - theirs) / np.maximum(np.abs(theirs), 1e-300)))


def child(cmd: list[str], first_limit: float, limit: float) -> tuple[dict[str, Any], str]:
    """Run this script in a fresh process; the JSON lines it printed, merged, and a note when it was stopped
    (no line within ``first_limit`` s, or not done within ``limit`` s)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, __file__, *cmd], stdout=out, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
        t0, note = time.perf_counter(), ""
        while proc.poll() is None:
            time.sleep(0.2)
            out.seek(0)
            elapsed, started = time.perf_counter() - t0, bool(out.read())
            if (not started and elapsed > first_limit) or elapsed > limit:
                proc.kill()
                proc.wait()
                note = f"stopped after {elapsed:.0f} s" + ("" if started else f" (compile > {first_limit:.0f} s)")  # fmt: skip
        out.seek(0)
        got = {k: v for x in out.read().splitlines() if x.startswith("{") for k, v in json.loads(x).items()}
    return got, note or ("" if proc.returncode == 0 else f"failed (exit {proc.returncode})")


def best_child(cmd: list[str], repeats: int) -> tuple[dict[str, Any], str]:
    """:func:`child` run ``repeats`` times: each timing the smallest over the runs (the 2-core machine's
    speed varies by up to ~30 % from one process to the next), and the first failure's note."""
    runs = [child(cmd, 1800, 1800) for _ in range(repeats)]
    got = [r for r, _ in runs if "second_s" in r]
    best = {k: min(r[k] for r in got) for k in got[0]} if got else {}
    return best, next((n for _, n in runs if n), "")


def first_call_child(name: str, solver: str, chunk: int, seed: int, cache: str, devices: int) -> None:
    t = time.perf_counter()
    import immunetwin  # noqa: F401 - timed: imports jax and the engine
    from immunetwin.runtime import compile_small_loops_whole, enable_compilation_cache, use_all_cpu_cores

    use_all_cpu_cores(devices or None)
    compile_small_loops_whole()
    from immunetwin.templates import load_template

    t_import = time.perf_counter() - t
    if not cache and solver.endswith("@native"):  # cold: build the module in an empty folder
        cache = tempfile.mkdtemp(prefix="immunetwin-native-cold-")
    if cache:
        enable_compilation_cache(Path(cache))
    t = time.perf_counter()
    tpl = load_template(name)
    model = tpl.model
    t_load = time.perf_counter() - t
    params = cohort(tpl, chunk, seed)
    walls = []
    for _ in range(2):
        t = time.perf_counter()
        simulate(model, params, solver, chunk)
        walls.append(time.perf_counter() - t)
    print(json.dumps({"import_s": t_import, "load_s": t_load, "first_s": walls[0], "second_s": walls[1]}))


def diffrax_child(name: str, n: int, seed: int) -> None:
    import diffrax
    import jax
    import jax.numpy as jnp

    from immunetwin.templates import load_template

    jax.config.update("jax_enable_x64", True)
    tpl = load_template(name)
    y0, c = initial_states(tpl.model, numpy_functions(tpl.model), cohort(tpl, n, seed))
    term = diffrax.ODETerm(lambda t, y, args: tpl.model.functions.rhs(t, y, args))
    pid = diffrax.PIDController(rtol=RTOL, atol=ATOL)
    kw = {"saveat": diffrax.SaveAt(ts=jnp.asarray(TIMES)), "stepsize_controller": pid, "max_steps": 16384}

    def one(y0: Any, c: Any) -> Any:
        sol = diffrax.diffeqsolve(term, diffrax.Kvaerno5(), 0.0, DAYS, None, y0, args=c, throw=False, **kw)
        return sol.ys, sol.result == diffrax.RESULTS.successful

    t = time.perf_counter()
    compiled = jax.jit(jax.vmap(one)).lower(jnp.asarray(y0), jnp.asarray(c)).compile()
    print(json.dumps({"compile_s": time.perf_counter() - t}), flush=True)
    t = time.perf_counter()
    _, ok = jax.block_until_ready(compiled(jnp.asarray(y0), jnp.asarray(c)))
    print(json.dumps({"run_s": time.perf_counter() - t, "ok": int(np.sum(ok)), "n": n}), flush=True)


def choose_nonstiff() -> tuple[str, dict[str, tuple[int, int]]]:
    """Dopri5 vs Rodas5P steps on the nominal patient; the smallest ratio among models with dynamics."""
    import immunetwin as it
    from immunetwin.templates import load_template

    steps: dict[str, tuple[int, int]] = {}
    for name in CANDIDATES:
        model, ctl = load_template(name).model, it.Controls(rtol=RTOL, atol=ATOL)
        runs = [it.simulate(model, TIMES, solver=s, controls=ctl) for s in (it.Dopri5(), it.Rodas5P())]
        if np.ptp(runs[1][OBSERVABLE[name]]) > 0:  # no dose, no dynamics (vaccine_response)
            steps[name] = (runs[0].steps, runs[1].steps)
    return min(steps, key=lambda k: steps[k][0] / steps[k][1]), steps


def machine() -> dict[str, Any]:
    import jax

    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    dev = jax.devices()[0]
    return {"cpu": cpu.group(1).strip() if cpu else platform.processor(), "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "jax": jax.__version__, "platform": dev.platform,
            "device": dev.device_kind, "devices": jax.device_count(), "date": time.strftime("%Y-%m-%d")}  # fmt: skip


def write_section(path: Path, tag: str, body: str) -> None:
    """Replace (or append) the block between ``<!-- cohort:TAG -->`` and ``<!-- /cohort:TAG -->``."""
    start, end = f"<!-- cohort:{tag} -->", f"<!-- /cohort:{tag} -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def tables(res: dict[str, Any]) -> list[tuple[list[str], list[list[str]]]]:
    """The throughput and first-call tables as (header, rows) of strings (for rich and markdown)."""
    head = ["model", "states", "tool", "patients", "wall s", "patients/s", f"ratio to {res['reference']}", "note"]  # fmt: skip
    rows = [
        [r["model"], str(r["states"]), r["tool"], f"{r['patients']:,}", _f(r["wall_s"]), _f(r["rate"], ",.1f"),
         _f(r["ratio"], ".2f") + ("x" if r["ratio"] else ""), r["note"]]
        for r in res["rows"]
    ]  # fmt: skip
    keys = ["import_s", "load_s", "first_s", "second_s", "compile_s", "cached_first_s", "cached_overhead_s"]
    head2 = ["model", "solver", "chunk", "import s", "load s", "first call s", "second call s", "compile s",
             "cached first call s", "cached overhead s"]  # fmt: skip
    rows2 = [[f["model"], f["solver"], f"{f['chunk']:,}", *(_f(f[k]) for k in keys)] for f in res["first_calls"]]  # fmt: skip
    return [(head, rows), (head2, rows2)]


def summarize(res: dict[str, Any], roadrunner: bool) -> None:
    """Patients/s, ratios to the reference peer of the same model, and the targets (in place)."""
    key = "libroadrunner CVODE loop" if roadrunner else "diffrax Kvaerno5 vmap"
    for r in res["rows"]:
        r["rate"] = r["patients"] / r["wall_s"] if r["wall_s"] else None
    for r in res["rows"]:
        peer = next((x for x in res["rows"] if x["model"] == r["model"] and x["tool"] == key and x["rate"]), None)  # fmt: skip
        r["ratio"] = r["rate"] / peer["rate"] if peer and r["rate"] else None
    res["targets"] = targets = []
    for r in res["rows"]:
        if roadrunner and r["tool"].startswith("immunetwin") and r["ratio"]:
            what = f"{r['model']} {r['tool']}: throughput >= {TARGET_RATIO:.0f}x libroadrunner"
            targets.append((what, f"{r['ratio']:.1f}x", r["ratio"] >= TARGET_RATIO))
    for f in res["first_calls"]:
        what = f"{f['model']} {f['solver']}: first call (compile) <= {TARGET_FIRST_S:g} s"
        targets.append((what, f"{f['compile_s']:.2f} s", f["compile_s"] <= TARGET_FIRST_S))
        what = f"{f['model']} {f['solver']}: cached first call (overhead) <= {TARGET_CACHED_S:g} s"
        targets.append((what, f"{f['cached_overhead_s']:.2f} s", f["cached_overhead_s"] <= TARGET_CACHED_S))
    ours = next((f["compile_s"] for f in res["first_calls"] if f["model"] == STIFF), None)
    theirs = res["diffrax_compile_s"].get(STIFF)
    if ours is not None and theirs is not None:
        what = f"{STIFF} default path compiles faster than diffrax Kvaerno5"
        targets.append((what, f"{ours:.1f} s vs {theirs:.1f} s", ours < theirs))
    for r in res["rows"]:
        if r["model"] == STIFF and r["tool"] == "diffrax Kvaerno5 vmap" and r["rate"]:
            ours_rate = next(x["rate"] for x in res["rows"] if x["model"] == STIFF and "default" in x["tool"])
            what = f"{STIFF} default path faster than diffrax Kvaerno5"
            targets.append((what, f"{ours_rate:,.0f} vs {r['rate']:,.0f} patients/s", ours_rate > r["rate"]))


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    out = [
        f"## Virtual-cohort throughput ({m['platform'].upper()})", "",
        f"Machine: {m['cpu']}, {m['cores']} cores; device {m['platform']} ({m['device']}"
        f"{' x ' + str(m['devices']) if m.get('devices', 1) > 1 else ''}); "
        f"Python {m['python']}, jax {m['jax']}; {m['date']}.  ",
        f"Command: `{res['command']}`", "", res["method"], "", res["nonstiff_reason"], "",
    ]  # fmt: skip
    first_note = (
        "First call in a fresh process (imports and template loading reported apart; same chunk as above); "
        "compile = first - second call. Cached: a fresh process whose persistent compilation cache another "
        "process filled; overhead = its first - second call."
    )
    for k, (head, rows) in enumerate(tables(res)):
        out += ([first_note, ""] if k else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    out += ["Agreement: " + "; ".join(res["agreement"]) + ".", "", "Targets:", ""]
    out += [f"- {what}: {value} -> **{'MET' if met else 'NOT MET'}**" for what, value, met in res["targets"]]
    return "\n".join(out) + "\n"


def bench_model(name: str, a: argparse.Namespace, res: dict[str, Any], cache: Path, log: Any) -> None:
    """Every tool on one model's cohort; rows, first calls and agreement lines appended to ``res``."""
    from immunetwin.runtime import enable_compilation_cache
    from immunetwin.templates import load_template

    tpl = load_template(name)
    model, obs, n = tpl.model, OBSERVABLE[name], a.patients
    params = cohort(tpl, n, a.seed)
    base = {"model": name, "states": len(model.state_ids)}

    def add(tool: str, patients: int, wall: float | None, note: str) -> None:
        res["rows"].append({**base, "tool": tool, "patients": patients, "wall_s": wall, "note": note})
        log(f"  {tool}: {patients / wall if wall else 0:,.1f} patients/s ({note})")

    log(f"[bold]{name}[/]: {base['states']} states; varied {', '.join(params)}; {n:,} patients")
    ours, sweep, chunk = None, "", None if a.chunk == "auto" else min(int(a.chunk), n)
    native_first = None
    solvers = ["Rodas5P", "Dopri5"] if name == res["nonstiff"] else ["Rodas5P"]
    for solver in solvers + (["Rodas5P@native"] if a.native and not res["gpu"] else []):
        if chunk is None:  # sweep once per model, with the default solver
            cands = [c for c in ((25_000, 100_000, 250_000) if res["gpu"] else (250, 1000, 2500)) if c <= n]
            chunk, sweep = best_chunk(model, params, solver, cands or [n])
        if a.first_call:
            args = ["--_first", name, solver, str(chunk), str(a.seed), str(a.cpu_devices)]
            cold, note = best_child([*args, "-"], a.repeats)
            child([*args, str(cache)], 1800, 1800)
            warm, note2 = best_child([*args, str(cache)], a.repeats)
            if "second_s" in cold and "second_s" in warm:
                res["first_calls"].append({**base, "solver": solver.replace("@native", " native (C)"), "chunk": chunk, **cold,
                                           "compile_s": cold["first_s"] - cold["second_s"],
                                           "cached_first_s": warm["first_s"],
                                           "cached_overhead_s": warm["first_s"] - warm["second_s"]})  # fmt: skip
            else:
                log(f"  first-call subprocess {note or note2 or 'failed'}")
        enable_compilation_cache(cache)  # the in-process warm-up reuses what the subprocesses compiled
        wall, coh = engine(model, params, solver, chunk, a.repeats)
        note = f"chunk {chunk:,}; {int(coh.ok.sum()):,}/{n:,} ok; mean {coh.steps.mean():.0f} steps"
        note, sweep = note + (f"; {sweep}" if sweep else ""), ""
        tool = solver.replace("@native", " native (C)") + (" (default)" if solver == "Rodas5P" else "")
        add(f"immunetwin {tool}", n, wall, note)
        ours = coh[obs][:20].copy() if ours is None else ours  # not a view: frees the cohort
        if solver.endswith("@native"):
            native_first = coh[obs][:20].copy()
    if a.roadrunner:
        wall20, ref, _ = roadrunner_loop(tpl, params, min(20, n))
        n_rr = n if wall20 / min(20, n) * n <= a.roadrunner_limit else min(n, 1000)
        wall, ref, fails = roadrunner_loop(tpl, params, n_rr, a.repeats)
        add("libroadrunner CVODE loop", n_rr, wall, f"{fails} failed" + ("" if n_rr == n else "; subset"))
        ref_obs = np.array([r[:, model.state_ids.index(obs)] for r in ref])
        res["agreement"].append(f"{name} {obs}, immunetwin Rodas5P vs libroadrunner, first {len(ref)} patients: "
                                f"max rel diff {rel_diff(ours[: len(ref)], ref_obs):.1e}")  # fmt: skip
        if native_first is not None:
            res["agreement"].append(f"{name} {obs}, immunetwin native (C) vs libroadrunner, first {len(ref)} "
                                    f"patients: max rel diff {rel_diff(native_first[: len(ref)], ref_obs):.1e}")  # fmt: skip
        res["agreement"].append(f"{name} initial states with the varied parameters (and T0) x1.5, vs "
                                f"libroadrunner: max rel diff {initial_check(tpl):.1e}")  # fmt: skip
    if a.scipy:
        n_sp = min(n, a.scipy_patients)
        wall, sp, fails = scipy_loop(model, params, n_sp)
        add("scipy LSODA loop", n_sp, wall, f"{fails} failed; subset")
        sp_obs = np.array([s[:, model.state_ids.index(obs)] for s in sp])
        res["agreement"].append(f"{name} {obs}, scipy LSODA vs immunetwin, first {len(sp)} patients: "
                                f"max rel diff {rel_diff(sp_obs, ours[: len(sp)]):.1e}")  # fmt: skip
    if a.diffrax:
        n_dx = min(n, a.diffrax_patients)
        got, note = child(["--_diffrax", name, str(n_dx), str(a.seed)], a.diffrax_limit, a.diffrax_limit + 900)  # fmt: skip
        if "compile_s" in got:
            res["diffrax_compile_s"][name] = got["compile_s"]
        if "run_s" in got:
            note = f"compile {got['compile_s']:.1f} s; {got['ok']}/{n_dx} ok; subset"
        elif "compile_s" in got:
            note = f"compile {got['compile_s']:.1f} s; run {note}"
        add("diffrax Kvaerno5 vmap", n_dx, got.get("run_s"), note or "failed")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = ap.add_argument
    add("--patients", type=int, help="cohort size (default 10,000; --quick 500)")
    add("--quick", action="store_true", help="smoke test: 500 patients, small subsets")
    add("--seed", type=int, default=20240101)
    add("--chunk", help="engine chunk size or 'auto' (a sweep); default 1000 per CPU device, auto on GPU")
    add("--nonstiff", choices=CANDIDATES, help="skip the measured choice of the non-stiff model")
    add(
        "--native",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the native (generated C) backend on a CPU",
    )
    for flag in ("roadrunner", "scipy", "diffrax", "first-call"):
        add(f"--{flag}", action=argparse.BooleanOptionalAction, default=True)
    add("--scipy-patients", type=int, help="scipy subset (default 300; --quick 50)")
    add("--diffrax-patients", type=int, help="diffrax subset (default 1000 CPU, 10000 GPU; --quick 50)")
    add("--diffrax-limit", type=float, default=300.0, help="seconds allowed to compile diffrax")
    add("--roadrunner-limit", type=float, default=180.0, help="loop budget before timing a subset of 1000")
    add("--repeats", type=int, default=3, help="timed runs of the engine, libroadrunner's loop and each "
        "first-call process; the best is reported (default 3)")  # fmt: skip
    add("--json", type=Path, help="write every figure here (after each model)")
    add("--write", type=Path, help="markdown file whose cohort:cpu / cohort:gpu section to replace")
    add("--from-json", type=Path, help="only render a --json file into --write")
    add(
        "--cpu-devices",
        type=int,
        default=0,
        help="CPU devices the engine splits each chunk over (default 0: one per core; 1: one device)",
    )
    add("--_first", nargs=6, help=argparse.SUPPRESS)
    add("--_diffrax", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._first:
        name, solver, chunk, seed, devices, cache = a._first
        return first_call_child(
            name, solver, int(chunk), int(seed), "" if cache == "-" else cache, int(devices)
        )
    if a._diffrax:
        return diffrax_child(a._diffrax[0], int(a._diffrax[1]), int(a._diffrax[2]))
    if a.from_json:
        res = json.loads(a.from_json.read_text(encoding="utf-8"))
        return write_section(a.write, res["machine"]["platform"].replace("cuda", "gpu"), markdown(res))

    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # GPU: leave memory to subprocesses
    import jax

    from immunetwin.runtime import compile_small_loops_whole, use_all_cpu_cores

    use_all_cpu_cores(a.cpu_devices or None)  # before JAX starts: one CPU device per core
    compile_small_loops_whole()
    from rich.console import Console
    from rich.table import Table

    con, gpu = Console(width=None if sys.stdout.isatty() else 180), jax.default_backend() == "gpu"
    a.patients = a.patients or (500 if a.quick else 10_000)
    a.scipy_patients = a.scipy_patients or (50 if a.quick else 300)
    a.diffrax_patients = a.diffrax_patients or (50 if a.quick else 10_000 if gpu else 1000)
    a.chunk = a.chunk or ("auto" if gpu else str(1000 * jax.device_count()))  # CPU: 1000 per device
    if a.nonstiff:
        nonstiff, steps, why = a.nonstiff, {}, "given on the command line"
    else:
        nonstiff, steps = choose_nonstiff()
        why = "Dopri5/Rodas5P steps on the nominal patient: " + ", ".join(f"{k} {d}/{r}" for k, (d, r) in steps.items())  # fmt: skip
        why += (
            "; the fewest explicit steps per implicit step; vaccine_response has no dynamics without a dose"
        )
    reference = "libroadrunner" if a.roadrunner else "diffrax Kvaerno5 (same device)"
    res: dict[str, Any] = {
        "machine": machine(), "gpu": gpu, "reference": reference, "nonstiff": nonstiff, "steps": steps,
        "nonstiff_reason": f"Stiff model: {STIFF} (14 states, Rodas5P). Non-stiff model: **{nonstiff}** ({why}).",
        "command": "python benchmarks/cohort.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "method": (f"Cohort: {a.patients:,} patients, 28 days, 29 daily outputs; log-normal CV {CV:.0%} on the "
                   f"first {N_VARIED} estimated parameters (seed {a.seed}); rtol {RTOL:g}, atol {ATOL:g} for every "
                   "tool; immunetwin timed on warm (compiled) code"
                   + ("." if gpu or jax.device_count() == 1 else
                      f", each chunk split over {jax.device_count()} CPU devices (one loop per core; the native "
                      "backend: one thread per core); the peers run on one core.")
                   + f" Wall times of immunetwin, libroadrunner's loop and each first-call process: the best of "
                     f"{a.repeats} runs (scipy and diffrax: one run)."),
        "rows": [], "first_calls": [], "agreement": [], "diffrax_compile_s": {}, "targets": [],
    }  # fmt: skip
    con.print(res["nonstiff_reason"])
    tmp = tempfile.TemporaryDirectory(prefix="immunetwin-bench-cache-", ignore_cleanup_errors=True)
    cache = Path(tmp.name)  # persistent compilation cache of this run, removed at exit
    for name in (STIFF, nonstiff):
        bench_model(name, a, res, cache, con.print)
        summarize(res, a.roadrunner)
        if a.json:
            a.json.write_text(json.dumps(res, indent=1), encoding="utf-8")
    for k, (head, rows) in enumerate(tables(res)):
        table = Table(*head, title=("Virtual cohort" if k == 0 else "First call, fresh processes"))
        for r in rows:
            table.add_row(*r)
        con.print(table)
    for line in res["agreement"]:
        con.print(line)
    for what, value, met in res["targets"]:
        con.print(f"{what}: {value} -> {'[green]MET' if met else '[red]NOT MET'}")
    if a.write:
        write_section(a.write, "gpu" if gpu else "cpu", markdown(res))
        con.print(f"wrote the cohort:{'gpu' if gpu else 'cpu'} section of {a.write}")


if __name__ == "__main__":
    main()
