"""Which rollout a request is a step of: a rollout (pipeline/update/rollouts.py) is a
request whose steps are ordinary requests of their targets; the link lives here, below
intake, so that planning and the front ends can tell a step from a request of its own
(the link: ``keyspace.ROLLOUT_STEPS``).
"""

from __future__ import annotations

import redis

from pipeline import keyspace
from pipeline.requests.store import Request

#: The command of a rollout's own request (its steps are ``deploy`` and ``rollback``).
ROLLOUT = "rollout"


def link(conn: redis.Redis, step_id: str, rollout_id: str) -> None:
    conn.hset(keyspace.ROLLOUT_STEPS, step_id, rollout_id)


def rollout_of(conn: redis.Redis, request_id: str) -> str:
    """The rollout's request ``request_id`` is a step of, or ""."""
    found = conn.hget(keyspace.ROLLOUT_STEPS, request_id)
    return str(found) if found else ""


def rolls_back_a_step(conn: redis.Redis, request: Request) -> bool:
    """Whether ``request`` rolls back a step its rollout had done (a failed step, ``stop``):
    such a rollback is never held, not by a pause, observe mode or the daily limit."""
    return request.command == "rollback" and bool(rollout_of(conn, request.id))
