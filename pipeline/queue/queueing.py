"""The waiting line is the order of work: approved requests join it, jobs take turns from it.

Approving a request puts it in the target's waiting line and one job on the RQ queue. A
job stands for a turn, not for a request: once the update lock is free it takes whichever
request heads the line (``take_turn``), so however RQ orders the jobs and whichever worker
takes one, the line's head runs next, and a job that finds the line empty just ends.

There are as many jobs as requests waiting, or more: each approval adds one of each, and a
job takes at most one request. A job lost with its worker (killed while it waited, or timed
out) leaves a line with nobody to run it: pipeline/update/recovery.py gives such a line a job
again (``add_job``), from the bot's housekeeping and from ``molt recover``.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from pipeline import keyspace
from pipeline import store as stores
from pipeline.config import Settings
from pipeline.exceptions import IllegalTransition
from pipeline.queue.locking import OPERATOR_ROLLBACK, ORDINARY, RECOVERY
from pipeline.queue.targets import Target, with_test_limit
from pipeline.requests.authorisation import raised_by_molt
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request, RequestStore

QUEUE = "molt-updates"
#: How long a job may wait for the lock and run, beyond its phases.
_SLACK_SECONDS = 600


def queue_name(settings: Settings) -> str:
    """The RQ queue of the target's jobs: ``molt-updates:<target>`` in a fleet, so that a
    worker takes the jobs of its own targets only; ``molt-updates`` for the one target."""
    return f"{QUEUE}:{settings.target_name}" if settings.fleet else QUEUE


def rq_queue(settings: Settings) -> Queue:
    return Queue(queue_name(settings), connection=stores.connect(settings, decode=False))


def job_timeout(settings: Settings) -> int:
    phases = 3 * settings.phase_timeout + 2 * (settings.restart_timeout + settings.boot_timeout)
    if settings.llm_enabled:  # a change in words is written and reviewed first
        phases += 2 * settings.llm_timeout
    return int(phases + _SLACK_SECONDS + settings.queue_max * phases)


#: How the ids of Molt's RQ jobs begin: an update's turn, a fleet's pre-flight and planning.
UPDATE_JOB = "update-"
INTAKE_JOB = "intake-"


def job_id(request_id: str, attempt: int) -> str:
    """The RQ job the approval of one attempt of a request put on the queue."""
    return f"{UPDATE_JOB}{request_id}-{attempt}"


def waiting(settings: Settings, conn: redis.Redis) -> int:
    return len(Target(settings, conn).line)


def enqueue(settings: Settings, conn: redis.Redis, request_id: str) -> int:
    """Queue an approved request; returns its position (1 = next to run).

    The request joins the line before it is marked queued, so the line's order is the
    order of approval; a job meeting a head that is still approved waits the moment it
    takes to be marked. Joining again (a queueing that stopped half-way) keeps the place.
    """
    store = RequestStore(conn)
    target = Target(settings, conn)
    position = target.line.join(request_id, priority(store.get(request_id)))
    held = target.lock.holder()
    running = 1 if held else 0
    try:
        request = store.transition(
            request_id,
            S.QUEUED,
            actor="molt",
            message=f"position {position}" + (f", after {held.codename}" if held else ""),
            data={"position": position, "ahead": position - 1 + running},
        )
    except IllegalTransition:
        if store.get(request_id).state is not S.QUEUED:
            target.line.leave(request_id)
        raise
    add_job(settings, request)
    return position


def priority(request: Request) -> int:
    """Where a request joins the line: incident recovery first, then operator rollbacks."""
    if request.command != "rollback":
        return ORDINARY
    return RECOVERY if raised_by_molt(request.origin) else OPERATOR_ROLLBACK


def add_job(settings: Settings, request: Request, *, again: bool = False) -> str:
    """One more job to run the line, named after the request it was added for."""
    name = job_id(request.id, request.attempt)
    settings = with_test_limit(settings, stores.connect(settings))  # the tests' time grows
    if again:  # the first job of this attempt exists, or did
        name += f"-again-{secrets.token_hex(3)}"
    # A fleet's job names its target: the worker runs it with that target's settings.
    target = (settings.target_name,) if settings.fleet else ()
    rq_queue(settings).enqueue(
        "pipeline.update.jobs.run_update",
        request.id,
        *target,
        job_id=name,
        job_timeout=job_timeout(settings),
        result_ttl=86400,
        failure_ttl=7 * 86400,
        description=f"update {request.id}: {request.argument} (runs the head of the line)",
    )
    return name


def add_hold_check(settings: Settings, request_id: str, since: float) -> str:
    """The hold check of a fix live since ``since``: on the target's queue once its watch
    window and MOLT_FIX_HOLD have passed (RQ's scheduled jobs, moved onto the queue when
    due by a worker's beat, pipeline/queue/workers.py)."""
    name = f"hold-{request_id}-{secrets.token_hex(3)}"
    due = max(0.0, since + settings.watch_seconds + settings.fix_hold - time.time())
    rq_queue(settings).enqueue_in(
        timedelta(seconds=due),
        "pipeline.update.jobs.check_hold",
        request_id,
        since,
        settings.target_name if settings.fleet else "",
        job_id=name,
        job_timeout=60,
        result_ttl=86400,
        failure_ttl=7 * 86400,
        description=f"hold check of fix {request_id}",
    )
    return name


def add_intake_job(
    settings: Settings, request_id: str, step: str, retried_by: Origin | None = None
) -> str:
    """A fleet's pre-flight and planning (``step``: "check" or "plan") as a job on the
    target's queue, ahead of the updates waiting there, for its worker to run."""
    who = asdict(retried_by) if retried_by is not None else None
    settings = with_test_limit(settings, stores.connect(settings))
    name = f"{INTAKE_JOB}{request_id}-{secrets.token_hex(3)}"
    rq_queue(settings).enqueue(
        "pipeline.update.jobs.run_intake",
        request_id,
        settings.target_name,
        step,
        who,
        job_id=name,
        job_timeout=int(2 * settings.phase_timeout + settings.llm_timeout + _SLACK_SECONDS),
        result_ttl=3600,
        failure_ttl=7 * 86400,
        at_front=True,
        description=f"{step} {request_id} (pre-flight and planning on the target's host)",
    )
    return name


def jobs_queued(settings: Settings) -> int:
    """Jobs on the RQ queue that no worker took yet (their data still there)."""
    queue = rq_queue(settings)
    try:
        found = Job.fetch_many(queue.get_job_ids(), connection=queue.connection)
        return sum(1 for job in found if job is not None)
    finally:
        queue.connection.close()


def untaken(settings: Settings, prefix: str) -> list[str]:
    """The ids beginning with ``prefix`` of the jobs on the target's RQ queue that no
    worker took yet."""
    queue = rq_queue(settings)
    try:
        return [found for found in queue.get_job_ids() if found.startswith(prefix)]
    finally:
        queue.connection.close()


def running(settings: Settings, prefix: str) -> list[str]:
    """The ids beginning with ``prefix`` of the jobs a worker of the target runs: taken, and
    their worker still beats for them (RQ's heartbeat of a started job; a killed worker's
    lapses within a minute or two)."""
    queue = rq_queue(settings)
    registry = queue.started_job_registry
    try:
        entries = queue.connection.zrangebyscore(registry.key, time.time(), "+inf")
        found = (registry.parse_job_id(entry) for entry in entries)
        return [name for name in found if name.startswith(prefix)]
    finally:
        queue.connection.close()


def withdraw(settings: Settings, name: str) -> bool:
    """Take the job ``name`` off the target's RQ queue, unless a worker took it meanwhile
    (False): a worker that comes later must not run it."""
    queue = rq_queue(settings)
    try:
        if not queue.remove(name):
            return False
        with contextlib.suppress(NoSuchJobError, InvalidJobOperation):
            Job.fetch(name, connection=queue.connection).cancel()
        return True
    finally:
        queue.connection.close()


@dataclass(frozen=True)
class Turn:
    """What a job found: ``taken``, the request whose turn it is (the lock is now held for
    it); else ``wait`` (the lock is held, or the head is being queued) or the line is empty."""

    taken: str = ""
    wait: bool = False


def take_turn(settings: Settings, conn: redis.Redis, codename: str, only: str = "") -> Turn:
    """Take the update lock for the head of the line, in one transaction with reading both;
    with ``only``, if that request is the head (else wait).

    The head stays in the line until it is marked running; a head that no longer waits
    (cleared, failed) is dropped from the line and the next one looked at.
    """
    target = Target(settings, conn)
    while True:
        with conn.pipeline() as pipe:
            try:
                turn = _try_turn(pipe, target, codename, only)
            except redis.WatchError:
                continue
        if turn is not None:
            return turn


def _try_turn(pipe: Any, target: Target, codename: str, only: str = "") -> Turn | None:
    """One try of ``take_turn``; None when it dropped a head that no longer waits."""
    keys = target.keys
    pipe.watch(keys.lock, keys.queue)
    if pipe.exists(keys.lock):
        return Turn(wait=True)
    head = _text(pipe.lindex(keys.queue, 0))
    if not head:
        return Turn()
    if only and head != only:
        return Turn(wait=True)
    pipe.watch(keyspace.request(head))
    state = _text(pipe.hget(keyspace.request(head), "state"))
    if state == S.APPROVED.value:  # being queued this instant
        return Turn(wait=True)
    pipe.multi()
    if state != S.QUEUED.value:
        pipe.lrem(keys.queue, 0, head)
        pipe.execute()
        return None
    pipe.set(keys.lock, target.lock.value_for(head, codename), px=target.lock.ttl_ms)
    pipe.execute()
    return Turn(taken=head)


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else value or ""


def clear(settings: Settings, conn: redis.Redis, reason: str) -> list[str]:
    """Fail every waiting request with ``reason``; each gets its own message and Retry."""
    store = RequestStore(conn)
    line = Target(settings, conn).line
    cleared = []
    for request_id in line.ids():
        line.leave(request_id)
        try:
            store.transition(request_id, S.FAILED, actor="molt", message=reason, phase="queued")
        except IllegalTransition:
            continue
        cleared.append(request_id)
    return cleared
