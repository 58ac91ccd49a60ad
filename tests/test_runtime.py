"""Process-level runtime switches (immunetwin.runtime), each checked in a fresh interpreter: they act
only before JAX starts its backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from immunetwin.runtime import SMALL_LOOP_BYTES

OPTION = "xla_cpu_small_while_loop_byte_threshold"

CHILD = """
import json, os
from immunetwin.runtime import compile_small_loops_whole
took = [] if {before} else [compile_small_loops_whole()]
import jax.numpy as jnp, numpy as np
import immunetwin as it
model = it.load_model("model m\\n  x = 1\\n  y = 0\\n  x' = -k*x*y - 0.1*x\\n  y' = k*x*y - 0.2*y + 0.01\\n  k = 3\\nend\\n")
traj = it.simulate(model, np.linspace(0.0, 10.0, 11))
took += [compile_small_loops_whole()]  # JAX has started: no effect now
print(json.dumps({{"took": took, "flags": os.environ.get("XLA_FLAGS", ""), "x": traj["x"].tolist()}}))
"""


def _child(before: bool, flags: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if flags is not None:
        env["XLA_FLAGS"] = flags
    env["IMMUNETWIN_CACHE"] = "off"
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(before=before)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def plain() -> dict:
    return _child(before=True, flags=None)


def test_small_loops_option_is_set_before_jax_starts_and_refused_after(plain: dict) -> None:
    out = _child(before=False, flags=None)
    assert out["took"] == [True, False]
    assert out["flags"] == f"--xla_backend_extra_options={OPTION}={SMALL_LOOP_BYTES}"
    assert plain["took"] == [False]
    assert plain["flags"] == ""
    # the same trajectory, to rounding: the option changes how XLA runs the loop, not what it computes
    np.testing.assert_allclose(out["x"], plain["x"], rtol=1e-12, atol=0)


def test_small_loops_option_keeps_the_users_flags() -> None:
    user = (
        "--xla_backend_extra_options=xla_cpu_disable_loop_unrolling=true --xla_cpu_enable_fast_min_max=false"
    )
    out = _child(before=False, flags=user)
    assert out["took"][0] is True
    assert out["flags"] == (
        f"--xla_backend_extra_options=xla_cpu_disable_loop_unrolling=true,{OPTION}={SMALL_LOOP_BYTES} "
        "--xla_cpu_enable_fast_min_max=false"
    )
    mine = _child(before=False, flags=f"--xla_backend_extra_options={OPTION}=4096")
    assert mine["took"] == [False, False]  # the user's own threshold wins
    assert mine["flags"] == f"--xla_backend_extra_options={OPTION}=4096"


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "1e9"])
def test_small_loops_threshold_must_be_a_positive_integer(bad) -> None:
    from immunetwin.errors import InputError
    from immunetwin.runtime import compile_small_loops_whole

    before = os.environ.get("XLA_FLAGS")
    with pytest.raises(InputError, match="threshold_bytes must be a positive integer"):
        compile_small_loops_whole(bad)
    assert os.environ.get("XLA_FLAGS") == before


PIN = """
import json, os, threading
from immunetwin.runtime import pin_to_cores
from immunetwin.errors import InputError
first = min(os.sched_getaffinity(0))
took = pin_to_cores({first})
seen = []
later = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))
later.start(); later.join()
tasks = [sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")]
try:
    pin_to_cores({first, 10_000})
    refused = ""
except InputError as e:
    refused = str(e)
print(json.dumps({"took": took, "first": first, "later": seen[0], "tasks": tasks, "refused": refused}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no per-thread CPU affinity on this OS")
def test_pinning_holds_for_every_thread_and_threads_started_later() -> None:
    done = subprocess.run([sys.executable, "-c", PIN], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["took"] is True
    assert out["later"] == [out["first"]]
    assert out["tasks"] and all(t == [out["first"]] for t in out["tasks"])
    # a core outside the allowed set is refused by name; the earlier pinning stands
    assert f"cannot pin this process to cores [{out['first']}, 10000]" in out["refused"]
