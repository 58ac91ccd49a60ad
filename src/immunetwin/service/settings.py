"""Service settings, built by a factory from the environment (no module-level settings object).

```python
settings = settings_from_environ(os.environ)      # pure: reads the mapping, creates nothing
settings.database_url, settings.home, settings.token_lifetime
```

=============================== ===================================================================
variable                        meaning (default)
=============================== ===================================================================
``IMMUNETWIN_HOME``             data folder: the SQLite database, reports (the user's data folder,
                                e.g. ``~/.local/share/immunetwin``)
``IMMUNETWIN_DATABASE_URL``     SQLAlchemy URL, e.g. ``postgresql://user@host/immunetwin``
                                (``$IMMUNETWIN_HOME/immunetwin.db``)
``IMMUNETWIN_TOKEN_LIFETIME``   seconds a log-in token lasts (28800: 8 hours)
``IMMUNETWIN_SCHEDULER``        address of a Dask scheduler, e.g. ``tcp://10.0.0.5:8786``
                                (none: an in-process ``LocalCluster``)
``IMMUNETWIN_JOB_THREADS``      threads of the in-process cluster (2)
``IMMUNETWIN_TWIN_DRAWS``       particles of a new twin (1000)
=============================== ===================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from immunetwin.errors import InputError
from immunetwin.storage import default_database_url

__all__ = ["ServiceSettings", "data_home", "settings_from_environ"]


@dataclass(frozen=True)
class ServiceSettings:
    """Everything the service needs to know about its deployment.

    Attributes:
        home: the data folder (the SQLite database and job outputs such as reports live here).
        database_url: where the database is.
        token_lifetime: how long a log-in token is valid.
        scheduler_address: a Dask scheduler to send jobs to; ``None`` starts an in-process cluster.
        job_threads: worker threads of the in-process cluster.
        twin_draws: particles of a new twin (a request may ask for fewer).
        max_body_bytes: the largest request body the API accepts.
    """

    home: Path
    database_url: str
    token_lifetime: timedelta = timedelta(hours=8)
    scheduler_address: str | None = None
    job_threads: int = 2
    twin_draws: int = 1000
    max_body_bytes: int = 20 * 1024 * 1024

    @property
    def reports_dir(self) -> Path:
        """Where report jobs write their HTML."""
        return self.home / "reports"


def data_home(environ: Mapping[str, str]) -> Path:
    """``IMMUNETWIN_HOME``, else the user's data folder for immunetwin (not created here)."""
    home = environ.get("IMMUNETWIN_HOME", "").strip()
    if home:
        return Path(home).expanduser().resolve()
    import platformdirs

    return platformdirs.user_data_path("immunetwin", appauthor=False)


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"{name}={text!r} is not a whole number") from None
    if value < 1:
        raise InputError(f"{name}={value} must be at least 1")
    return value


def settings_from_environ(environ: Mapping[str, str]) -> ServiceSettings:
    """Settings from environment variables (see the module docstring); nothing is created."""
    return ServiceSettings(
        home=data_home(environ),
        database_url=default_database_url(environ),
        token_lifetime=timedelta(seconds=_positive_int(environ, "IMMUNETWIN_TOKEN_LIFETIME", 8 * 3600)),
        scheduler_address=environ.get("IMMUNETWIN_SCHEDULER", "").strip() or None,
        job_threads=_positive_int(environ, "IMMUNETWIN_JOB_THREADS", 2),
        twin_draws=_positive_int(environ, "IMMUNETWIN_TWIN_DRAWS", 1000),
    )
