"""Compiled solvers kept on disk: written once, loaded back, the same answers as ``jax.jit``."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np

import immunetwin as it
from immunetwin.engines import cache

CHILD = """
import json, sys
from pathlib import Path
import numpy as np
import immunetwin as it
from immunetwin.engines import cache
from immunetwin.runtime import enable_compilation_cache
if sys.argv[1] != "off":
    enable_compilation_cache(Path(sys.argv[1]))
compiled = []
real = cache._saved
cache._saved = lambda *a: compiled.append(1) or real(*a)
model = it.load_model("model m\\n  x = 2\\n  x' = -k*x\\n  k = 0.7\\nend\\n")
coh = it.simulate_cohort(model, np.linspace(0.0, 2.0, 5), parameters={"k": np.array([0.5, 1.0])})
print(json.dumps({"x": coh["x"].tolist(), "status": coh.status.tolist(), "saved": sorted(
    p.name for p in Path(sys.argv[1], "immunetwin-programs").glob("*.xla")) if sys.argv[1] != "off" else []}))
"""


def _child(cache_dir: str) -> dict:
    """Run a two-patient cohort in a fresh process with JAX's persistent cache in ``cache_dir``."""
    run = subprocess.run(
        [sys.executable, "-c", CHILD, cache_dir], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_saved_solver_is_loaded_by_a_new_process_with_the_same_answers(tmp_path):
    """First process: compiled and saved; second: loaded (the file is not rewritten); same answers as a
    process without any cache, and as the exact solution."""
    where = str(tmp_path / "cache")
    first = _child(where)
    assert len(first["saved"]) == 1
    saved = tmp_path / "cache" / "immunetwin-programs" / first["saved"][0]
    written = saved.stat().st_mtime_ns
    second = _child(where)
    assert saved.stat().st_mtime_ns == written and second["saved"] == first["saved"]
    plain = _child("off")
    assert first["x"] == second["x"] == plain["x"] and second["status"] == ["success", "success"]
    np.testing.assert_allclose(np.array(second["x"])[:, -1], 2 * np.exp(-2 * np.array([0.5, 1.0])), rtol=1e-5)


def test_a_program_from_jaxs_persistent_cache_is_used_but_not_saved(tmp_path):
    """With the saved program gone but JAX's own cache entry left, a new process gets its program from
    JAX's cache and does not save it (re-serialised, it would load and then fail when run)."""
    where = str(tmp_path / "cache")
    first = _child(where)
    (tmp_path / "cache" / "immunetwin-programs" / first["saved"][0]).unlink()
    again = _child(where)
    assert again["saved"] == [] and again["x"] == first["x"]


def test_a_corrupt_file_is_compiled_again_and_replaced(tmp_path):
    where = str(tmp_path / "cache")
    first = _child(str(tmp_path / "other"))  # learn the file name
    programs = tmp_path / "cache" / "immunetwin-programs"
    programs.mkdir(parents=True)
    (programs / first["saved"][0]).write_bytes(b"not a compiled program")
    assert cache._load(programs / first["saved"][0], jax.local_devices()[:1]) is None
    again = _child(where)  # JAX's cache is empty here: a fresh compile, saved over the broken file
    assert again["x"] == first["x"]
    assert cache._load(programs / first["saved"][0], jax.local_devices()[:1]) is not None


def test_key_changes_with_what_the_program_depends_on(monkeypatch):
    fns = it.load_model("model m\n  x = 1\n  x' = -x\nend\n").functions
    shapes = (((2,), "float64"),)
    base = cache._key(fns, it.Rodas5P(), it.Controls(), shapes)
    assert base == cache._key(fns, it.Rodas5P(), it.Controls(), shapes)
    assert base != cache._key(fns, it.Rodas5(), it.Controls(), shapes)
    assert base != cache._key(fns, it.Rodas5P(), it.Controls(rtol=1e-8), shapes)
    assert base != cache._key(fns, it.Rodas5P(), it.Controls(), (((3,), "float64"),))
    assert base != cache._key(fns, it.Rodas5P(), it.Controls(), shapes, shards=2)
    assert base != cache._key(fns, it.Rodas5P(), it.Controls(), shapes, columns=(0,))
    machine = cache._machine()
    assert jax.__version__ in machine and jax.devices()[0].client.platform in machine
    monkeypatch.setattr(cache, "_machine", lambda: machine + "\nanother processor")
    assert base != cache._key(fns, it.Rodas5P(), it.Controls(), shapes)
