"""Antimony <-> SBML through the ``antimony`` package (Smith et al. 2009, Bioinformatics 25:2452)."""

from __future__ import annotations

import antimony

from immunetwin.errors import MalformedModelError

__all__ = ["antimony_to_sbml", "sbml_to_antimony"]


def antimony_to_sbml(text: str, *, source: str = "<antimony>") -> str:
    """Convert Antimony text to SBML (Level 3 Version 2 where antimony supports it).

    Raises:
        MalformedModelError: the Antimony text does not parse (antimony's message, with the line).
    """
    antimony.clearPreviousLoads()
    if antimony.loadAntimonyString(text) < 0:
        msg = " ".join((antimony.getLastError() or "unknown error").split())
        raise MalformedModelError(f"{source}: {msg}")
    name = antimony.getMainModuleName()
    sbml = antimony.getSBMLString(name)
    if not sbml:
        raise MalformedModelError(f"{source}: antimony produced no SBML for module '{name}'")
    return sbml


def sbml_to_antimony(sbml: str, *, source: str = "<sbml>") -> str:
    """Convert SBML text to Antimony."""
    antimony.clearPreviousLoads()
    if antimony.loadSBMLString(sbml) < 0:
        msg = " ".join((antimony.getLastError() or "unknown error").split())
        raise MalformedModelError(f"{source}: {msg}")
    return antimony.getAntimonyString(antimony.getMainModuleName())
