"""Antimony <-> SBML conversion from several threads at once (libantimony keeps process-wide state)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import libsbml

from immunetwin.io import antimony_to_sbml, sbml_to_antimony


def _model(i: int) -> str:
    return f"model m{i}\n  x' = -k * x\n  x = {i + 1}; k = 0.{i + 1}\nend\n"


def _id_and_start(sbml: str) -> tuple[str, float]:
    model = libsbml.readSBMLFromString(sbml).getModel()
    return model.getId(), model.getParameter("x").getValue()


def test_conversions_in_threads_each_return_their_own_model() -> None:
    # without the lock, 4 threads crashed the process or read another thread's model
    jobs = [i % 8 for i in range(200)]
    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(lambda i: antimony_to_sbml(_model(i)), jobs))
    assert [_id_and_start(s) for s in out] == [(f"m{i}", float(i + 1)) for i in jobs]
    with ThreadPoolExecutor(4) as pool:
        back = list(pool.map(sbml_to_antimony, out))
    assert all(f"m{i}()" in text and f"x = {i + 1}" in text for i, text in zip(jobs, back, strict=True))
