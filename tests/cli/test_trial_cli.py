"""`immunetwin trial run` on the shipped example: antiviral early vs late vs none in viral_immune."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "trials" / "antiviral_timing.yaml"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "immunetwin"  # the installed console script
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=1800)


def test_example_trial_reproduces_start_early(tmp_path: Path) -> None:
    out = tmp_path / "trial"
    run = _cli("trial", "run", str(EXAMPLE), "--out", str(out), "--sample-size", "150", "--chunk-size", "512")
    assert run.returncode == 0, run.stderr
    assert "antiviral-timing" in run.stdout and "population: 150 patients" in run.stdout
    contrasts = pd.read_parquet(out / "contrasts.parquet").set_index(["arm", "endpoint"])
    early, late = contrasts.loc[("early", "peak_damage")], contrasts.loc[("late", "peak_damage")]
    # Goncalves et al. 2020 (CPT Pharmacometrics Syst Pharmacol 9:509): antivirals act when started early,
    # before the viral-load peak; started after it they change little
    assert early.upper < 0.0 and late.upper < 0.0
    assert early.upper < late.lower
    assert (
        contrasts.loc[("early", "peak_viral_load")].upper < contrasts.loc[("late", "peak_viral_load")].lower
    )
    patients = pd.read_parquet(out / "patients.parquet")
    assert len(patients) == 3 * 150 and patients.ok.all()
    assert {"peak_damage", "severe", "time_to_clearance"} <= set(patients.columns)
    html = (out / "report.html").read_text()
    assert "plotly" in html.lower() and "In-silico trial: antiviral-timing" in html


def test_bad_trial_files_give_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("control: none", "control: placebo"))
    run = _cli("trial", "run", str(bad), "--out", str(tmp_path / "o"))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: bad.yaml: control: 'placebo' is not an arm (arms: none, early, late)"
    ]
    assert "Traceback" not in run.stderr and not (tmp_path / "o").exists()
