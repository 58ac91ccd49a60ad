"""The twin service: the functions the CLI and the REST API both call.

Each function takes the :class:`~immunetwin.storage.Database`, the acting :class:`Principal` and its
arguments; it runs in one transaction with its authorisation check and an audit entry for every read
or write of patient data. Long work (personalise, assimilate, report) is queued as a job and run by a
:class:`Runner`: :class:`DaskRunner` (in-process ``LocalCluster`` or a scheduler address) for the
service, :class:`InlineRunner` for the command line.

```python
settings = settings_from_environ(os.environ)
db = open_database(settings.database_url); upgrade_to_head(db)
me = log_in(db, "ada", "secret-password", lifetime=settings.token_lifetime)
principal = principal_from_token(db, me.secret)
patient = add_patient(db, principal, "charite", "P001", reference_time=onset)
ingest(db, principal, csv_text, kind="csv", site="charite", template="viral_tiv")
twin, job = start_twin(db, principal, runner, settings, cache, patient.id, "viral_tiv")
```
"""

from immunetwin.service.auth import (
    PERMISSIONS,
    IssuedToken,
    Principal,
    add_site,
    add_user,
    check_patient,
    create_token,
    list_sites,
    list_users,
    log_in,
    principal_from_token,
    require,
    system_principal,
)
from immunetwin.service.errors import AuthenticationError, PermissionDeniedError, ServiceError
from immunetwin.service.jobs import (
    acknowledge_alert,
    cancel_job,
    get_alert,
    get_job,
    job_report_path,
    list_alerts,
    list_jobs,
    mark_interrupted,
)
from immunetwin.service.patients import (
    add_patient,
    get_patient,
    ingest,
    list_measurements,
    list_patients,
    set_reference_time,
)
from immunetwin.service.runners import DaskRunner, InlineRunner, ManualRunner, Runner
from immunetwin.service.settings import ServiceSettings, data_home, settings_from_environ
from immunetwin.service.twins import (
    TwinView,
    decide_twin,
    forecast_twin,
    get_twin,
    list_twins,
    load_twin_view,
    start_assimilate,
    start_report,
    start_twin,
    start_updates,
    twin_history,
)
from immunetwin.service.twinstore import TwinCache, twin_from_bytes, twin_to_bytes
from immunetwin.service.work import JobContext, execute_job

__all__ = [
    "PERMISSIONS",
    "AuthenticationError",
    "DaskRunner",
    "InlineRunner",
    "IssuedToken",
    "JobContext",
    "ManualRunner",
    "PermissionDeniedError",
    "Principal",
    "Runner",
    "ServiceError",
    "ServiceSettings",
    "TwinCache",
    "TwinView",
    "acknowledge_alert",
    "add_patient",
    "add_site",
    "add_user",
    "cancel_job",
    "check_patient",
    "create_token",
    "data_home",
    "decide_twin",
    "execute_job",
    "forecast_twin",
    "get_alert",
    "get_job",
    "get_patient",
    "get_twin",
    "ingest",
    "job_report_path",
    "list_alerts",
    "list_jobs",
    "list_measurements",
    "list_patients",
    "list_sites",
    "list_twins",
    "list_users",
    "load_twin_view",
    "log_in",
    "mark_interrupted",
    "principal_from_token",
    "require",
    "set_reference_time",
    "settings_from_environ",
    "start_assimilate",
    "start_report",
    "start_twin",
    "start_updates",
    "system_principal",
    "twin_from_bytes",
    "twin_history",
    "twin_to_bytes",
]
