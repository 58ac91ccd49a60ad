"""``/api/token`` (OAuth2 password flow), ``/api/me``, API tokens, users and sites."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, status
from fastapi.security import OAuth2PasswordRequestForm

from immunetwin import service
from immunetwin.api.schemas import (
    ApiTokenCreate,
    ApiTokenPublic,
    SiteCreate,
    SitePublic,
    TokenPublic,
    UserCreate,
    UserPublic,
)
from immunetwin.api.state import CurrentUser, Service

__all__ = ["router"]

router = APIRouter(tags=["auth"])


@router.post("/token", response_model=TokenPublic)
def token(state: Service, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenPublic:
    """Log in with a username and password; the token expires after the configured lifetime."""
    issued = service.log_in(state.db, form.username, form.password, lifetime=state.settings.token_lifetime)
    return TokenPublic(access_token=issued.secret, expires_at=issued.expires_at)


@router.get("/me", response_model=UserPublic)
def me(principal: CurrentUser) -> UserPublic:
    """The logged-in user, their roles and sites."""
    return UserPublic.model_validate(principal.user)


@router.post("/me/tokens", response_model=ApiTokenPublic, status_code=status.HTTP_201_CREATED)
def create_api_token(state: Service, principal: CurrentUser, body: ApiTokenCreate) -> ApiTokenPublic:
    """An API token for a machine client acting as this user (the secret is shown once)."""
    life = timedelta(days=body.expires_in_days) if body.expires_in_days else None
    issued = service.create_token(state.db, principal, body.name, lifetime=life)
    r = issued.record
    return ApiTokenPublic(
        id=r.id, name=r.name, prefix=r.prefix, expires_at=r.expires_at, secret=issued.secret
    )


@router.get("/users", response_model=list[UserPublic], tags=["admin"])
def list_users(state: Service, principal: CurrentUser) -> list[UserPublic]:
    """Every user (admins only)."""
    return [UserPublic.model_validate(u) for u in service.list_users(state.db, principal)]


@router.post("/users", response_model=UserPublic, status_code=status.HTTP_201_CREATED, tags=["admin"])
def add_user(state: Service, principal: CurrentUser, body: UserCreate) -> UserPublic:
    """Add a user with roles and sites (admins only)."""
    user = service.add_user(state.db, principal, body.username, body.password, full_name=body.full_name,
                            roles=body.roles, sites=body.sites)  # fmt: skip
    return UserPublic.model_validate(user)


@router.get("/sites", response_model=list[SitePublic], tags=["admin"])
def list_sites(state: Service, principal: CurrentUser) -> list[SitePublic]:
    """The sites the user may see."""
    return [SitePublic.model_validate(s) for s in service.list_sites(state.db, principal)]


@router.post("/sites", response_model=SitePublic, status_code=status.HTTP_201_CREATED, tags=["admin"])
def add_site(state: Service, principal: CurrentUser, body: SiteCreate) -> SitePublic:
    """Add a site (admins only)."""
    return SitePublic.model_validate(service.add_site(state.db, principal, body.code, body.name))
