"""Our exceptions -> HTTP responses with the message (never a 500 for a bad request).

============================================  ====  ================================================
exception                                     code  body
============================================  ====  ================================================
AuthenticationError                           401   ``detail`` (+ ``WWW-Authenticate: Bearer``)
PermissionDeniedError                         403   ``detail``
NotFoundError                                 404   ``detail``
ConflictError                                 409   ``detail``
IngestError                                   422   ``detail``, ``where`` (JSON path or CSV row/column)
InputError, other ImmunetwinError             422   ``detail``
UnknownIdError (unknown template, metric...)  422   ``detail``
sqlalchemy DataError (e.g. a NUL character)  422   ``detail`` (a value the database cannot store)
ChecksumError (a damaged stored twin)         500   ``detail``
============================================  ====  ================================================
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError

from immunetwin.errors import ImmunetwinError, IngestError
from immunetwin.service.errors import AuthenticationError, PermissionDeniedError
from immunetwin.storage import ChecksumError, ConflictError, NotFoundError

__all__ = ["install_error_handlers", "status_of"]

_CODES: tuple[tuple[type[Exception], int], ...] = (
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (ChecksumError, 500),
)


def status_of(exc: Exception) -> int:
    """The HTTP status of one of our exceptions (422 unless listed in the module docstring)."""
    return next((code for kind, code in _CODES if isinstance(exc, kind)), 422)


async def _handle(_request: Request, exc: Exception) -> JSONResponse:
    code = status_of(exc)
    body: dict[str, object] = {"detail": str(exc)}
    if isinstance(exc, IngestError):
        body["where"] = exc.where
    headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
    return JSONResponse(body, status_code=code, headers=headers)


async def _data_error(_request: Request, exc: Exception) -> JSONResponse:
    reason = str(getattr(exc, "orig", exc)).splitlines()[0]
    return JSONResponse({"detail": f"a value the database cannot store: {reason}"}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping on ``app``."""
    app.add_exception_handler(ImmunetwinError, _handle)
    app.add_exception_handler(DataError, _data_error)
