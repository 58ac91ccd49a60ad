"""The exception tree of immunetwin, documented in one place.

```
ImmunetwinError                 every error this package raises on purpose
├── ModelError                  a model cannot be read or compiled
│   ├── MalformedModelError     the file is not valid Antimony / SBML (message names line or element)
│   ├── UnsupportedConstructError  valid SBML the engine refuses (names the construct and element id)
│   └── UnknownIdError          a parameter / state / target id that the model does not define
├── InputError                  a value given by the caller is impossible (NaN, negative time, bad shape)
├── TemplateError               a template folder or its metadata is missing or invalid
├── ProblemError                a calibration problem (PEtab files, patient data) is invalid: names file, row, column
└── SolverError                 a solve failed and the caller asked for `throw=True`
```

Messages are one line and name *what* is wrong and *where*, so the CLI can print them as they are.
"""

from __future__ import annotations

__all__ = [
    "ImmunetwinError",
    "InputError",
    "MalformedModelError",
    "ModelError",
    "ProblemError",
    "SolverError",
    "TemplateError",
    "UnknownIdError",
    "UnsupportedConstructError",
]


class ImmunetwinError(Exception):
    """Base class of every error raised on purpose by immunetwin."""


class ModelError(ImmunetwinError):
    """A model cannot be read or compiled."""


class MalformedModelError(ModelError):
    """The model text is not valid Antimony or SBML."""


class UnsupportedConstructError(ModelError):
    """The model is valid SBML but uses a construct the engine refuses to simulate.

    Attributes:
        construct: the SBML construct, e.g. ``"algebraic rule"`` or ``"event delay"``.
        element_id: the id of the offending element (or ``"<model>"``).
    """

    def __init__(self, construct: str, element_id: str, detail: str = "") -> None:
        self.construct = construct
        self.element_id = element_id
        extra = f": {detail}" if detail else ""
        super().__init__(f"unsupported SBML construct '{construct}' in element '{element_id}'{extra}")


class UnknownIdError(ModelError, KeyError):
    """An id that the model does not define (a parameter, state or dosing target)."""

    def __init__(self, kind: str, ident: str, known: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.ident = ident
        hint = ""
        if known:
            shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
            hint = f" (known: {shown})"
        super().__init__(f"unknown {kind} '{ident}'{hint}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class InputError(ImmunetwinError, ValueError):
    """A value passed by the caller is impossible (NaN, negative, wrong shape, unsorted times)."""


class TemplateError(ImmunetwinError):
    """A template is missing, or its metadata is invalid."""


class ProblemError(ImmunetwinError, ValueError):
    """A calibration problem is invalid; the message names the file, row and column where it can.

    Attributes:
        where: ``"file"``, ``"file, row 12"`` or ``"file, row 12, column 'time'"``.
    """

    def __init__(self, message: str, *, file: str = "", row: int | None = None, column: str = "") -> None:
        parts = [file] if file else []
        if row is not None:
            parts.append(f"row {row}")
        if column:
            parts.append(f"column '{column}'")
        self.where = ", ".join(parts)
        super().__init__(f"{self.where}: {message}" if self.where else message)


class SolverError(ImmunetwinError):
    """An ODE solve failed and the caller asked for an exception (``throw=True``)."""
