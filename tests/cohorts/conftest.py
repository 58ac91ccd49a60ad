"""Shared pieces of the cohort tests: the cheap viral_tiv template (4 states, antiviral intervention)."""

from __future__ import annotations

import pytest

from immunetwin.templates import Template, load_template


@pytest.fixture(scope="session")
def tiv() -> Template:
    return load_template("viral_tiv")
