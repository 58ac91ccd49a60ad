"""Where jobs run: Dask distributed (the service), or the calling thread (the CLI and tests).

By default :class:`DaskRunner` starts an in-process ``LocalCluster`` (threads, no extra processes: a
laptop or a 2-core VM). Give a scheduler address (``IMMUNETWIN_SCHEDULER``) to send jobs to a real
cluster; every worker then needs immunetwin installed and must reach the database, so use
PostgreSQL (a SQLite file is not shared between machines) and a report folder on a shared file system.

Running on a SLURM cluster with ``dask-jobqueue`` (install it beside immunetwin)::

    # on the login node, in a long-lived session (tmux/screen):
    from dask_jobqueue import SLURMCluster
    cluster = SLURMCluster(cores=8, memory="16GB", walltime="04:00:00", queue="compute",
                           job_script_prologue=["source /path/to/venv/bin/activate"])
    cluster.adapt(minimum_jobs=1, maximum_jobs=10)   # workers come and go with the queue
    print(cluster.scheduler_address)                 # e.g. tcp://10.1.2.3:8786

    # where the service runs:
    IMMUNETWIN_SCHEDULER=tcp://10.1.2.3:8786 \\
    IMMUNETWIN_DATABASE_URL=postgresql://immunetwin@db-host/immunetwin immunetwin serve

Each job is one Dask task that opens the database itself (workers keep one engine and one twin cache
per database URL, in a worker plugin), so the task carries only the URL, the report folder and the
job id. A cancelled job's future is cancelled too; a task already running stops at its next
progress step (see :mod:`immunetwin.service.work`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Protocol

from immunetwin.service.settings import ServiceSettings
from immunetwin.service.work import JobContext, execute_job
from immunetwin.storage import Database

__all__ = ["DaskRunner", "InlineRunner", "ManualRunner", "Runner"]


class Runner(Protocol):
    """Runs queued jobs (one method to start one, one to cancel one, one to stop)."""

    def submit(self, job_id: int) -> None: ...

    def cancel(self, job_id: int) -> None: ...

    def close(self) -> None: ...


class InlineRunner:
    """Runs each job to its end in the calling thread (the CLI: one command, one job)."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.states: dict[int, str] = {}

    def submit(self, job_id: int) -> None:
        self.states[job_id] = execute_job(self.ctx, job_id)

    def cancel(self, job_id: int) -> None:
        """Nothing to do: a job has finished before ``submit`` returns."""

    def close(self) -> None:
        """Nothing to release."""


class ManualRunner:
    """Keeps submitted job ids and runs nothing until :meth:`run` is called (tests)."""

    def __init__(self, ctx: JobContext | None = None) -> None:
        self.ctx = ctx
        self.submitted: list[int] = []
        self.cancelled: list[int] = []

    def submit(self, job_id: int) -> None:
        self.submitted.append(job_id)

    def cancel(self, job_id: int) -> None:
        self.cancelled.append(job_id)

    def run(self, job_id: int) -> str:
        """Run one submitted job now, in this thread."""
        assert self.ctx is not None, "ManualRunner(ctx) is needed to run jobs"
        return execute_job(self.ctx, job_id)

    def close(self) -> None:
        """Nothing to release."""


class DaskRunner:
    """Jobs as Dask tasks: an in-process ``LocalCluster`` or the scheduler at ``settings.scheduler_address``.

    Create it outside a running event loop (e.g. ``await anyio.to_thread.run_sync(DaskRunner, s)``).
    """

    def __init__(self, settings: ServiceSettings, database: Database) -> None:
        from distributed import Client, LocalCluster

        from immunetwin.service.dask_jobs import PLUGIN, JobResources, run_on_worker

        self._url = database.url
        self._reports = str(settings.reports_dir)
        self._cluster = None
        if settings.scheduler_address:
            self.client = Client(settings.scheduler_address, set_as_default=False)
        else:
            self._cluster = LocalCluster(
                n_workers=1, threads_per_worker=settings.job_threads, processes=False,
                dashboard_address=None, silence_logs=40,
            )  # fmt: skip
            self.client = Client(self._cluster, set_as_default=False)
        self.client.register_plugin(JobResources(), name=PLUGIN)
        self._task = run_on_worker
        self._futures: dict[int, Any] = {}
        self._lock = threading.Lock()

    def submit(self, job_id: int) -> None:
        future = self.client.submit(self._task, self._url, self._reports, job_id, key=f"immunetwin-job-{job_id}", pure=False)  # fmt: skip
        with self._lock:
            self._futures[job_id] = future
        future.add_done_callback(lambda _f, j=job_id: self._forget(j))

    def _forget(self, job_id: int) -> None:
        with self._lock:
            self._futures.pop(job_id, None)

    def cancel(self, job_id: int) -> None:
        with self._lock:
            future = self._futures.pop(job_id, None)
        if future is not None:
            future.cancel()

    def wait(self, timeout: float | None = None) -> None:
        """Wait until every submitted job's task has ended (tests); a cancelled task counts as ended."""
        from concurrent.futures import CancelledError

        with self._lock:
            futures = list(self._futures.values())
        for future in futures:
            with contextlib.suppress(CancelledError):
                future.result(timeout=timeout)

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()
