"""The exception tree of immunetwin, documented in one place.

```
ImmunetwinError                 every error this package raises on purpose
├── ModelError                  a model cannot be read or compiled
│   ├── MalformedModelError     the file is not valid Antimony / SBML (message names line or element)
│   ├── UnsupportedConstructError  valid SBML the engine refuses (names the construct and element id)
│   └── UnknownIdError          a parameter / state / target id that the model does not define
├── InputError                  a value given by the caller is impossible (NaN, negative time, bad shape)
│   └── IngestError             a measurement payload (FHIR, CSV) is refused whole: names the JSON path or row/column
├── TemplateError               a template folder or its metadata is missing or invalid
├── ProblemError                a calibration problem (PEtab files, patient data) is invalid: names file, row, column
├── SolverError                 a solve failed and the caller asked for `throw=True`
├── StorageError                a stored thing is missing, in conflict or damaged
│   ├── NotFoundError           no site / patient / twin / job / alert / user / token with that key
│   ├── ConflictError           it exists already, or a job cannot go from its state to that one
│   └── ChecksumError           a stored twin's bytes do not match their SHA-256
└── ServiceError                (immunetwin.service) refused for who is asking: AuthenticationError,
                                PermissionDeniedError
```

Messages are one line and name *what* is wrong and *where*, so the CLI can print them as they are.
The REST API maps them to status codes (:mod:`immunetwin.api.errors`).
"""

from __future__ import annotations

__all__ = [
    "ChecksumError",
    "ConflictError",
    "ImmunetwinError",
    "IngestError",
    "InputError",
    "MalformedModelError",
    "ModelError",
    "NotFoundError",
    "ProblemError",
    "SolverError",
    "StorageError",
    "TemplateError",
    "UnknownIdError",
    "UnsupportedConstructError",
]


def _where(place: str, row: int | None, column: str) -> str:
    """``"place, row 12, column 'time'"`` from the parts that are given (``""`` if none)."""
    parts = [place] if place else []
    if row is not None:
        parts.append(f"row {row}")
    if column:
        parts.append(f"column '{column}'")
    return ", ".join(parts)


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


class IngestError(InputError):
    """A measurement payload is refused whole; the message names where (JSON path or CSV row/column).

    Attributes:
        path: the JSON path of the offending field (FHIR), e.g. ``entry[1].resource.valueQuantity.code``.
        row: the 1-based data row (CSV; the header is not counted), or ``None``.
        column: the CSV column, or ``""``.
    """

    def __init__(self, message: str, *, path: str = "", row: int | None = None, column: str = "") -> None:
        self.path, self.row, self.column = path, row, column
        self.where = _where(path, row, column)
        super().__init__(f"{self.where}: {message}" if self.where else message)


class TemplateError(ImmunetwinError):
    """A template is missing, or its metadata is invalid."""


class ProblemError(ImmunetwinError, ValueError):
    """A calibration problem is invalid; the message names the file, row and column where it can.

    Attributes:
        where: ``"file"``, ``"file, row 12"`` or ``"file, row 12, column 'time'"``.
    """

    def __init__(self, message: str, *, file: str = "", row: int | None = None, column: str = "") -> None:
        self.where = _where(file, row, column)
        super().__init__(f"{self.where}: {message}" if self.where else message)


class SolverError(ImmunetwinError):
    """An ODE solve failed and the caller asked for an exception (``throw=True``)."""


class StorageError(ImmunetwinError):
    """A stored thing is missing, in conflict, or damaged."""


class NotFoundError(StorageError, LookupError):
    """No row with that key (the message names the kind and the key)."""

    def __init__(self, kind: str, key: object) -> None:
        self.kind, self.key = kind, key
        super().__init__(f"no {kind} {key!r}")


class ConflictError(StorageError):
    """The row exists already, or the change is not allowed from the row's current state."""


class ChecksumError(StorageError):
    """Stored bytes do not match their recorded SHA-256 (the row is damaged)."""
