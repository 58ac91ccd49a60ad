"""What every request needs (the app's state), and the dependencies that hand it out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import OAuth2PasswordBearer

from immunetwin.service import Principal, Runner, ServiceSettings, TwinCache, principal_from_token
from immunetwin.storage import Database

__all__ = [
    "MAX_ID",
    "CurrentUser",
    "Id",
    "Service",
    "ServiceState",
    "bearer",
    "current_principal",
    "service_state",
]


@dataclass(frozen=True)
class ServiceState:
    """The open database, the job runner, the twin cache and the settings of one app."""

    settings: ServiceSettings
    db: Database
    runner: Runner
    cache: TwinCache


#: Ids are positive and fit PostgreSQL's ``integer`` (larger ones are a 422, not a database error).
MAX_ID = 2**31 - 1
Id = Annotated[int, Path(ge=1, le=MAX_ID)]

bearer = OAuth2PasswordBearer(tokenUrl="/api/token", auto_error=False)


def service_state(request: Request) -> ServiceState:
    """The app's :class:`ServiceState` (set by the lifespan)."""
    return request.app.state.service


Service = Annotated[ServiceState, Depends(service_state)]


def current_principal(state: Service, token: Annotated[str | None, Depends(bearer)]) -> Principal:
    """The user of the bearer token (log-in or API token); 401 without a valid one."""
    return principal_from_token(state.db, token or "")


CurrentUser = Annotated[Principal, Depends(current_principal)]
