"""Readers and writers: the only place SBML, Antimony (and later PEtab, FHIR) libraries appear."""

from __future__ import annotations

from pathlib import Path

from immunetwin.engines.ode import Model, compile_model
from immunetwin.errors import MalformedModelError
from immunetwin.io.antimony import antimony_to_sbml, sbml_to_antimony
from immunetwin.io.sbml import spec_from_sbml

__all__ = ["antimony_to_sbml", "load_model", "sbml_to_antimony", "spec_from_sbml"]

_SBML_SUFFIXES = {".xml", ".sbml"}
_ANTIMONY_SUFFIXES = {".ant", ".antimony", ".txt"}


def _looks_like_sbml(text: str) -> bool:
    head = text.lstrip()[:400]
    return head.startswith("<?xml") or "<sbml" in head


def load_model(source: str | Path) -> Model:
    """Read an Antimony or SBML model (a file path or the text itself) and compile it.

    Raises:
        MalformedModelError: unreadable file or text (names the file and line).
        UnsupportedConstructError: valid SBML that the engine refuses.
    """
    name = "<text>"
    if isinstance(source, Path) or (
        isinstance(source, str)
        and "\n" not in source
        and len(source) < 4096
        and Path(source).suffix.lower() in _SBML_SUFFIXES | _ANTIMONY_SUFFIXES
    ):
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise MalformedModelError(f"{path}: no such model file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MalformedModelError(f"{path}: cannot read: {exc}") from exc
        is_sbml = path.suffix.lower() in _SBML_SUFFIXES or _looks_like_sbml(text)
    else:
        text = str(source)
        is_sbml = _looks_like_sbml(text)
    if not text.strip():
        raise MalformedModelError(f"{name}: the model is empty")
    sbml = text if is_sbml else antimony_to_sbml(text, source=name)
    spec = spec_from_sbml(sbml, source=name)
    return compile_model(spec, sbml=sbml, source=name)
