"""RQ workers for Molt's updates.

A worker runs Molt's code as it was when the worker started. Once Molt's own
checkout moved to new code (a self-update), a worker finishes the job it is
running, then re-executes itself on the new code; a worker that was idle puts
the job it just took back at the front of the queue first, so that no update
runs on old code. Re-executing (rather than exiting to be replaced) keeps the
process, so supervisors that stop everything when one process exits (honcho,
foreman) keep running, and ``molt run`` keeps counting the same worker.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import structlog
from rq import Queue, Worker
from rq.job import Job

from pipeline import queueing
from pipeline.config import Settings
from pipeline.manifests import checkout_version, running_version
from pipeline.store import connect

log = structlog.get_logger(__name__)


class MoltWorker(Worker):
    #: Set when the worker stops because the code changed (not because it was told to stop).
    replace = False

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self._code_changed():
            queue.push_job_id(job.id, at_front=True)
            queue.intermediate_queue.remove(job.id)
            log.info("the job goes back to the queue for a worker on the new code", job=job.id)
            return
        super().execute_job(job, queue)
        self._code_changed()

    def _code_changed(self) -> bool:
        if checkout_version() == running_version() or self._stop_requested:
            return False
        log.info("code changed: this worker starts again on it", version=checkout_version())
        self.replace = True
        self._stop_requested = True
        return True

    def request_stop(self, signum: Any, frame: Any) -> None:
        self.replace = False  # asked to stop: stop
        super().request_stop(signum, frame)


def run_worker(settings: Settings, *, burst: bool = False) -> None:
    running_version()
    conn = connect(settings, decode=False)
    worker = MoltWorker([Queue(queueing.QUEUE, connection=conn)], connection=conn)
    worker.work(burst=burst, logging_level=settings.log_level.upper(), with_scheduler=False)
    if worker.replace and not burst:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, sys.orig_argv)


def count_workers(settings: Settings) -> int:
    """Workers currently registered on Molt's queue."""
    conn = connect(settings, decode=False)
    return len(Worker.all(queue=Queue(queueing.QUEUE, connection=conn)))
