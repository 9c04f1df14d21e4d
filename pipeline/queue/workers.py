"""The registry of RQ workers: who serves which target, and whether the current job's
worker was told to stop. A leaf the gates, the job and the housekeeping read; the worker
process itself is pipeline/update/worker.py.

In a fleet a worker takes the queues of the targets it is given (``molt worker --target
api``, or ``--all``), on the host that holds their checkouts. Every worker registers in
``molt:workers`` (hash: RQ worker name → JSON {host, pid, targets, seen}) and beats there
every ``BEAT_SECONDS``; it counts as running until MOLT_WORKER_STALE after its last beat.
Each target's ``seen`` key (pipeline/keyspace.py) keeps when a worker of it last beat, so
that a target nobody serves is told apart from a busy one. A
worker told to stop leaves the registry at once, even while it finishes its job: it takes
no more, so a target it alone served is not served any more (``serving``). A job left on
a target's queue with no worker to take it ends its request after MOLT_WORKER_WAIT
(pipeline/update/recovery.py ``end_unserved``, from the bot's housekeeping).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
import structlog
from rq import Queue, Worker, get_current_job
from rq.scheduler import RQScheduler

from pipeline import keyspace
from pipeline.config import Settings
from pipeline.keyspace import TargetKeys
from pipeline.queue import queueing
from pipeline.requests.decisions import ALLOWED, Decision
from pipeline.store import connect

log = structlog.get_logger(__name__)
#: How often a worker says it is alive (MOLT_WORKER_STALE, at least twice this, says how long
#: after its last beat it no longer counts).
BEAT_SECONDS = 2.0


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
        self.settings = settings
        self._scheduler: RQScheduler | None = None
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
        for name, raw in self.conn.hgetall(keyspace.WORKERS).items():
            entry = json.loads(raw)
            if (entry.get("host"), entry.get("pid")) == (self.host, os.getpid()):
                self.conn.hdel(keyspace.WORKERS, name)

    def once(self) -> None:
        now = time.time()
        entry = {"host": self.host, "pid": os.getpid(), "targets": self.target_ids, "seen": now}
        with self._entry:
            if self._left:
                return
            with self.conn.pipeline() as pipe:
                pipe.hset(keyspace.WORKERS, self.name, json.dumps(entry))
                for target_id in self.target_ids:
                    pipe.set(TargetKeys(target_id).seen, f"{now:.3f}")
                pipe.execute()

    def leave(self) -> None:
        """Leave the registry now and beat no more (the worker was told to stop); its
        targets keep when it was last seen."""
        with self._entry:
            self._left = True
            with contextlib.suppress(redis.RedisError):  # gone anyway once it stops beating
                self.conn.hdel(keyspace.WORKERS, self.name)

    def _run(self) -> None:
        # The first round at once (``start`` just beat): a worker that starts where one died
        # recovers what it left now, not a beat later.
        self._round(beat=False)
        while not self._stopped.wait(BEAT_SECONDS):
            self._round()

    def _round(self, beat: bool = True) -> None:
        try:
            if beat:
                self.once()
            if self.tend is not None:
                for view in self.served:
                    self.tend(view)
        except Exception:  # Redis away for a moment (a failover): beat again next time
            log.warning("worker beat failed", exc_info=True)
        try:  # after the recovery, which a put-off job that cannot be read must not stop
            self.enqueue_due()
        except Exception:
            log.warning("put-off jobs not enqueued", exc_info=True)

    def enqueue_due(self) -> None:
        """Jobs put off with RQ's ``enqueue_in`` (a fix's hold check) join their queue once
        due: the work RQ's scheduler does, without the process it forks. One worker of a
        queue holds its scheduler lock, refreshed at each beat, until it stops (or for a
        minute after it died)."""
        if self._scheduler is None:
            raw = connect(self.settings, decode=False)
            names = [queueing.queue_name(view) for view in self.served]
            self._scheduler = RQScheduler(names, connection=raw)
        if self._scheduler.acquire_locks():
            self._scheduler.enqueue_scheduled_jobs()

    def stop(self, *, leave: bool = True) -> None:
        self._stopped.set()
        if self._thread.ident is not None:  # a beat never started has no thread to end
            self._thread.join(timeout=5)
        if self._scheduler is not None:
            with contextlib.suppress(redis.RedisError):
                self._scheduler.release_locks()
        try:
            if leave:
                self.leave()
        finally:
            self.conn.close()


def registered(settings: Settings, conn: Any) -> list[dict[str, Any]]:
    """The workers that beat lately, each with its name, seconds since it was seen, and
    whether it counts as running (``live``: seen within MOLT_WORKER_STALE)."""
    now = time.time()
    found = []
    for name, raw in sorted(conn.hgetall(keyspace.WORKERS).items()):
        entry = json.loads(raw)
        ago = max(0.0, now - float(entry.get("seen", 0)))
        if ago > settings.worker_stale * 30:  # long gone (killed): no longer listed
            conn.hdel(keyspace.WORKERS, name)
            continue
        found.append(
            entry | {"name": _text(name), "ago": ago, "live": ago <= settings.worker_stale}
        )
    return found


def last_seen(settings: Settings, conn: Any) -> float | None:
    """Seconds since a worker of the target last beat; None if none ever did."""
    raw = conn.get(TargetKeys(settings.target_id).seen)
    return None if raw is None else max(0.0, time.time() - float(raw))


def live(settings: Settings, conn: Any) -> list[dict[str, Any]]:
    """The workers of the target that beat lately and were not told to stop."""
    return [
        w for w in registered(settings, conn) if w["live"] and settings.target_id in w["targets"]
    ]


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
