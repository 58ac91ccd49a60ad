"""Log-likelihoods of the PEtab benchmark collection at nominal parameters, against AMICI's references.

A problem *matches* when ``numpy.isclose(llh, reference, rtol=1e-3, atol=1e-3)`` (AMICI's own test
rule; references from AMICI's ``benchmark_models.yaml``, computed at solver tolerances 1e-8). It is
*refused* when reading or compiling raises an :class:`~immunetwin.errors.ImmunetwinError` that names
what is unsupported, *no reference* when it runs but AMICI gives no value, *timeout* when it takes
longer than the limit, and *mismatch* / *error* otherwise. Collection: Hass et al. 2019,
Bioinformatics 35:3073 (Benchmarking-Initiative/Benchmark-Models-PEtab; see its SOURCE.md).

Command line::

    python -m immunetwin.conformance.petab_suite COLLECTION_DIR [--problems A,B] [--jobs 2]
        [--timeout 900] [--markdown CONFORMANCE.md]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from immunetwin.conformance.report import replace_section
from immunetwin.engines.xla import jit

__all__ = ["ProblemResult", "list_problems", "run_problem"]


@dataclass(frozen=True)
class ProblemResult:
    """Outcome of one benchmark problem."""

    problem: str
    outcome: str  # match, mismatch, refused, no reference, timeout, error
    llh: float = float("nan")
    reference: float = float("nan")
    detail: str = ""
    seconds: float = 0.0


def list_problems(collection: Path) -> list[str]:
    """Problem folders of the collection (``Benchmark-Models/<name>``)."""
    root = collection / "Benchmark-Models"
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def references(collection: Path) -> dict[str, float]:
    """AMICI's reference log-likelihoods by problem name."""
    import yaml

    data = yaml.safe_load((collection / "reference_llh_amici.yaml").read_text())
    return {k: float(v["llh"]) for k, v in data.items() if isinstance(v, dict) and "llh" in v}


def run_problem(collection: Path, name: str) -> ProblemResult:
    """Read, compile and evaluate one problem's log-likelihood at its nominal parameters."""
    import jax
    import jax.numpy as jnp

    from immunetwin.errors import ImmunetwinError
    from immunetwin.inference import compile_objective
    from immunetwin.io.petab import read_petab

    ref = references(collection).get(name, float("nan"))
    start = time.perf_counter()
    folder = collection / "Benchmark-Models" / name
    yaml_path = folder / f"{name}.yaml"
    if not yaml_path.is_file():
        found = sorted(folder.glob("*.yaml"))
        yaml_path = found[0] if found else yaml_path
    try:
        problem = read_petab(yaml_path)
        objective = compile_objective(problem)
        with jax.enable_x64(True):
            llh = float(jit(objective.log_likelihood)(jnp.asarray(problem.nominal)))
    except ImmunetwinError as err:
        return ProblemResult(
            name, "refused", reference=ref, detail=str(err)[:300], seconds=time.perf_counter() - start
        )
    except Exception as err:
        detail = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        return ProblemResult(name, "error", reference=ref, detail=detail, seconds=time.perf_counter() - start)
    secs = time.perf_counter() - start
    if np.isnan(ref):
        return ProblemResult(name, "no reference", llh, ref, "AMICI's list has no value", secs)
    ok = bool(np.isclose(llh, ref, rtol=1e-3, atol=1e-3))
    return ProblemResult(
        name, "match" if ok else "mismatch", llh, ref, "" if ok else f"difference {llh - ref:.4g}", secs
    )


def _child(collection: str, name: str, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    queue.put(run_problem(Path(collection), name))


def run_problems(
    collection: Path, names: Sequence[str], jobs: int = 1, timeout: float = 900.0
) -> Iterator[ProblemResult]:
    """Run problems, each in a fresh process, ``jobs`` at a time; one that runs longer than
    ``timeout`` seconds is stopped and reported as ``timeout``. Results come in the order given."""
    ctx = mp.get_context("spawn")
    refs = references(collection)
    todo = list(names)
    running: dict[str, tuple[mp.process.BaseProcess, mp.Queue, float]] = {}  # type: ignore[type-arg]
    done: dict[str, ProblemResult] = {}
    order = list(names)
    while todo or running:
        while todo and len(running) < max(1, jobs):
            name = todo.pop(0)
            queue = ctx.Queue()
            proc = ctx.Process(target=_child, args=(str(collection), name, queue), daemon=True)
            proc.start()
            running[name] = (proc, queue, time.perf_counter())
        for name, (proc, queue, t0) in list(running.items()):
            if not queue.empty():
                done[name] = queue.get()
            elif time.perf_counter() - t0 > timeout:
                proc.kill()
                done[name] = ProblemResult(
                    name, "timeout", reference=refs.get(name, math.nan),
                    detail=f"no result within {timeout:.0f} s", seconds=timeout,
                )  # fmt: skip
            elif not proc.is_alive() and queue.empty():
                time.sleep(0.2)
                done[name] = (
                    queue.get()
                    if not queue.empty()
                    else ProblemResult(name, "error", detail=f"process died (exit code {proc.exitcode})")
                )
            else:
                continue
            proc.join(1)
            del running[name]
        while order and order[0] in done:
            yield done.pop(order.pop(0))
        time.sleep(0.2)


def summary_markdown(results: Sequence[ProblemResult], machine: str, command: str) -> str:
    """The PEtab section of CONFORMANCE.md."""
    c = Counter(r.outcome for r in results)
    with_ref = [r for r in results if not np.isnan(r.reference)]
    lines = [
        "## PEtab benchmark collection (log-likelihood at nominal parameters)",
        "",
        f"Produced by `{command}` on {machine}.",
        "",
        "Rule (AMICI's): match when `numpy.isclose(llh, reference, rtol=1e-3, atol=1e-3)`, references from"
        " AMICI's `benchmark_models.yaml` (solver tolerances 1e-8; ours: rtol 1e-8, atol 1e-10, Rodas5P)."
        " *refused* = reading or compiling raised an error naming what is unsupported.",
        "",
        f"Totals: {len(results)} problems; "
        + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
        + f". Of the {len(with_ref)} with a reference: {sum(r.outcome == 'match' for r in with_ref)} match.",
        "",
        "| problem | outcome | llh (immunetwin) | reference (AMICI) | seconds | detail |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        llh = "" if np.isnan(r.llh) else f"{r.llh:.6f}"
        ref = "" if np.isnan(r.reference) else f"{r.reference:.6f}"
        lines.append(
            f"| {r.problem} | {r.outcome} | {llh} | {ref} | {r.seconds:.1f} | {r.detail.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from immunetwin.runtime import compile_small_loops_whole

    compile_small_loops_whole()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("collection", type=Path, help="../shared/conformance/petab-benchmark")
    parser.add_argument("--problems", default="", help="comma list of problem names (default: all)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per problem")
    parser.add_argument("--markdown", type=Path, default=None, help="write the section into this file")
    parser.add_argument("--machine", default="", help="machine description for the summary")
    args = parser.parse_args(argv)
    names = [p for p in args.problems.split(",") if p] or list_problems(args.collection)
    results = []
    for r in run_problems(args.collection, names, args.jobs, args.timeout):
        results.append(r)
        print(
            f"{r.problem:36s} {r.outcome:12s} {r.llh:14.6f} {r.reference:14.6f} {r.seconds:7.1f}s {r.detail}",
            flush=True,
        )
    print(", ".join(f"{k} {v}" for k, v in sorted(Counter(r.outcome for r in results).items())))
    if args.markdown:
        cmd = "python -m immunetwin.conformance.petab_suite " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        replace_section(
            args.markdown, "petab", summary_markdown(results, args.machine or "unknown machine", cmd)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
