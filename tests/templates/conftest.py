"""A tiny fixture template written into a temporary folder, so library tests need no real template.

The model is the target-cell-limited infection of Baccam et al. 2006 (J Virol 80:7590,
doi:10.1128/JVI.01623-05), written with one reaction, a sink reaction, two rate rules and an
assignment rule so that every kind of model element the library reads is present.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

TINY_ANTIMONY = """\
// tiny: target-cell-limited infection (fixture for the template library tests)
model tiny()
  compartment body = 1;            // unit volume
  species T in body, I in body, V in body;
  T = 4e8;                         // target cells
  I = 0;
  V = 9.3e-2;                      // inoculum
  infection: T -> I; beta*T*V;     // reaction: T converted into I, V a modifier
  death: I -> ; delta*I;           // sink
  V' = (1 - eps_av)*p*I - c*V;     // rate rule on a species
  D' = k_d*I - r_d*D;              // rate rule on a parameter (tissue damage)
  D = 0;
  damage := D/(1 + D);             // assignment rule
  beta = 2.7e-5; delta = 4.0; p = 1.2e-2; c = 3.0; eps_av = 0; k_d = 1e-8; r_d = 0.5;
end
"""


def _lognormal(value: float, sigma: float = 1.0) -> dict[str, Any]:
    return {"distribution": "lognormal", "median": value, "sigma": sigma}


def _parameter(value: float, unit: str, estimate: bool = True) -> dict[str, Any]:
    return {
        "value": value,
        "unit": unit,
        "source": "baccam2006, Table 2",
        "range": [value / 100, value * 100],
        "prior": _lognormal(value),
        "estimate": estimate,
    }


TINY_METADATA: dict[str, Any] = {
    "name": "tiny",
    "version": "1.0.0",
    "title": "Tiny target-cell-limited infection",
    "purpose": "Test fixture: does the template library read, check and export a template?",
    "context_of_use": "Tests only; never for decisions.",
    "time_unit": "day",
    "citations": {
        "baccam2006": "Baccam P, Beauchemin C, Macken CA, Hayden FG, Perelson AS. Kinetics of influenza A "
        "virus infection in humans. J Virol. 2006;80(15):7590-7599. doi:10.1128/JVI.01623-05"
    },
    "states": {
        "T": {"description": "uninfected target cells", "unit": "cell"},
        "I": {"description": "infected cells", "unit": "cell"},
        "V": {"description": "infectious virus", "unit": "TCID50/mL"},
        "D": {"description": "tissue damage", "unit": "dimensionless"},
    },
    "parameters": {
        "beta": _parameter(2.7e-5, "mL/(TCID50*day)"),
        "delta": _parameter(4.0, "1/day"),
        "p": _parameter(1.2e-2, "TCID50/(mL*day*cell)"),
        "c": _parameter(3.0, "1/day"),
        "eps_av": {
            "value": 0,
            "unit": "dimensionless",
            "source": "intervention switch, off by default",
            "range": [0.0, 1.0],
            "prior": {"distribution": "uniform", "lower": 0.0, "upper": 1.0},
            "estimate": False,
        },
        "k_d": _parameter(1e-8, "1/(cell*day)", estimate=False),
        "r_d": _parameter(0.5, "1/day", estimate=False),
    },
    "observables": {
        "viral_load": {
            "formula": "log10(V)",
            "unit": "log10 TCID50/mL",
            "loinc": None,
            "noise": {"model": "normal", "sigma": 0.5},
            "lower_limit_of_detection": 0.0,
        },
        "I": {  # same name as a state: PEtab export must rename it
            "formula": "I",
            "unit": "cell",
            "loinc": None,
            "noise": {"model": "laplace", "sigma": 10.0},
        },
    },
    "interventions": {
        "antiviral": {
            "description": "blocks a fraction of virion production",
            "arguments": {"start": 2.0, "duration": 5.0, "efficacy": 0.9},
            "inputs": [{"target": "eps_av", "value": "efficacy", "start": "start", "duration": "duration"}],
            "doses": [],
        },
        "rechallenge": {
            "description": "two inocula of virus",
            "arguments": {"first": 1.0, "dose": 10.0},
            "inputs": [],
            "doses": [{"target": "V", "amount": "dose", "times": ["first", 3.0]}],
        },
    },
    "outcomes": {
        "peak_viral_load": {"kind": "max", "expression": "log10(V)", "unit": "log10 TCID50/mL",
                            "description": "peak titre"},
        "time_of_peak": {"kind": "time_of_max", "expression": "V", "unit": "day", "description": "peak time"},
        "virus_auc": {"kind": "auc", "expression": "V", "unit": "TCID50/mL*day", "description": "exposure"},
        "clearance_time": {"kind": "time_below", "expression": "log10(V)", "threshold": 0.0, "unit": "day",
                           "description": "first time after the peak below 1 TCID50/mL"},
        "severe": {"kind": "exceeds", "expression": "damage", "threshold": 0.5, "unit": "dimensionless",
                   "description": "damage index above one half"},
        "final_targets": {"kind": "final", "expression": "T", "unit": "cell", "description": "cells left"},
        "lowest_targets": {"kind": "min", "expression": "T", "unit": "cell", "description": "fewest cells"},
    },
    "limits": ["No immune response."],
    "checks": ["None: a fixture."],
}  # fmt: skip


def write_template(
    root: Path, metadata: dict[str, Any], antimony: str = TINY_ANTIMONY, folder: str = "tiny"
) -> Path:
    """Write a template folder ``root/<folder>/`` and return it."""
    folder = root / folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "template.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False), encoding="utf-8")
    (folder / "model.ant").write_text(antimony, encoding="utf-8")
    (folder / "README.md").write_text("# tiny\n\nA fixture.\n", encoding="utf-8")
    return folder


@pytest.fixture
def tiny_antimony() -> str:
    """The fixture's model text."""
    return TINY_ANTIMONY


@pytest.fixture
def tiny_metadata() -> dict[str, Any]:
    """A fresh, mutable copy of the fixture's metadata."""
    return copy.deepcopy(TINY_METADATA)


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """A folder holding the valid ``tiny`` template."""
    root = tmp_path / "templates"
    write_template(root, copy.deepcopy(TINY_METADATA))
    return root


@pytest.fixture
def make_template(tmp_path: Path) -> Callable[..., Path]:
    """Write a variant of the fixture (metadata and/or model text) and return its root folder."""

    def make(metadata: dict[str, Any], antimony: str = TINY_ANTIMONY) -> Path:
        root = tmp_path / "variant"
        write_template(root, metadata, antimony)
        return root

    return make
