"""RQ workers for Molt's updates.

A worker finishes its job and then exits if Molt's own checkout moved to new
code meanwhile (a self-update), so that whoever supervises it starts a fresh
one on the new code.
"""

from __future__ import annotations

import os
from contextlib import suppress

import structlog
from rq import Queue, Worker

from pipeline import queueing
from pipeline.config import Settings
from pipeline.releases import checkout_version, running_version
from pipeline.store import connect

log = structlog.get_logger(__name__)
WORKER_NICENESS = 5


class MoltWorker(Worker):
    def execute_job(self, job, queue):
        super().execute_job(job, queue)
        if checkout_version() != running_version():
            log.info("code changed: this worker stops to be replaced", version=checkout_version())
            self._stop_requested = True


def run_worker(settings: Settings, *, burst: bool = False) -> None:
    running_version()
    # Updates run test suites: let acknowledgements and chat go first on a busy machine.
    with suppress(OSError):
        os.nice(WORKER_NICENESS)
    conn = connect(settings, decode=False)
    worker = MoltWorker([Queue(queueing.QUEUE, connection=conn)], connection=conn)
    worker.work(burst=burst, logging_level=settings.log_level.upper(), with_scheduler=False)


def count_workers(settings: Settings) -> int:
    """Workers currently registered on Molt's queue."""
    conn = connect(settings, decode=False)
    return len(Worker.all(queue=Queue(queueing.QUEUE, connection=conn)))
