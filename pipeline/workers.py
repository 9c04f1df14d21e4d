"""RQ workers for Molt's updates.

A worker runs Molt's code as it was when the worker started. Once Molt's own
checkout moved to new code (a self-update), a worker finishes the job it is
running, then re-executes itself on the new code; a worker that was idle puts
the job it just took back at the front of the queue first, so that no update
runs on old code. Re-executing (rather than exiting to be replaced) keeps the
process, so supervisors that stop everything when one process exits (honcho,
foreman) keep running, and ``molt run`` keeps counting the same worker.

In a fleet a worker takes the queues of the targets it is given (``molt worker --target
api``, or ``--all``), on the host that holds their checkouts. Every worker registers in
``molt:workers`` (hash: RQ worker name → JSON {host, pid, targets, seen}) and beats there
every ``BEAT_SECONDS``; each target's ``seen`` key (pipeline/keyspace.py) keeps when a
worker of it last beat, so that a target nobody serves is told apart from a busy one. A
worker told to stop leaves the registry at once, even while it finishes its job: it takes
no more, so a target it alone served is not served any more (``serving``). A job left on
a target's queue with no worker to take it ends its request after MOLT_WORKER_WAIT
(pipeline/recovery.py ``end_unserved``, from the bot's housekeeping).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
import structlog
from rq import Queue, Worker, get_current_job
from rq.job import Job

from pipeline import metrics, queueing
from pipeline.config import Settings
from pipeline.decisions import ALLOWED, Decision
from pipeline.keyspace import TargetKeys
from pipeline.manifests import checkout_version, running_version
from pipeline.store import connect

log = structlog.get_logger(__name__)
REGISTRY = "molt:workers"
#: How often a worker says it is alive, and how long after its last beat it no longer counts.
BEAT_SECONDS = 2.0
STALE_SECONDS = 10.0


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
    # The job functions, loaded before RQ forks a work horse per job, so that no horse
    # spends its first tenth of a second importing them (by name: they import this module).
    importlib.import_module("pipeline.jobs")
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


def stopping(conn: Any) -> bool:
    """Whether the RQ worker running the current job was asked to shut down (warm: RQ
    waits for the job). A job only waiting for its turn then gives the turn up, so the
    worker stops at once; the request keeps its place in the line for the next worker."""
    job = get_current_job()
    name = job.worker_name if job is not None else None
    if not name:
        return False
    key = Worker.redis_worker_namespace_prefix + name
    try:
        return bool(conn.hexists(key, "shutdown_requested_date"))
    except redis.RedisError:
        return False


def count_workers(settings: Settings) -> int:
    """Workers currently registered on the target's queue."""
    conn = connect(settings, decode=False)
    return len(Worker.all(queue=Queue(queueing.queue_name(settings), connection=conn)))


class Beat:
    """This worker's entry in the registry, refreshed on a thread of its own (the RQ
    worker's own thread waits on its queues and its jobs)."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        served: list[Settings],
        tend: Callable[[Settings], object] | None = None,
    ) -> None:
        self.conn = connect(settings)
        self.name = name
        self.served = served
        self.target_ids = [view.target_id for view in served]
        self.tend = tend
        self.host = socket.gethostname()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="molt-worker-beat", daemon=True)
        # Beats and leaving, one at a time: no beat may register the worker again after it left.
        self._entry = threading.RLock()
        self._left = False

    def start(self) -> None:
        self._forget_former_self()
        self.once()
        self._thread.start()

    def _forget_former_self(self) -> None:
        """A worker that re-executed onto new code keeps its pid and takes a new name: the
        entry it had before is dropped as it registers again."""
        for name, raw in self.conn.hgetall(REGISTRY).items():
            entry = json.loads(raw)
            if (entry.get("host"), entry.get("pid")) == (self.host, os.getpid()):
                self.conn.hdel(REGISTRY, name)

    def once(self) -> None:
        now = time.time()
        entry = {"host": self.host, "pid": os.getpid(), "targets": self.target_ids, "seen": now}
        with self._entry:
            if self._left:
                return
            with self.conn.pipeline() as pipe:
                pipe.hset(REGISTRY, self.name, json.dumps(entry))
                for target_id in self.target_ids:
                    pipe.set(TargetKeys(target_id).seen, f"{now:.3f}")
                pipe.execute()

    def leave(self) -> None:
        """Leave the registry now and beat no more (the worker was told to stop); its
        targets keep when it was last seen."""
        with self._entry:
            self._left = True
            with contextlib.suppress(redis.RedisError):  # gone anyway once it stops beating
                self.conn.hdel(REGISTRY, self.name)

    def _run(self) -> None:
        while not self._stopped.wait(BEAT_SECONDS):
            try:
                self.once()
                if self.tend is not None:
                    for view in self.served:
                        self.tend(view)
            except Exception:  # Redis away for a moment (a failover): beat again next time
                log.warning("worker beat failed", exc_info=True)

    def stop(self, *, leave: bool = True) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        try:
            if leave:
                self.leave()
        finally:
            self.conn.close()


def registered(conn: Any) -> list[dict[str, Any]]:
    """The workers that beat lately, each with its name and seconds since it was seen."""
    now = time.time()
    found = []
    for name, raw in sorted(conn.hgetall(REGISTRY).items()):
        entry = json.loads(raw)
        ago = max(0.0, now - float(entry.get("seen", 0)))
        if ago > STALE_SECONDS * 30:  # long gone (killed): no longer listed
            conn.hdel(REGISTRY, name)
            continue
        found.append(entry | {"name": _text(name), "ago": ago, "live": ago <= STALE_SECONDS})
    return found


def last_seen(settings: Settings, conn: Any) -> float | None:
    """Seconds since a worker of the target last beat; None if none ever did."""
    raw = conn.get(TargetKeys(settings.target_id).seen)
    return None if raw is None else max(0.0, time.time() - float(raw))


def live(settings: Settings, conn: Any) -> list[dict[str, Any]]:
    """The workers of the target that beat lately and were not told to stop."""
    return [w for w in registered(conn) if w["live"] and settings.target_id in w["targets"]]


def serving(settings: Settings, conn: Any) -> Decision:
    """A fleet's target needs a live worker: without one a request would wait forever."""
    if not settings.fleet or live(settings, conn):
        return ALLOWED
    name = settings.target_name
    ago = last_seen(settings, conn)
    if ago is None:
        said = f"no worker for {name} has been seen yet"
    else:
        said = f"no worker for {name} is running (last seen {seen_at(ago)})"
    return Decision(False, f"{said}; {how_to_serve(settings)}", "workers")


def seen_at(ago: float) -> str:
    """When a worker was last seen, ``ago`` seconds back: the time of day and how long ago."""
    at = datetime.fromtimestamp(time.time() - ago, tz=UTC).strftime("%H:%M:%S UTC")
    return f"{at}, {ago:.0f} s ago" if ago < 120 else f"{at}, {ago / 60:.0f} min ago"


def how_to_serve(settings: Settings) -> str:
    name = settings.target_name
    return f"`molt worker --target {name}` on the host that holds its checkout serves it"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
