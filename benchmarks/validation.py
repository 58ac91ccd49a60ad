"""Forecasts of real viral-load series: the twin beside two baselines, scored on later measurements.

Method. Data: every person of Ke et al. 2022 (Nat Microbiol 7:640; daily nasal swabs, 60 people) and
Wölfel et al. 2020 (Nature 581:465; sputum, 9 hospitalised patients, digitised), shipped as
:mod:`immunetwin.datasets` (CC-BY-4.0). Values are log10 RNA copies/mL; negative samples are censored
at the limit of quantification, 2 log10 (100 copies/mL), and so are positives at or below it. Model
time is days since symptom onset + 5 (incubation; :func:`immunetwin.datasets.viral_load_table`).

For each person the measurements of the first ``--cutoff`` days of sampling (default 5: days
``t_first .. t_first + 4``; :func:`immunetwin.analysis.split_at_cutoff`) are *seen*, the rest are
forecast:

* **twin**: :func:`immunetwin.twin.personalise` on the seen rows (template ``--template``, its
  default estimated parameters, ``--draws`` particles), then :func:`immunetwin.twin.forecast` at the
  later sampling times: predictive quantiles (parameter and measurement-noise uncertainty).
* **population mean**: the mean and between-person sd of the *other* people of the same dataset at
  that day (leave-one-out; :func:`immunetwin.analysis.population_mean_forecast`).
* **last value**: the last seen value carried forward, with the sd of that forecast's errors in the
  other people at the same horizon (:func:`immunetwin.analysis.last_value_forecast`).

Each forecast is represented by its 199 predictive quantiles at levels 0.005, 0.010, ..., 0.995 and
scored with :func:`immunetwin.analysis.score_forecast`: coverage of the central 50 % and 90 %
intervals (a censored value is covered when the interval's lower end is at or below the limit), RMSE
of the median on quantified values, and the threshold-weighted CRPS above the limit (Gneiting &
Ranjan 2011), which on quantified values is the ordinary CRPS where the forecast lies above the limit.
The CRPS of the 199 quantiles approximates that of the continuous predictive within about 1 %.

    python benchmarks/validation.py --template viral_tiv --jobs 2 --write VALIDATION.md
    python benchmarks/validation.py --people 3 --cutoff 5      # a quick run: 3 people per dataset

Writes ``scores.csv`` (one row per forecast measurement and method), ``summary.csv`` and PNG figures
to ``--out/<template>``; ``--write`` replaces the ``validation:<template>`` section of VALIDATION.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LOD = 2.0
LEVELS = (0.5, 0.9)
QUANTILES = np.arange(1, 200) / 200.0
METHODS = ("twin", "population mean", "last value")
DATASETS = ("ke2022", "woelfel2020")


@dataclass(frozen=True)
class TwinRun:
    """The twin's forecast of one person: quantiles (199, T) at ``times`` or the error it raised."""

    dataset: str
    participant: str
    times: np.ndarray
    quantiles: np.ndarray | None
    seconds: float
    error: str = ""
    diagnostics: dict[str, Any] = field(default_factory=dict)


def people(dataset: str) -> pd.DataFrame:
    """All rows of a dataset: participant, day (since onset), time (model), value (log10), censored."""
    from immunetwin.datasets import ke2022_nasal, viral_load_table, woelfel2020_sputum

    raw = {"ke2022": ke2022_nasal, "woelfel2020": woelfel2020_sputum}[dataset]()
    parts = []
    for pid in raw["participant"].unique():
        t = viral_load_table(raw, pid, limit_log10=LOD)
        parts.append(t.assign(participant=pid, dataset=dataset, day=t["time"] - 5.0))
    return pd.concat(parts, ignore_index=True)


def run_twin(job: tuple[str, str, pd.DataFrame, np.ndarray, str, int, int]) -> TwinRun:
    """Personalise on the seen rows and forecast at ``times`` (runs in a worker process)."""
    dataset, pid, seen, times, template, draws, seed = job
    import jax

    from immunetwin.errors import ImmunetwinError
    from immunetwin.runtime import compile_small_loops_whole, default_cache_dir, enable_compilation_cache
    from immunetwin.twin import forecast, personalise

    compile_small_loops_whole()
    enable_compilation_cache(default_cache_dir())
    t0 = time.perf_counter()
    key = jax.random.fold_in(jax.random.PRNGKey(seed), int(re.sub(r"\D", "", pid)))
    try:
        twin = personalise(
            template, seen[["observable", "time", "value", "censored"]], patient=pid, key=key, draws=draws
        )
        fc = forecast(twin, times=times, levels=QUANTILES)
        q = fc.quantiles("viral_load").T
        diag = dict(twin.belief.diagnostics) | {"failed_particles": fc.failed}
        return TwinRun(dataset, pid, times, q, time.perf_counter() - t0, diagnostics=diag)
    except ImmunetwinError as err:
        return TwinRun(
            dataset, pid, times, None, time.perf_counter() - t0, error=f"{type(err).__name__}: {err}"
        )


def score_person(table: pd.DataFrame, run: TwinRun, cutoff: float, seed: int) -> list[Any]:
    """Scores of the twin and both baselines on one person's later rows."""
    import jax

    from immunetwin.analysis import (
        last_value_forecast,
        population_mean_forecast,
        score_forecast,
        split_at_cutoff,
    )

    mine = table[table["participant"] == run.participant]
    others = table[table["participant"] != run.participant]
    seen, later = split_at_cutoff(mine, cutoff)
    t_last = float(seen["time"].max())
    at = np.searchsorted(run.times, later["time"].to_numpy())
    ensembles = {
        "population mean": population_mean_forecast(others, later["time"]).quantiles(QUANTILES),
        "last value": last_value_forecast(seen, later["time"], others, cutoff=cutoff).quantiles(QUANTILES),
    }
    if run.quantiles is not None:
        ensembles = {"twin": run.quantiles[:, at]} | ensembles
    key = jax.random.fold_in(jax.random.PRNGKey(seed + 1), int(re.sub(r"\D", "", run.participant)))
    out = []
    for method, ens in ensembles.items():
        rows = later[["dataset", "participant", "day", "time"]].assign(
            horizon=later["time"] - t_last, method=method
        )
        out.append(
            score_forecast(
                ens, later["value"], key=key, censored=later["censored"], lod=LOD, levels=LEVELS, rows=rows
            )
        )
    return out


def summarise(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Coverage, RMSE and mean CRPS per group of the per-row score table."""

    def one(g: pd.DataFrame) -> pd.Series:
        q = ~g["below_limit"]
        return pd.Series({
            "people": g["participant"].nunique(), "n": len(g), "censored": int(g["below_limit"].sum()),
            "cov50": g["covered_0.5"].mean(), "cov90": g["covered_0.9"].mean(),
            "rmse": float(np.sqrt(np.mean((g["median"][q] - g["observed"][q]) ** 2))) if q.any() else np.nan,
            "crps": g["crps"].mean(),
        })  # fmt: skip

    out = frame.groupby(by, sort=False, observed=True).apply(one, include_groups=False).reset_index()
    return out.astype({"people": int, "n": int, "censored": int})


def machine() -> dict[str, str]:
    import jax

    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    return {
        "cpu": cpu.group(1).strip() if cpu else platform.processor(),
        "cores": str(len(os.sched_getaffinity(0))),
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def _table(summary: pd.DataFrame, first: str) -> list[str]:
    lines = [
        f"| {first} | method | people | n (censored) | 50% cov. | 90% cov. | RMSE log10 | CRPS |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary.itertuples():
        lines.append(
            f"| {r.group} | {r.method} | {r.people} | {r.n} ({r.censored}) | {100 * r.cov50:.0f}% | "
            f"{100 * r.cov90:.0f}% | {r.rmse:.2f} | {r.crps:.3f} |"
        )
    return lines


def markdown(
    a: argparse.Namespace, frame: pd.DataFrame, runs: list[TwinRun], wall: float, m: dict[str, str]
) -> str:
    per = summarise(frame, ["dataset", "method"]).rename(columns={"dataset": "group"})
    total = summarise(frame.assign(group="all"), ["group", "method"])
    frame = frame.assign(
        h=pd.cut(frame["horizon"], [0, 3, 7, 100], labels=["1-3 days", "4-7 days", "8+ days"])
    )
    by_h = summarise(frame.dropna(subset=["h"]), ["h", "method"]).rename(columns={"h": "group"})
    ok = [r for r in runs if r.error == ""]
    failed = [r for r in runs if r.error]
    secs = np.array([r.seconds for r in ok]) if ok else np.array([np.nan])
    counts = ", ".join(f"{d}: {sum(r.dataset == d for r in runs)}" for d in a.datasets)
    lines = [
        f"## Template `{a.template}`, cut-off {a.cutoff:g} days, {a.draws} particles",
        "",
        f"Command: `{a.command}`  ",
        f"Date: {m['date']}; wall time {wall / 60:.1f} min ({a.jobs} worker process(es)); commit {a.commit}.  ",
        f"Machine: {m['cpu']}, {m['cores']} cores shared with other work (load average {m['load']} at the end);"
        f" Python {m['python']}, JAX {m['jax']}.  ",
        f"People forecast ({counts}); twin per person: median {np.median(secs):.0f} s, max {np.max(secs):.0f} s"
        " (personalise + forecast, compilation included).",
        "",
        "Goal (issue 5): coverage of the 50% and 90% intervals within 5 points of nominal.",
        "",
        *_table(per, "dataset"),
        *_table(total, "all")[2:],
        "",
        "By forecast horizon (days after the last seen measurement), both datasets:",
        "",
        *_table(by_h, "horizon"),
        "",
    ]
    if failed:
        lines += ["Twin failures (these people are scored for the baselines only):", ""]
        lines += [f"- {r.dataset} {r.participant}: {r.error}" for r in failed] + [""]
    pk = [r.diagnostics.get("pareto_k", np.nan) for r in ok]
    lines += [
        f"Twin diagnostics: Pareto k of the importance weights median {np.nanmedian(pk):.2f}, "
        f"above 0.7 for {int(np.sum(np.asarray(pk) > 0.7))} of {len(ok)} people (the MH moves after "
        "resampling correct part of that).",
        "",
        f"Figures: `{a.rel_out}/coverage.png`, `{a.rel_out}/pit.png`, `{a.rel_out}/examples.png`; per-row scores "
        f"`{a.rel_out}/scores.csv`.",
    ]
    return "\n".join(lines)


def figures(frame: pd.DataFrame, table: pd.DataFrame, runs: list[TwinRun], cutoff: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*sorted(frame["dataset"].unique()), "all"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, lev in zip(axes, LEVELS, strict=True):
        for k, method in enumerate(METHODS):
            rows = frame[frame["method"] == method]
            vals = [
                rows[rows["dataset"] == g][f"covered_{lev:g}"].mean()
                if g != "all"
                else rows[f"covered_{lev:g}"].mean()
                for g in groups
            ]
            ax.bar(np.arange(len(groups)) + (k - 1) * 0.27, vals, 0.27, label=method)
        ax.axhspan(lev - 0.05, lev + 0.05, color="grey", alpha=0.25, label="nominal ± 5 points")
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(f"coverage of the central {100 * lev:.0f}% interval")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "coverage.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(10, 3), sharey=True)
    for ax, method in zip(axes, METHODS, strict=True):
        ax.hist(frame[frame["method"] == method]["pit"], bins=10, range=(0, 1), density=True)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_title(f"PIT, {method}")
    fig.tight_layout()
    fig.savefig(out / "pit.png", dpi=90)
    plt.close(fig)
    _examples(frame, table, runs, cutoff, out)


def _examples(
    frame: pd.DataFrame, table: pd.DataFrame, runs: list[TwinRun], cutoff: float, out: Path
) -> None:
    import matplotlib.pyplot as plt

    from immunetwin.analysis import split_at_cutoff

    shown = [r for r in runs if r.quantiles is not None]
    shown = [r for d in DATASETS for r in [x for x in shown if x.dataset == d][:3]]
    if not shown:
        return
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), squeeze=False)
    for ax, run in zip(axes.flat, shown, strict=False):
        seen, later = split_at_cutoff(table[table["participant"] == run.participant], cutoff)
        q = run.quantiles
        days = run.times - 5.0
        ax.fill_between(days, q[9], q[189], alpha=0.2, color="C0", label="twin 90%")
        ax.fill_between(days, q[49], q[149], alpha=0.35, color="C0", label="twin 50%")
        ax.plot(days, q[99], color="C0")
        for method, colour in (("population mean", "C1"), ("last value", "C2")):
            rows = frame[(frame["participant"] == run.participant) & (frame["method"] == method)]
            ax.plot(rows["day"], rows["lower_0.9"], "--", color=colour, lw=1, label=f"{method} 90%")
            ax.plot(rows["day"], rows["upper_0.9"], "--", color=colour, lw=1)
        for part, colour in ((seen, "k"), (later, "C3")):
            det, cen = part[~part["censored"]], part[part["censored"]]
            ax.plot(det["day"], det["value"], "o", color=colour, ms=4)
            ax.plot(cen["day"], cen["value"], "v", color=colour, ms=5)
        ax.axhline(LOD, color="grey", lw=0.6)
        ax.set_title(f"{run.dataset} {run.participant}", fontsize=9)
        ax.set_xlabel("days since symptom onset")
    for ax in axes.flat[len(shown) :]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel("log10 copies/mL")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "examples.png", dpi=80)
    plt.close(fig)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--template", default="viral_tiv")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: ke2022, woelfel2020")
    p.add_argument("--people", type=int, default=0, help="the first N people of each dataset (0: all)")
    p.add_argument(
        "--cutoff",
        type=float,
        default=5.0,
        help="days of sampling the twin sees (from each person's first sample)",
    )
    p.add_argument("--draws", type=int, default=500, help="particles of each twin")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for the twins")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/validation"))
    p.add_argument("--write", type=Path, help="markdown file whose validation:<template> section to replace")
    a = p.parse_args(argv)
    a.datasets = [d for d in a.datasets.split(",") if d]
    unknown = set(a.datasets) - set(DATASETS)
    if unknown:
        p.error(f"unknown dataset(s) {', '.join(sorted(unknown))}; known: {', '.join(DATASETS)}")
    a.command = "python benchmarks/validation.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    from immunetwin.analysis import pool_scores, split_at_cutoff

    t_start = time.perf_counter()
    table = pd.concat([people(d) for d in a.datasets], ignore_index=True)
    jobs = []
    for d in a.datasets:
        ids = table[table["dataset"] == d]["participant"].unique()
        for pid in ids[: a.people or None]:
            seen, later = split_at_cutoff(table[table["participant"] == pid], a.cutoff)
            if len(seen) and len(later):
                jobs.append((d, pid, seen, np.unique(later["time"].to_numpy()), a.template, a.draws, a.seed))
            else:
                print(f"{d} {pid}: nothing to forecast after {a.cutoff:g} days of sampling; skipped")
    runs = []
    with ProcessPoolExecutor(max_workers=a.jobs, mp_context=get_context("spawn")) as pool:
        for k, run in enumerate(pool.map(run_twin, jobs), start=1):
            runs.append(run)
            print(
                f"[{k}/{len(jobs)}] {run.dataset} {run.participant}: {run.seconds:.0f} s {run.error}",
                flush=True,
            )
    scores = [
        s for run in runs for s in score_person(table[table["dataset"] == run.dataset], run, a.cutoff, a.seed)
    ]
    frame = pool_scores(scores).to_frame()
    wall = time.perf_counter() - t_start
    out = a.out / a.template
    out.mkdir(parents=True, exist_ok=True)
    frame.round(4).to_csv(out / "scores.csv", index=False)
    summarise(frame, ["dataset", "method"]).round(4).to_csv(out / "summary.csv", index=False)
    figures(frame, table, runs, a.cutoff, out)
    a.rel_out = out.as_posix()
    a.commit = _commit()
    text = markdown(a, frame, runs, wall, machine())
    print(text)
    if a.write:
        from immunetwin.conformance.report import replace_section

        replace_section(a.write, f"validation:{a.template}", text)


def _commit() -> str:
    import subprocess

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout
        return sha + (" + uncommitted changes" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
