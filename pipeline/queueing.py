"""Putting approved requests on the RQ queue, in the waiting line, and clearing it."""

from __future__ import annotations

import redis
from rq import Queue

from pipeline import store as stores
from pipeline.config import Settings
from pipeline.exceptions import IllegalTransition
from pipeline.requests import RequestStore
from pipeline.states import RequestState as S
from pipeline.targets import Target

QUEUE = "molt-updates"
#: How long a job may wait for the lock and run, beyond its phases.
_SLACK_SECONDS = 600


def rq_queue(settings: Settings) -> Queue:
    return Queue(QUEUE, connection=stores.connect(settings, decode=False))


def job_timeout(settings: Settings) -> int:
    phases = 3 * settings.phase_timeout + 2 * (settings.restart_timeout + settings.boot_timeout)
    if settings.llm_enabled:  # a change in words is written and reviewed first
        phases += 2 * settings.llm_timeout
    return int(phases + _SLACK_SECONDS + settings.queue_max * phases)


def job_id(request_id: str, attempt: int) -> str:
    """The RQ job of one attempt of a request."""
    return f"update-{request_id}-{attempt}"


def waiting(settings: Settings, conn: redis.Redis) -> int:
    return len(Target(settings, conn).line)


def enqueue(settings: Settings, conn: redis.Redis, request_id: str) -> int:
    """Queue an approved request; returns its position (1 = next to run)."""
    store = RequestStore(conn)
    target = Target(settings, conn)
    position = target.line.join(request_id)
    held = target.lock.holder()
    running = 1 if held else 0
    request = store.transition(
        request_id,
        S.QUEUED,
        actor="molt",
        message=f"position {position}" + (f", after {held.codename}" if held else ""),
        data={"position": position, "ahead": position - 1 + running},
    )
    rq_queue(settings).enqueue(
        "pipeline.jobs.run_update",
        request_id,
        job_id=job_id(request_id, request.attempt),
        job_timeout=job_timeout(settings),
        result_ttl=86400,
        failure_ttl=7 * 86400,
        description=f"update {request_id}: {request.argument}",
    )
    return position


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
