"""Who is asking, and what they may do: log-in, tokens, roles and sites.

Roles (``admin``, ``clinician``, ``modeller``) grant permissions (:data:`PERMISSIONS`); a user sees the
patients of their own sites only, an admin sees every site. Log-in tokens are opaque random secrets
(``itw_...``) stored as a SHA-256 by :mod:`immunetwin.storage` with an expiry of
``settings.token_lifetime``; API tokens for machines are the same kind of secret with their own expiry
(or none), made by :func:`create_token`. Every log-in is written to the audit log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from immunetwin import storage
from immunetwin.errors import InputError
from immunetwin.service.errors import AuthenticationError, PermissionDeniedError
from immunetwin.storage import Database, PatientRecord, SiteRecord, TokenRecord, UserRecord

__all__ = [
    "PERMISSIONS",
    "IssuedToken",
    "Principal",
    "add_site",
    "add_user",
    "check_patient",
    "create_token",
    "list_sites",
    "list_users",
    "log_in",
    "principal_from_token",
    "require",
    "system_principal",
]

#: Which roles grant which permission.
PERMISSIONS: dict[str, frozenset[str]] = {
    "patients:read": frozenset({"admin", "clinician", "modeller"}),
    "patients:write": frozenset({"admin", "clinician"}),
    "measurements:write": frozenset({"admin", "clinician"}),
    "twins:read": frozenset({"admin", "clinician", "modeller"}),
    "twins:write": frozenset({"admin", "clinician", "modeller"}),
    "alerts:acknowledge": frozenset({"admin", "clinician"}),
    "users:manage": frozenset({"admin"}),
}


@dataclass(frozen=True)
class Principal:
    """The acting user: their record, and the name written to the audit log."""

    user: UserRecord
    actor: str

    @property
    def is_admin(self) -> bool:
        """Admins have every permission and see every site."""
        return "admin" in self.user.roles

    def may(self, permission: str) -> bool:
        """Whether one of the user's roles grants ``permission``."""
        return bool(PERMISSIONS[permission] & set(self.user.roles))

    def sees_site(self, site: str) -> bool:
        """Whether the user may see the patients of ``site``."""
        return self.is_admin or site in self.user.sites

    @property
    def visible_sites(self) -> tuple[str, ...] | None:
        """The user's sites, or ``None`` for an admin (every site)."""
        return None if self.is_admin else self.user.sites


@dataclass(frozen=True)
class IssuedToken:
    """A token handed out once: the secret, when it expires, and its owner."""

    secret: str
    expires_at: datetime | None
    user: UserRecord
    record: TokenRecord


def system_principal() -> Principal:
    """The local operator (CLI on the server's own files): an admin of every site, audited as ``system``."""
    now = datetime.now(UTC)
    user = UserRecord(0, "system", "local command line", True, ("admin",), (), now)
    return Principal(user, "system")


def require(principal: Principal, permission: str) -> None:
    """Raise :class:`PermissionDeniedError` unless the principal has ``permission``."""
    if not principal.may(permission):
        roles = ", ".join(principal.user.roles) or "no role"
        raise PermissionDeniedError(
            f"{principal.user.username} ({roles}) may not {permission.replace(':', ' ')}"
        )


def check_patient(principal: Principal, patient: PatientRecord, permission: str) -> None:
    """Raise :class:`PermissionDeniedError` unless the principal has ``permission`` at the patient's site."""
    require(principal, permission)
    if not principal.sees_site(patient.site):
        raise PermissionDeniedError(f"{principal.user.username} has no access to site {patient.site!r}")


def log_in(db: Database, username: str, password: str, *, lifetime: timedelta) -> IssuedToken:
    """Check a password and issue a log-in token valid for ``lifetime`` (audited, success or not).

    Raises:
        AuthenticationError: unknown user, wrong password or disabled account (one message for all).
    """
    with db.transaction() as session:
        user = storage.authenticate(session, username, password)
        if user is not None:
            expires = datetime.now(UTC) + lifetime
            record, secret = storage.create_api_token(session, user.id, "login", expires_at=expires)
            storage.record_audit(session, actor=user.username, action="login", resource="token")
            return IssuedToken(secret, expires, user, record)
    with db.transaction() as session:  # the failed attempt is recorded in its own transaction
        storage.record_audit(session, actor=username[:64] or "?", action="login-failed", resource="token")
    raise AuthenticationError("wrong username or password")


def principal_from_token(db: Database, secret: str) -> Principal:
    """The user whose valid token ``secret`` is (raises :class:`AuthenticationError`)."""
    if not secret:
        raise AuthenticationError("not logged in: send 'Authorization: Bearer <token>'")
    with db.transaction(readonly=True) as session:
        user = storage.verify_api_token(session, secret)
    if user is None:
        raise AuthenticationError("the token is unknown, expired or revoked: log in again")
    return Principal(user, user.username)


def create_token(
    db: Database, principal: Principal, name: str, *, lifetime: timedelta | None = None
) -> IssuedToken:
    """An API token of the acting user for a machine client (``lifetime`` ``None``: no expiry)."""
    if not name.strip() or len(name) > 100:
        raise InputError("a token name has 1 to 100 characters")
    expires = datetime.now(UTC) + lifetime if lifetime is not None else None
    with db.transaction() as session:
        record, secret = storage.create_api_token(session, principal.user.id, name, expires_at=expires)
        storage.record_audit(
            session, actor=principal.actor, action="create", resource="api-token", detail=name
        )
    return IssuedToken(secret, expires, principal.user, record)


def add_user(
    db: Database,
    principal: Principal,
    username: str,
    password: str,
    *,
    full_name: str = "",
    roles: Iterable[str] = (),
    sites: Iterable[str] = (),
) -> UserRecord:
    """Add a user (admins only)."""
    require(principal, "users:manage")
    with db.transaction() as session:
        user = storage.add_user(session, username, password, full_name=full_name, roles=roles, sites=sites)
        detail = f"{username}: roles {', '.join(user.roles) or '-'}; sites {', '.join(user.sites) or '-'}"
        storage.record_audit(session, actor=principal.actor, action="create", resource="user", detail=detail)
    return user


def list_users(db: Database, principal: Principal) -> tuple[UserRecord, ...]:
    """Every user (admins only)."""
    require(principal, "users:manage")
    with db.transaction(readonly=True) as session:
        return storage.list_users(session)


def add_site(db: Database, principal: Principal, code: str, name: str = "") -> SiteRecord:
    """Add a site (admins only)."""
    require(principal, "users:manage")
    with db.transaction() as session:
        site = storage.add_site(session, code, name)
        storage.record_audit(session, actor=principal.actor, action="create", resource="site", detail=code)
    return site


def list_sites(db: Database, principal: Principal) -> tuple[SiteRecord, ...]:
    """The sites the user may see."""
    with db.transaction(readonly=True) as session:
        sites = storage.list_sites(session)
    return tuple(s for s in sites if principal.sees_site(s.code))
