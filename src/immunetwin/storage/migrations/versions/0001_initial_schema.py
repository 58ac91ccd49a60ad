"""Initial schema: sites, patients, measurements, twins and versions, jobs, alerts, users, roles, tokens, audit log.

Constraint names come from the naming convention of ``immunetwin.storage.tables.Base.metadata``
(Alembic applies the target metadata's convention). The audit log is append-only in the database itself: a trigger refuses UPDATE and DELETE (and TRUNCATE
on PostgreSQL). The three roles are created here.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ROLES = ("admin", "clinician", "modeller")

_PG_APPEND_ONLY = """
CREATE FUNCTION immunetwin_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION immunetwin_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION immunetwin_audit_append_only();
"""
_SQLITE_APPEND_ONLY = (
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log"
    " BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused'); END",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log"
    " BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused'); END",
)


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer(), primary_key=True)


def _when(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _text(name: str, length: int, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(length=length), nullable=nullable)


def _fk(
    name: str, table: str, ondelete: str, *, nullable: bool = False, primary_key: bool = False
) -> sa.Column:
    target = sa.ForeignKey(f"{table}.id", ondelete=ondelete)
    return sa.Column(name, sa.Integer(), target, nullable=nullable, primary_key=primary_key)


def _index(table: str, *columns: str, name: str | None = None) -> None:
    op.create_index(name or f"ix_{table}_{columns[0]}", table, list(columns))


def upgrade() -> None:
    """Create the tables, the append-only trigger of the audit log, and the roles."""
    op.create_table(
        "audit_log", _id(), _when("at"), _text("actor", 64), _text("action", 64), _text("resource", 64),
        sa.Column("patient_id", sa.Integer(), nullable=True), _text("patient", 64, nullable=True),
        _text("site", 32, nullable=True), sa.Column("detail", sa.Text(), nullable=False),
    )  # fmt: skip
    _index("audit_log", "at")
    _index("audit_log", "patient_id", "at", name="ix_audit_log_patient_at")
    op.create_table("roles", _id(), _text("name", 32), sa.UniqueConstraint("name"))
    op.create_table(
        "sites", _id(), _text("code", 32), _text("name", 200), _when("created_at"),
        sa.UniqueConstraint("code"),
    )  # fmt: skip
    op.create_table(
        "users", _id(), _text("username", 64), _text("full_name", 200), _text("password_hash", 255),
        sa.Column("active", sa.Boolean(), nullable=False), _when("created_at"),
        sa.UniqueConstraint("username"),
    )  # fmt: skip
    op.create_table(
        "api_tokens", _id(), _fk("user_id", "users", "CASCADE"), _text("name", 100), _text("prefix", 16),
        _text("token_sha256", 64), _when("created_at"), _when("expires_at", nullable=True),
        _when("revoked_at", nullable=True),
        sa.UniqueConstraint("token_sha256"),
    )  # fmt: skip
    _index("api_tokens", "user_id")
    op.create_table(
        "patients", _id(), _fk("site_id", "sites", "RESTRICT"), _text("pseudonym", 64),
        _when("reference_time", nullable=True), _when("created_at"),
        sa.UniqueConstraint("site_id", "pseudonym"),
    )  # fmt: skip
    _index("patients", "site_id")
    op.create_table(
        "site_memberships", _fk("user_id", "users", "CASCADE", primary_key=True),
        _fk("site_id", "sites", "CASCADE", primary_key=True),
    )  # fmt: skip
    op.create_table(
        "user_roles", _fk("user_id", "users", "CASCADE", primary_key=True),
        _fk("role_id", "roles", "CASCADE", primary_key=True),
    )  # fmt: skip
    op.create_table(
        "jobs", _id(), _text("kind", 64), _text("state", 16), sa.Column("progress", sa.Float(), nullable=False),
        _text("message", 500), sa.Column("error", sa.Text(), nullable=True), _text("result_ref", 500, nullable=True),
        sa.Column("params", sa.JSON(), nullable=False), _fk("patient_id", "patients", "SET NULL", nullable=True),
        _text("created_by", 64, nullable=True), _when("created_at"), _when("started_at", nullable=True),
        _when("finished_at", nullable=True), _when("updated_at"),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'done', 'failed', 'cancelled', 'interrupted')", name="state"
        ),
        sa.CheckConstraint("progress >= 0 AND progress <= 1", name="progress"),
    )  # fmt: skip
    _index("jobs", "state")
    op.create_table(
        "measurements", _id(), _fk("patient_id", "patients", "CASCADE"), _text("loinc", 16, nullable=True),
        _text("observable", 64, nullable=True), sa.Column("value", sa.Float(), nullable=False), _text("unit", 64),
        sa.Column("observable_value", sa.Float(), nullable=True), _text("observable_unit", 64, nullable=True),
        sa.Column("censored", sa.Boolean(), nullable=False), _when("time"),
        sa.Column("day", sa.Float(), nullable=True), _text("source", 32), _text("external_id", 255, nullable=True),
        _text("payload_sha256", 64), _text("key", 64), _when("ingested_at"),
        sa.UniqueConstraint("patient_id", "key"),
    )  # fmt: skip
    _index("measurements", "patient_id", "time", name="ix_measurements_patient_time")
    op.create_table(
        "twins", _id(), _fk("patient_id", "patients", "CASCADE"), _text("template", 64), _text("name", 100),
        _when("created_at"), _text("created_by", 64, nullable=True),
        sa.UniqueConstraint("patient_id", "template", "name"),
    )  # fmt: skip
    _index("twins", "patient_id")
    op.create_table(
        "twin_versions", _id(), _fk("twin_id", "twins", "CASCADE"), sa.Column("version", sa.Integer(), nullable=False),
        _text("reason", 32), _when("reference_time", nullable=True), _text("provenance_sha256", 64),
        sa.Column("blob", sa.LargeBinary(), nullable=False), _text("blob_sha256", 64),
        sa.Column("size", sa.Integer(), nullable=False), _when("created_at"), _text("created_by", 64, nullable=True),
        sa.UniqueConstraint("twin_id", "version"),
    )  # fmt: skip
    op.create_table(
        "alerts", _id(), _fk("patient_id", "patients", "CASCADE"),
        _fk("twin_version_id", "twin_versions", "SET NULL", nullable=True), _text("observable", 64, nullable=True),
        _text("severity", 16), sa.Column("message", sa.Text(), nullable=False), _when("created_at"),
        _when("acknowledged_at", nullable=True), _text("acknowledged_by", 64, nullable=True),
        sa.CheckConstraint("severity IN ('info', 'warning', 'critical')", name="severity"),
    )  # fmt: skip
    _index("alerts", "patient_id")
    _append_only()
    roles = sa.table("roles", sa.column("name", sa.String))
    op.bulk_insert(roles, [{"name": name} for name in ROLES])


def _append_only() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_APPEND_ONLY)
    elif op.get_bind().dialect.name == "sqlite":
        for statement in _SQLITE_APPEND_ONLY:
            op.execute(statement)


def downgrade() -> None:
    """Drop everything (the audit log too: only for throw-away databases)."""
    for table in (
        "alerts", "twin_versions", "twins", "measurements", "jobs", "user_roles", "site_memberships",
        "patients", "api_tokens", "users", "sites", "roles", "audit_log",
    ):  # fmt: skip
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS immunetwin_audit_append_only()")
