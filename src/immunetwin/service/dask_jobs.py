"""The Dask side of jobs: a worker plugin holding each worker's databases, and the task function.

Imported only where Dask is used (:class:`~immunetwin.service.runners.DaskRunner` and its workers).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from immunetwin.service.twinstore import TwinCache
from immunetwin.service.work import JobContext, execute_job
from immunetwin.storage import open_database

__all__ = ["PLUGIN", "JobResources", "run_on_worker"]

PLUGIN = "immunetwin-job-resources"


class JobResources(WorkerPlugin):
    """A Dask worker plugin: one open database and one twin cache per database URL on each worker."""

    name = PLUGIN

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._contexts: dict[tuple[str, str], JobContext] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, _state: dict[str, Any]) -> None:
        self.__init__()

    def setup(self, worker: Any) -> None:
        """Called by Dask when the plugin is registered on a worker."""

    def teardown(self, worker: Any) -> None:
        """Close every database this worker opened."""
        with self._lock:
            for ctx in self._contexts.values():
                ctx.db.close()
            self._contexts.clear()

    def context(self, url: str, reports_dir: str) -> JobContext:
        """The job context of ``url`` on this worker (opened on first use)."""
        with self._lock:
            key = (url, reports_dir)
            if key not in self._contexts:
                self._contexts[key] = JobContext(
                    open_database(url, pool_size=2), TwinCache(), Path(reports_dir)
                )
            return self._contexts[key]


def run_on_worker(url: str, reports_dir: str, job_id: int) -> str:
    """The Dask task of one job (module level, so workers elsewhere can import it)."""
    from distributed import get_worker

    try:
        resources = get_worker().plugins[PLUGIN]
    except (ValueError, KeyError):  # not on a worker with the plugin: open what is needed here
        resources = JobResources()
    return execute_job(resources.context(url, reports_dir), job_id)
