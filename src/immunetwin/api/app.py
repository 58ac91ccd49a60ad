"""The FastAPI app factory: ``create_app(settings)``; OpenAPI at ``/openapi.json``, resources under ``/api``.

```python
app = create_app(settings_from_environ(os.environ))     # serve with uvicorn
```

At start-up (the lifespan) the app opens the database (migrating it when asked), marks every job a
previous server left unfinished as ``interrupted`` with the reason, and starts the job runner (an
in-process Dask ``LocalCluster`` unless ``settings.scheduler_address`` names a scheduler). Tests may
pass their own database and runner.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

import immunetwin
from immunetwin.api.errors import install_error_handlers
from immunetwin.api.routes import auth, jobs, patients, templates, twins
from immunetwin.api.state import ServiceState
from immunetwin.service import DaskRunner, Runner, ServiceSettings, TwinCache, mark_interrupted
from immunetwin.storage import Database, open_database, upgrade_to_head

__all__ = ["app_from_environ", "create_app"]

_log = logging.getLogger(__name__)


def _open(settings: ServiceSettings, database: Database | None, migrate: bool) -> Database:
    db = database if database is not None else open_database(settings.database_url)
    if migrate:
        upgrade_to_head(db)
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    interrupted = mark_interrupted(db)
    if interrupted:
        _log.warning(
            "marked %d unfinished jobs interrupted: %s", len(interrupted), [j.id for j in interrupted]
        )
    return db


def create_app(
    settings: ServiceSettings,
    *,
    database: Database | None = None,
    runner: Runner | None = None,
    migrate: bool = False,
    dashboard: bool = True,
) -> FastAPI:
    """The immunetwin REST API (and dashboard) for ``settings``.

    Args:
        settings: where the database is, token lifetime, Dask scheduler (see
            :func:`~immunetwin.service.settings_from_environ`).
        database: an open database to use (default: open ``settings.database_url``; closed at shutdown).
        runner: the job runner (default: a :class:`~immunetwin.service.DaskRunner`, closed at shutdown).
        migrate: upgrade the schema to the newest revision at start-up.
        dashboard: serve the web dashboard at ``/`` too.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = await run_in_threadpool(_open, settings, database, migrate)
        jobs_runner = runner if runner is not None else await run_in_threadpool(DaskRunner, settings, db)
        app.state.service = ServiceState(settings, db, jobs_runner, TwinCache())
        try:
            yield
        finally:
            if runner is None:
                await run_in_threadpool(jobs_runner.close)
            if database is None:
                db.close()

    app = FastAPI(
        title="immunetwin",
        version=immunetwin.__version__,
        description="Immune digital twins as a service: patients, measurements (FHIR R4, CSV), twins, "
        "forecasts, decisions, reports, jobs and alerts. Log in at /api/token (OAuth2 password flow).",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for module in (auth, templates, patients, twins, jobs):
        app.include_router(module.router, prefix="/api")

    @app.get("/api/health", tags=["health"])
    def health() -> dict[str, str]:
        """Liveness: no authentication, no database access."""
        return {"status": "ok", "version": immunetwin.__version__}

    if dashboard:
        from immunetwin.web.dashboard import mount_dashboard

        mount_dashboard(app)
    return app


def app_from_environ() -> FastAPI:
    """The app of the environment's settings, migrating the database at start-up (``uvicorn --factory``)::

    uvicorn --factory immunetwin.api.app:app_from_environ --host 127.0.0.1 --port 8000
    """
    import os

    from immunetwin.runtime import compile_small_loops_whole
    from immunetwin.service import settings_from_environ

    compile_small_loops_whole()  # a server process: solver loops compiled whole, as the CLI does
    return create_app(settings_from_environ(os.environ), migrate=True)
