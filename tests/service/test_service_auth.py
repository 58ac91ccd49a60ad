"""Log-in, tokens, roles and sites in the service layer (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from immunetwin import service, storage
from immunetwin.service import AuthenticationError, PermissionDeniedError
from immunetwin.storage import Database
from service.fixtures import PASSWORD, World


def test_log_in_issues_an_expiring_token_and_audits_both_outcomes(db: Database, world: World) -> None:
    issued = service.log_in(db, "clin_north", PASSWORD, lifetime=timedelta(hours=1))
    assert service.principal_from_token(db, issued.secret).user.username == "clin_north"
    with pytest.raises(AuthenticationError):
        service.log_in(db, "clin_north", "wrong-password", lifetime=timedelta(hours=1))
    with pytest.raises(AuthenticationError):
        service.log_in(db, "ghost", PASSWORD, lifetime=timedelta(hours=1))
    with db.transaction() as session:
        actions = [(a.actor, a.action) for a in storage.list_audit(session)]
    assert ("clin_north", "login") in actions
    assert ("clin_north", "login-failed") in actions and ("ghost", "login-failed") in actions


def test_expired_and_unknown_tokens_are_refused(db: Database, world: World) -> None:
    expired = service.log_in(db, "clin_north", PASSWORD, lifetime=timedelta(seconds=-1))
    for secret in (expired.secret, "", "itw_not-a-token"):
        with pytest.raises(AuthenticationError):
            service.principal_from_token(db, secret)


def test_api_tokens_act_as_their_user(db: Database, world: World) -> None:
    issued = service.create_token(db, world.principals["clin_north"], "lab-feed", lifetime=None)
    assert issued.expires_at is None and issued.secret.startswith("itw_")
    assert service.principal_from_token(db, issued.secret).user.username == "clin_north"


def test_only_admins_manage_users_and_sites(db: Database, world: World) -> None:
    admin, clinician = world.principals["admin"], world.principals["clin_north"]
    with pytest.raises(PermissionDeniedError):
        service.add_user(db, clinician, "eve", PASSWORD, roles=["admin"])
    with pytest.raises(PermissionDeniedError):
        service.add_site(db, clinician, "east")
    user = service.add_user(db, admin, "eve", PASSWORD, roles=["modeller"], sites=["south"])
    assert user.roles == ("modeller",) and user.sites == ("south",)
    assert [s.code for s in service.list_sites(db, clinician)] == ["north"]
    assert [s.code for s in service.list_sites(db, admin)] == ["north", "south"]


def test_permissions_follow_roles(world: World) -> None:
    p = world.principals
    assert p["admin"].may("users:manage") and not p["clin_north"].may("users:manage")
    assert p["clin_north"].may("measurements:write") and not p["mod_north"].may("measurements:write")
    assert p["mod_north"].may("twins:write") and not p["nobody_north"].may("patients:read")
    assert p["admin"].sees_site("south") and not p["clin_north"].sees_site("south")
