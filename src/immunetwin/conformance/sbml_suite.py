"""Run the SBML Test Suite semantic cases and judge them by the suite's own rule.

A case passes when ``|expected - simulated| <= absolute + relative * |expected|`` for every listed
variable and time point (tolerances from the case's ``-settings.txt``); both NaN, or equal infinities,
count as agreeing. A case is *refused* when the engine raises
:class:`~immunetwin.errors.UnsupportedConstructError` (it names the construct), and *error* for any
other exception. Suite: Hucka et al., sbmlteam/sbml-test-suite (see ../shared/conformance/.../SOURCE.md).

Command line::

    python -m immunetwin.conformance.sbml_suite SUITE_DIR [--cases 00001,00002] [--subset core|events|all]
        [--jobs 2] [--markdown CONFORMANCE.md]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from immunetwin.conformance.report import replace_section

__all__ = ["CaseResult", "CaseSettings", "read_index", "run_case", "select_cases"]

_EXCLUDED_EVENT_TAGS = (
    "EventWithDelay",
    "EventPriority",
    "CSymbolDelay",
    "RandomEventExecution",
    "AlgebraicRule",
    "FastReaction",
    "comp:",
    "fbc:",
)


@dataclass(frozen=True)
class CaseSettings:
    """The contents of a case's ``-settings.txt``."""

    start: float
    duration: float
    steps: int
    variables: tuple[str, ...]
    absolute: float
    relative: float
    amount: tuple[str, ...]
    concentration: tuple[str, ...]


@dataclass(frozen=True)
class CaseResult:
    """Outcome of one case: ``pass``, ``fail``, ``refused`` or ``error``, with a one-line reason."""

    case: str
    outcome: str
    detail: str = ""
    max_excess: float = 0.0
    seconds: float = 0.0


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def read_settings(path: Path) -> CaseSettings:
    """Parse a ``-settings.txt`` file."""
    raw: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            raw[key.strip()] = value.strip()
    return CaseSettings(
        start=float(raw.get("start", 0) or 0),
        duration=float(raw["duration"]),
        steps=int(float(raw["steps"])),
        variables=_split(raw.get("variables", "")),
        absolute=float(raw.get("absolute", 0) or 0),
        relative=float(raw.get("relative", 0) or 0),
        amount=_split(raw.get("amount", "")),
        concentration=_split(raw.get("concentration", "")),
    )


def read_index(suite: Path) -> list[dict[str, str]]:
    """Rows of ``cases/index_semantic_cases.csv``."""
    with (suite / "cases" / "index_semantic_cases.csv").open() as fh:
        return list(csv.DictReader(fh))


def select_cases(rows: Iterable[dict[str, str]], subset: str) -> list[str]:
    """Case ids of a subset: ``core`` (core_ode_subset=1), ``events`` (events without delay/priority),
    or ``all`` TimeCourse cases."""
    out = []
    for r in rows:
        tags = f"{r['componentTags']} {r['testTags']}"
        if r["testType"] != "TimeCourse":
            continue
        if subset == "core" and r["core_ode_subset"] != "1":
            continue
        if subset == "events" and (
            "EventNoDelay" not in tags or any(x in tags for x in _EXCLUDED_EVENT_TAGS)
        ):
            continue
        out.append(r["case"])
    return out


def _expected(path: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    with path.open() as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader)]
        rows = [[float(x) for x in row] for row in reader if row]
    data = np.array(rows, dtype=float)
    return data[:, 0], header[1:], data[:, 1:]


def _simulated_column(traj: object, model: object, var: str, settings: CaseSettings) -> np.ndarray:
    values = traj[var]  # type: ignore[index]
    spec = model.spec  # type: ignore[attr-defined]
    try:
        info = spec.info(var)
    except KeyError:
        return values
    if info.kind != "species" or info.compartment is None:
        return values
    volume = traj[info.compartment]  # type: ignore[index]
    if var in settings.amount and not info.only_substance_units:
        return values * volume
    if var in settings.concentration and info.only_substance_units:
        return values / volume
    return values


def _agree(expected: np.ndarray, sim: np.ndarray, settings: CaseSettings) -> tuple[bool, float]:
    both_nan = np.isnan(expected) & np.isnan(sim)
    same_inf = np.isinf(expected) & (expected == sim)
    with np.errstate(invalid="ignore"):
        excess = np.abs(expected - sim) - (settings.absolute + settings.relative * np.abs(expected))
    excess = np.where(both_nan | same_inf, -np.inf, excess)
    excess = np.where(np.isnan(excess), np.inf, excess)
    worst = float(np.max(excess)) if excess.size else -np.inf
    return worst <= 0.0, worst


def run_case(suite: Path, case: str) -> CaseResult:
    """Run one case and judge it."""
    from immunetwin import Controls, load_model, simulate
    from immunetwin.errors import ImmunetwinError, UnsupportedConstructError

    start = time.perf_counter()
    folder = suite / "cases" / "semantic" / case
    try:
        settings = read_settings(folder / f"{case}-settings.txt")
        sbml = sorted(folder.glob(f"{case}-sbml-l3v2.xml")) or sorted(folder.glob(f"{case}-sbml-l*.xml"))
        model = load_model(sbml[-1])
        times, names, expected = _expected(folder / f"{case}-results.csv")
        ctl = Controls(rtol=1e-10, atol=min(1e-12, settings.absolute * 1e-4), max_steps=200_000)
        traj = simulate(model, times, controls=ctl, t0=settings.start)
        if not traj.ok:
            return CaseResult(case, "fail", f"solver: {traj.status}", np.inf, time.perf_counter() - start)
        sim = np.column_stack([_simulated_column(traj, model, v, settings) for v in names])
        ok, worst = _agree(expected, sim, settings)
        detail = "" if ok else f"largest excess over tolerance {worst:.3g}"
        return CaseResult(case, "pass" if ok else "fail", detail, worst, time.perf_counter() - start)
    except UnsupportedConstructError as exc:
        return CaseResult(case, "refused", str(exc), 0.0, time.perf_counter() - start)
    except ImmunetwinError as exc:
        return CaseResult(case, "error", f"{type(exc).__name__}: {exc}", np.inf, time.perf_counter() - start)
    except Exception as exc:  # a bug of ours: record it, never hide it
        msg = " ".join(str(exc).split())[:200]
        return CaseResult(case, "error", f"{type(exc).__name__}: {msg}", np.inf, time.perf_counter() - start)


def _worker(args: tuple[str, str]) -> CaseResult:
    return run_case(Path(args[0]), args[1])


def run_cases(suite: Path, cases: Sequence[str], jobs: int = 1) -> Iterator[CaseResult]:
    """Run cases, in ``jobs`` processes (each compiles its own models), yielding results in order."""
    work = [(str(suite), c) for c in cases]
    if jobs <= 1:
        yield from (_worker(w) for w in work)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(jobs, maxtasksperchild=50) as pool:
        yield from pool.imap(_worker, work, chunksize=2)


def summary_markdown(results_by_subset: dict[str, list[CaseResult]], machine: str, command: str) -> str:
    """CONFORMANCE.md text: totals per subset, then every non-passing case with its reason."""
    lines = [
        "## SBML Test Suite (semantic cases)",
        "",
        f"Produced by `{command}` on {machine}.",
        "",
        "Pass rule (the suite's): |expected - simulated| <= absolute + relative x |expected| at every "
        "listed time and variable. *Refused* = the engine raised UnsupportedConstructError naming the "
        "construct; *fail*/*error* = ran and disagreed, or crashed.",
        "",
        "| subset | cases | pass | fail | error | refused | pass rate | pass rate of not refused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, results in results_by_subset.items():
        c = Counter(r.outcome for r in results)
        n = len(results)
        attempted = n - c["refused"]
        lines.append(
            f"| {name} | {n} | {c['pass']} | {c['fail']} | {c['error']} | {c['refused']} | "
            f"{100 * c['pass'] / max(n, 1):.1f}% | {100 * c['pass'] / max(attempted, 1):.1f}% |"
        )
    for name, results in results_by_subset.items():
        bad = [r for r in results if r.outcome != "pass"]
        lines += ["", f"### {name}: cases that did not pass ({len(bad)})", ""]
        if bad:
            lines += ["| case | outcome | reason |", "|---|---|---|"]
            lines += [f"| {r.case} | {r.outcome} | {r.detail.replace('|', '/')} |" for r in bad]
        reasons = Counter(r.detail.split(" in element")[0] for r in bad if r.outcome == "refused")
        if reasons:
            lines += [
                "",
                "Refusals by construct: " + "; ".join(f"{k} ({v})" for k, v in reasons.most_common()),
            ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from immunetwin.runtime import compile_small_loops_whole

    compile_small_loops_whole()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "suite", type=Path, help="folder holding cases/ (../shared/conformance/sbml-test-suite)"
    )
    parser.add_argument("--subset", default="core,events", help="comma list of core, events, all")
    parser.add_argument("--cases", default="", help="comma list of case ids (overrides --subset)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--markdown", type=Path, default=None, help="write the summary here")
    parser.add_argument("--machine", default="", help="machine description for the summary")
    args = parser.parse_args(argv)
    rows = read_index(args.suite)
    subsets = (
        {"selected": list(_split(args.cases))}
        if args.cases
        else {s: select_cases(rows, s) for s in _split(args.subset)}
    )
    results: dict[str, list[CaseResult]] = {}
    cache: dict[str, CaseResult] = {}
    for name, cases in subsets.items():
        todo = [c for c in cases if c not in cache]
        for r in run_cases(args.suite, todo, args.jobs):
            cache[r.case] = r
            print(f"{r.case} {r.outcome:8s} {r.seconds:6.2f}s {r.detail}", flush=True)
        results[name] = [cache[c] for c in cases]
    for name, res in results.items():
        c = Counter(r.outcome for r in res)
        print(f"{name}: {len(res)} cases, " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    if args.markdown:
        cmd = "python -m immunetwin.conformance.sbml_suite " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        replace_section(
            args.markdown, "sbml", summary_markdown(results, args.machine or "unknown machine", cmd)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
