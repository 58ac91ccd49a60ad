"""Users, roles, site memberships and API tokens.

Passwords are hashed with Argon2 (``pwdlib``'s recommended hasher); an old hash is upgraded at the next
successful log-in. An API token is a random secret shown once; only its SHA-256 is stored (a
256-bit random secret needs no slow hash), with an optional expiry and revocation.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from immunetwin.errors import ConflictError, InputError, NotFoundError
from immunetwin.storage._common import aware, insert_ignoring, now_or
from immunetwin.storage.records import TokenRecord, UserRecord
from immunetwin.storage.tables import ApiTokenRow, RoleRow, SiteMembershipRow, SiteRow, UserRoleRow, UserRow

__all__ = [
    "add_site_membership",
    "add_user",
    "authenticate",
    "create_api_token",
    "get_user",
    "grant_role",
    "list_api_tokens",
    "list_roles",
    "list_users",
    "remove_site_membership",
    "revoke_api_token",
    "revoke_role",
    "set_active",
    "set_password",
    "verify_api_token",
]

MIN_PASSWORD_LENGTH = 8
TOKEN_PREFIX = "itw_"


@functools.lru_cache(maxsize=1)
def _hasher() -> Any:
    from pwdlib import PasswordHash

    return PasswordHash.recommended()


@functools.lru_cache(maxsize=1)
def _decoy_hash() -> str:
    """A hash to verify against when the user does not exist, so both cases take as long."""
    return _hasher().hash(secrets.token_urlsafe(16))


def _password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InputError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher().hash(password)


def _names(session: Session, user_id: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    roles = session.scalars(select(RoleRow.name).join(UserRoleRow).where(UserRoleRow.user_id == user_id))
    sites = session.scalars(
        select(SiteRow.code).join(SiteMembershipRow).where(SiteMembershipRow.user_id == user_id)
    )
    return tuple(sorted(roles)), tuple(sorted(sites))


def _user(session: Session, row: UserRow) -> UserRecord:
    roles, sites = _names(session, row.id)
    return UserRecord(row.id, row.username, row.full_name, row.active, roles, sites, row.created_at)


def _user_row(session: Session, user: int | str) -> UserRow:
    column = UserRow.id if isinstance(user, int) else UserRow.username
    row = session.scalar(select(UserRow).where(column == user))
    if row is None:
        raise NotFoundError("user", user)
    return row


def add_user(
    session: Session,
    username: str,
    password: str,
    *,
    full_name: str = "",
    roles: Iterable[str] = (),
    sites: Iterable[str] = (),
    now: datetime | None = None,
) -> UserRecord:
    """Add a user with a password (at least 8 characters), roles and site memberships.

    Raises:
        ConflictError: the username is taken.
        NotFoundError: an unknown role or site.
    """
    if not username.strip() or len(username) > 64:
        raise InputError("a username has 1 to 64 characters")
    role_ids = list(
        dict.fromkeys(_role_id(session, r) for r in roles)
    )  # unknown ones refused before any write
    site_ids = list(dict.fromkeys(_site_id(session, site) for site in sites))
    row = UserRow(username=username, full_name=full_name, password_hash=_password(password), active=True, created_at=now_or(now))  # fmt: skip
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        raise ConflictError(f"user {username!r} exists already") from None
    for role_id in role_ids:
        session.add(UserRoleRow(user_id=row.id, role_id=role_id))
    for site_id in site_ids:
        session.add(SiteMembershipRow(user_id=row.id, site_id=site_id))
    session.flush()
    return _user(session, row)


def get_user(session: Session, user: int | str) -> UserRecord:
    """The user with that id or username (raises :class:`NotFoundError`)."""
    return _user(session, _user_row(session, user))


def list_users(session: Session) -> tuple[UserRecord, ...]:
    """All users, by username."""
    return tuple(_user(session, r) for r in session.scalars(select(UserRow).order_by(UserRow.username)))


def authenticate(session: Session, username: str, password: str) -> UserRecord | None:
    """The active user with that username and password, else ``None`` (same work either way)."""
    row = session.scalar(select(UserRow).where(UserRow.username == username))
    valid, new_hash = _hasher().verify_and_update(password, row.password_hash if row else _decoy_hash())
    if row is None or not valid or not row.active:
        return None
    if new_hash is not None:
        row.password_hash = new_hash
    return _user(session, row)


def set_password(session: Session, user: int | str, password: str) -> None:
    """Replace a user's password."""
    _user_row(session, user).password_hash = _password(password)
    session.flush()


def set_active(session: Session, user: int | str, active: bool) -> UserRecord:
    """Enable or disable a user's log-in (their API tokens stop working while disabled)."""
    row = _user_row(session, user)
    row.active = active
    session.flush()
    return _user(session, row)


def list_roles(session: Session) -> tuple[str, ...]:
    """The role names."""
    return tuple(session.scalars(select(RoleRow.name).order_by(RoleRow.name)))


def _role_id(session: Session, role: str) -> int:
    role_id = session.scalar(select(RoleRow.id).where(RoleRow.name == role))
    if role_id is None:
        raise NotFoundError("role", role)
    return role_id


def grant_role(session: Session, user: int | str, role: str) -> UserRecord:
    """Give a user a role (granting it twice is harmless)."""
    row = _user_row(session, user)
    values = {"user_id": row.id, "role_id": _role_id(session, role)}
    insert_ignoring(session, UserRoleRow.__table__, ("user_id", "role_id"), [values], returning=False)
    return _user(session, row)


def revoke_role(session: Session, user: int | str, role: str) -> UserRecord:
    """Take a role from a user."""
    row = _user_row(session, user)
    role_id = _role_id(session, role)
    session.execute(delete(UserRoleRow).where(UserRoleRow.user_id == row.id, UserRoleRow.role_id == role_id))
    return _user(session, row)


def _site_id(session: Session, site: str) -> int:
    site_id = session.scalar(select(SiteRow.id).where(SiteRow.code == site))
    if site_id is None:
        raise NotFoundError("site", site)
    return site_id


def add_site_membership(session: Session, user: int | str, site: str) -> UserRecord:
    """Let a user see a site's patients."""
    row = _user_row(session, user)
    values = {"user_id": row.id, "site_id": _site_id(session, site)}
    insert_ignoring(session, SiteMembershipRow.__table__, ("user_id", "site_id"), [values], returning=False)
    return _user(session, row)


def remove_site_membership(session: Session, user: int | str, site: str) -> UserRecord:
    """Stop a user seeing a site's patients."""
    row = _user_row(session, user)
    site_id = _site_id(session, site)
    session.execute(
        delete(SiteMembershipRow).where(
            SiteMembershipRow.user_id == row.id, SiteMembershipRow.site_id == site_id
        )
    )
    return _user(session, row)


def _token(row: ApiTokenRow) -> TokenRecord:
    return TokenRecord(
        row.id, row.user_id, row.name, row.prefix, row.created_at, row.expires_at, row.revoked_at
    )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_token(
    session: Session,
    user: int | str,
    name: str,
    *,
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> tuple[TokenRecord, str]:
    """Create an API token for a user; returns its record and the secret (shown only this once)."""
    row_user = _user_row(session, user)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiTokenRow(
        user_id=row_user.id, name=name, prefix=secret[:12], token_sha256=_digest(secret), created_at=now_or(now),
        expires_at=aware(expires_at, "expires_at") if expires_at else None, revoked_at=None,
    )  # fmt: skip
    session.add(row)
    session.flush()
    return _token(row), secret


def verify_api_token(session: Session, secret: str, *, now: datetime | None = None) -> UserRecord | None:
    """The active user whose unexpired, unrevoked token ``secret`` is, else ``None``."""
    query = select(ApiTokenRow, UserRow).join(UserRow).where(ApiTokenRow.token_sha256 == _digest(secret))
    found = session.execute(query).first()
    if found is None:
        return None
    token, user = found
    stamp = now_or(now)
    if (
        token.revoked_at is not None
        or (token.expires_at is not None and token.expires_at <= stamp)
        or not user.active
    ):
        return None
    return _user(session, user)


def revoke_api_token(session: Session, token_id: int, *, now: datetime | None = None) -> TokenRecord:
    """Revoke a token (revoking twice keeps the first time)."""
    row = session.get(ApiTokenRow, token_id)
    if row is None:
        raise NotFoundError("API token", token_id)
    if row.revoked_at is None:
        row.revoked_at = now_or(now)
        session.flush()
    return _token(row)


def list_api_tokens(session: Session, user: int | str) -> tuple[TokenRecord, ...]:
    """A user's tokens (revoked and expired ones too), oldest first."""
    row = _user_row(session, user)
    rows = session.scalars(select(ApiTokenRow).where(ApiTokenRow.user_id == row.id).order_by(ApiTokenRow.id))
    return tuple(_token(r) for r in rows)
