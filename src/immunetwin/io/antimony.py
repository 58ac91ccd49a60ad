"""Antimony <-> SBML through the ``antimony`` package (Smith et al. 2009, Bioinformatics 25:2452).

libantimony keeps what it loaded in process-wide state (``loadAntimonyString`` then
``getMainModuleName`` read the same tables), so two threads converting at once crashed the process
(a segmentation fault loading a template from 4 threads) or could read each other's model. Each
conversion holds :data:`_LIBRARY` from its ``clearPreviousLoads`` to its last read.
"""

from __future__ import annotations

import threading

import antimony

from immunetwin.errors import MalformedModelError

__all__ = ["antimony_to_sbml", "sbml_to_antimony"]

#: Serialises every use of libantimony's process-wide state in this process.
_LIBRARY = threading.Lock()


def antimony_to_sbml(text: str, *, source: str = "<antimony>") -> str:
    """Convert Antimony text to SBML (Level 3 Version 2 where antimony supports it).

    Raises:
        MalformedModelError: the Antimony text does not parse (antimony's message, with the line).
    """
    with _LIBRARY:
        antimony.clearPreviousLoads()
        failed = antimony.loadAntimonyString(text) < 0
        msg = " ".join((antimony.getLastError() or "unknown error").split()) if failed else ""
        name = "" if failed else antimony.getMainModuleName()
        sbml = "" if failed else antimony.getSBMLString(name)
    if failed:
        raise MalformedModelError(f"{source}: {msg}")
    if not sbml:
        raise MalformedModelError(f"{source}: antimony produced no SBML for module '{name}'")
    return sbml


def sbml_to_antimony(sbml: str, *, source: str = "<sbml>") -> str:
    """Convert SBML text to Antimony."""
    with _LIBRARY:
        antimony.clearPreviousLoads()
        if antimony.loadSBMLString(sbml) < 0:
            msg = " ".join((antimony.getLastError() or "unknown error").split())
            raise MalformedModelError(f"{source}: {msg}")
        return antimony.getAntimonyString(antimony.getMainModuleName())
