"""Storage: patients, measurements, twins, jobs, alerts, users and the audit log in SQLite or PostgreSQL.

SQLAlchemy 2 tables (:mod:`~immunetwin.storage.tables`) with Alembic migrations shipped in the package;
small repository functions that take a session in the caller's transaction and return frozen records.

```python
from immunetwin.storage import open_database, upgrade_to_head, add_site, add_patient, ingest_fhir
from immunetwin.io.clinical import observable_catalogue

db = open_database("sqlite:///twins.db")          # or "postgresql://user@host/immunetwin"
upgrade_to_head(db)
with db.transaction() as session:
    add_site(session, "charite", "Charité Berlin")
    patient = add_patient(session, "charite", "P001")
with db.transaction() as session:
    result = ingest_fhir(session, bundle, observable_catalogue("viral_immune"), site="charite")
```

Errors: :class:`NotFoundError`, :class:`ConflictError`, :class:`ChecksumError` (all
:class:`StorageError`); a refused payload is an :class:`~immunetwin.errors.IngestError`.
"""

from __future__ import annotations

from immunetwin.errors import ChecksumError, ConflictError, NotFoundError, StorageError
from immunetwin.storage.audit import list_audit, record_audit
from immunetwin.storage.database import (
    Database,
    current_revision,
    default_database_url,
    head_revision,
    normalise_url,
    open_database,
    sqlite_url,
    upgrade_to_head,
)
from immunetwin.storage.ingest import IngestResult, ingest_csv, ingest_fhir, store_measurements
from immunetwin.storage.jobs import (
    acknowledge_alert,
    add_alert,
    create_job,
    get_alert,
    get_job,
    list_alerts,
    list_jobs,
    mark_interrupted_jobs_on_startup,
    update_job,
)
from immunetwin.storage.patients import (
    add_measurements,
    add_patient,
    add_site,
    count_measurements,
    ensure_patient,
    find_patient,
    get_patient,
    get_site,
    list_measurements,
    list_patients,
    list_sites,
    set_reference_time,
)
from immunetwin.storage.records import (
    AlertRecord,
    AuditRecord,
    JobRecord,
    MeasurementRecord,
    PatientRecord,
    SiteRecord,
    TokenRecord,
    TwinRecord,
    TwinVersionRecord,
    UserRecord,
)
from immunetwin.storage.twins import (
    create_twin,
    get_twin,
    list_twins,
    load_twin_version,
    save_twin_version,
    twin_history,
)
from immunetwin.storage.users import (
    add_site_membership,
    add_user,
    authenticate,
    create_api_token,
    get_user,
    grant_role,
    list_api_tokens,
    list_roles,
    list_users,
    remove_site_membership,
    revoke_api_token,
    revoke_role,
    set_active,
    set_password,
    verify_api_token,
)

__all__ = [
    "AlertRecord",
    "AuditRecord",
    "ChecksumError",
    "ConflictError",
    "Database",
    "IngestResult",
    "JobRecord",
    "MeasurementRecord",
    "NotFoundError",
    "PatientRecord",
    "SiteRecord",
    "StorageError",
    "TokenRecord",
    "TwinRecord",
    "TwinVersionRecord",
    "UserRecord",
    "acknowledge_alert",
    "add_alert",
    "add_measurements",
    "add_patient",
    "add_site",
    "add_site_membership",
    "add_user",
    "authenticate",
    "count_measurements",
    "create_api_token",
    "create_job",
    "create_twin",
    "current_revision",
    "default_database_url",
    "ensure_patient",
    "find_patient",
    "get_alert",
    "get_job",
    "get_patient",
    "get_site",
    "get_twin",
    "get_user",
    "grant_role",
    "head_revision",
    "ingest_csv",
    "ingest_fhir",
    "list_alerts",
    "list_api_tokens",
    "list_audit",
    "list_jobs",
    "list_measurements",
    "list_patients",
    "list_roles",
    "list_sites",
    "list_twins",
    "list_users",
    "load_twin_version",
    "mark_interrupted_jobs_on_startup",
    "normalise_url",
    "open_database",
    "record_audit",
    "remove_site_membership",
    "revoke_api_token",
    "revoke_role",
    "save_twin_version",
    "set_active",
    "set_password",
    "set_reference_time",
    "sqlite_url",
    "store_measurements",
    "twin_history",
    "update_job",
    "upgrade_to_head",
    "verify_api_token",
]
