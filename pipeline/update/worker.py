"""RQ workers for Molt's updates.

A worker runs Molt's code as it was when the worker started. Once Molt's own
checkout moved to new code (a self-update), a worker finishes the job it is
running, then re-executes itself on the new code; a worker that was idle puts
the job it just took back at the front of the queue first, so that no update
runs on old code. Re-executing (rather than exiting to be replaced) keeps the
process, so supervisors that stop everything when one process exits (honcho,
foreman) keep running, and ``molt run`` keeps counting the same worker.

It registers in the worker registry (pipeline/queue/workers.py) and beats there while it
runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

import redis
import structlog
from rq import Queue, Worker
from rq.job import Job

from pipeline import metrics
from pipeline.config import Settings
from pipeline.queue import queueing
from pipeline.queue.workers import Beat
from pipeline.releases.manifests import checkout_version, running_version
from pipeline.store import connect

# The job functions, loaded before RQ forks a work horse per job, so that no horse spends
# its first tenth of a second importing them.
from pipeline.update import jobs  # noqa: F401

log = structlog.get_logger(__name__)


class MoltWorker(Worker):
    #: Set when the worker stops because the code changed (not because it was told to stop).
    replace = False
    #: This worker's entry in the registry, left as soon as the worker is told to stop.
    beat: Beat | None = None

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self._code_changed():
            queue.push_job_id(job.id, at_front=True)
            queue.intermediate_queue.remove(job.id)
            log.info("the job goes back to the queue for a worker on the new code", job=job.id)
            return
        super().execute_job(job, queue)
        metrics.tidy(at_least=20)  # work horses that are gone, folded into the archive
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
        if self.beat is not None:  # it takes no job from now on: nobody may wait for it
            self.beat.leave()
        super().request_stop(signum, frame)

    def unsubscribe(self) -> None:
        """RQ unsubscribes before it stops its pubsub thread: a thread that sees the
        unsubscription first waits a minute for a new one, and redis-py's ``stop()`` waits
        for that thread, so a warm shutdown hung until the second SIGTERM. The thread is
        told to stop first; the unsubscription's answer then ends it."""
        thread, pubsub = self.pubsub_thread, self.pubsub
        if thread is None or pubsub is None:
            return
        log.debug("unsubscribing from the worker's channel", channel=self.pubsub_channel_name)
        try:
            thread.stop(timeout=0)  # redis-py 8: without a timeout, stop() waits for the thread
        except TypeError:
            thread.stop()  # older redis-py: stop() only tells it to stop
        with contextlib.suppress(redis.RedisError):
            pubsub.unsubscribe()
        thread.join(timeout=1)
        pubsub.close()
        self.pubsub_thread = None


def run_worker(
    settings: Settings,
    *,
    burst: bool = False,
    targets: list[str] | None = None,
    tend: Callable[[Settings], object] | None = None,
) -> None:
    """Work the queues of ``targets`` (default: every target) until told to stop; ``tend``
    runs for each of them at every beat (the recovery of an update a dead worker left)."""
    running_version()
    conn = connect(settings, decode=False)
    served = [settings.for_target(name) for name in targets or settings.target_names()]
    queues = [Queue(queueing.queue_name(view), connection=conn) for view in served]
    worker = MoltWorker(queues, connection=conn)
    beat = Beat(settings, worker.name, served, tend)
    worker.beat = beat
    beat.start()
    try:
        worker.work(burst=burst, logging_level=settings.log_level.upper(), with_scheduler=False)
    finally:
        # A worker re-executing onto new code keeps its entry (and its pid): it serves on.
        beat.stop(leave=not (worker.replace and not burst))
    if worker.replace and not burst:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, sys.orig_argv)
