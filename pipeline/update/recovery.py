"""Finishing what a dead worker left half-done, and keeping the waiting line moving.

A job heartbeats its update lock. When a request is running but nobody holds
its lock any more (the worker was killed, or lost Redis for longer than the
lock's TTL), or its holder is a process of this machine that is gone (no need to wait for
the TTL then), the request is rolled back to its snapshot and failed with a
message, exactly as if the job had failed by itself (``recover_abandoned``,
run by the bot's housekeeping and before each update starts). A test command the dead
worker left running is killed first (pipeline/service/rollback.py).

The waiting line runs as long as a job is on the RQ queue to take its next turn
(pipeline/queue/queueing.py). A job can be lost with its worker (killed while it waited, or
timed out); ``keep_line_moving``, run by the bot's housekeeping, gives a line that waits
with the lock free and no job a job again.

In a fleet a request waits for a worker of its target (its pre-flight and planning, its
turn in the line). When no worker has been there to take it for MOLT_WORKER_WAIT (stopped,
killed with -9, never started), ``end_unserved``, run by the bot's housekeeping, ends it
saying so, and takes its jobs off the queue: a worker that comes back later runs none.

When Molt itself is down or broken, ``molt recover`` (pipeline/update/repair.py) does this
and more by hand.
"""

from __future__ import annotations

import json
import time

import redis
import structlog

from pipeline import metrics
from pipeline.config import Settings
from pipeline.exceptions import IllegalTransition, UpdateFailed
from pipeline.intake import control
from pipeline.queue import queueing, workers
from pipeline.queue.targets import Target, of_target
from pipeline.requests.states import UNDER_WAY
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Request, RequestStore
from pipeline.service.rollback import RESTARTED_PHASES, Trail, undo

log = structlog.get_logger(__name__)
#: What a fleet's request waits for a worker of its target in, and how it ends when none
#: comes (``end_unserved``): pre-flight blocked, planning and the waiting line failed.
_FOR_A_WORKER = (S.PREFLIGHT, S.PLANNING, S.QUEUED)
_UNSERVED_ENDS = {
    S.PREFLIGHT: (S.BLOCKED, None),
    S.PLANNING: (S.FAILED, "planning"),
    S.QUEUED: (S.FAILED, "queued"),
}
#: How long a line waits with the lock free and no job before it gets one (a job a worker
#: just took needs a moment to take its turn).
STALL_GRACE = 3.0


def recover_abandoned(settings: Settings, conn: redis.Redis) -> list[str]:
    """Roll back every running request of the target whose job is gone; returns their ids.
    In a fleet only a worker of the request's own target does this: the rollback runs on
    the host that holds its checkout."""
    store = RequestStore(conn)
    lock = Target(settings, conn).lock
    recovered = []
    for request in store.active():
        if request.state not in UNDER_WAY or not of_target(settings, request):
            continue
        held = lock.holder()
        if held is not None:
            if held.request_id != request.id or not held.gone():
                continue
            lock.release_gone(held)  # its job died on this machine: no need to wait for the TTL
        if not lock.try_lock(request.id, request.codename).ours:
            continue
        try:
            current = store.get(request.id)
            if current.state not in UNDER_WAY:
                continue
            log.warning("recovering abandoned update", request_id=request.id, phase=current.phase)
            restarted = current.state is not S.RUNNING or current.phase in RESTARTED_PHASES
            trail = Trail.left_by(settings, current, since=current.updated_at, restarted=restarted)
            phase = current.phase or "update"
            failure = UpdateFailed(
                phase,
                f"the worker running this update stopped during {phase} "
                "(killed, crashed or cut off from Redis)",
            )
            undo(settings, conn, request.id, failure, trail)
            recovered.append(request.id)
        finally:
            lock.release(request.id)
    return recovered


def keep_line_moving(settings: Settings, conn: redis.Redis) -> str:
    """Give a waiting line that nothing runs a job again: its head waits, the lock is free,
    updates are not paused, and no job is on the RQ queue, twice ``STALL_GRACE`` apart.
    Returns what it did, "" if nothing."""
    target = Target(settings, conn)
    head = target.line.head()
    stalled = (
        head is not None
        and target.lock.holder() is None
        and not control.is_paused(settings, conn)
        and queueing.jobs_queued(settings) == 0
    )
    seen = json.loads(conn.get(target.keys.stalled) or "{}")
    if not stalled or seen.get("head") != head:
        if stalled:
            conn.set(target.keys.stalled, json.dumps({"head": head, "since": time.time()}))
        else:
            conn.delete(target.keys.stalled)
        return ""
    if time.time() - float(seen["since"]) < STALL_GRACE:
        return ""
    conn.delete(target.keys.stalled)
    assert head is not None
    done = _give_job(settings, conn, head)
    log.warning("the waiting line had stalled", detail=done)
    return done


def _give_job(settings: Settings, conn: redis.Redis, head: str) -> str:
    """What the head of a line nothing runs needs: a job, the rest of its queueing, or to
    leave the line it no longer waits in."""
    request = RequestStore(conn).find(head)
    name = request.codename or request.id if request else head
    if request is None or request.state not in (S.QUEUED, S.APPROVED):
        Target(settings, conn).line.leave(head)
        return f"removed {name} from the waiting line: it no longer waited"
    if request.state is S.APPROVED:  # queueing it stopped half-way
        try:
            queueing.enqueue(settings, conn, head)
        except IllegalTransition:
            return ""
        return f"finished queueing {name}: it had joined the waiting line and stopped there"
    job = queueing.add_job(settings, request, again=True)
    return f"the waiting line had no job to run it: added {job} for {name}, at its head"


def end_unserved(settings: Settings, conn: redis.Redis) -> list[str]:
    """End the requests of a fleet's target that wait for a worker, once none has been
    there to take their job for MOLT_WORKER_WAIT: pre-flight blocked, planning and the
    waiting line failed (with Retry), each saying when a worker was last seen. Returns
    the ids of the requests it ended."""
    if not settings.fleet or workers.live(settings, conn):
        return []
    wait = settings.worker_wait
    ago = workers.last_seen(settings, conn)
    if ago is not None and ago < wait:
        return []
    store = RequestStore(conn)
    now = time.time()
    ended = [
        request.id
        for request in store.active()
        if request.state in _FOR_A_WORKER
        and of_target(settings, request)
        and now - request.updated_at >= wait
        and _end_unserved(settings, conn, request, ago)
    ]
    line = Target(settings, conn).line
    if ended and not len(line):  # the turns nobody took: a worker that comes runs none
        for name in queueing.untaken(settings, queueing.UPDATE_JOB):
            queueing.withdraw(settings, name)
    return ended


def _end_unserved(
    settings: Settings, conn: redis.Redis, request: Request, ago: float | None
) -> bool:
    """End one request nobody served; False if a worker took its job after all."""
    name = settings.target_name
    seen = "none was ever seen" if ago is None else f"last seen {workers.seen_at(ago)}"
    took = f"no worker for {name} took it in {settings.worker_wait:g} s ({seen})"
    if request.state is not S.QUEUED:
        prefix = f"{queueing.INTAKE_JOB}{request.id}-"
        if queueing.running(settings, prefix):
            return False  # a worker told to stop finishes it first
        jobs = queueing.untaken(settings, prefix)
        withdrawn = [queueing.withdraw(settings, job) for job in jobs]
        if jobs and not any(withdrawn):
            return False  # taken this instant: a worker is back
        if not jobs:
            took = f"no worker for {name} is there to finish it ({seen})"
    why = f"{took}; {workers.how_to_serve(settings)}"
    to, phase = _UNSERVED_ENDS[request.state]
    try:
        RequestStore(conn).transition(
            request.id,
            to,
            actor="molt",
            message=why,
            phase=phase,
            data={"check": "workers"} if to is S.BLOCKED else None,
            allowed_from=frozenset({request.state}),
        )
    except IllegalTransition:  # it moved on meanwhile
        return False
    Target(settings, conn).line.leave(request.id)
    if to is S.BLOCKED:
        metrics.refused("workers")
    log.warning("no worker served the request", request_id=request.id, target=name)
    return True
