"""The states a request goes through, and which changes between them are legal.

Only ``pipeline.requests.store.RequestStore.transition`` changes a request's state;
it checks ``can_move`` and writes the audit entry and the event in one step.
"""

from __future__ import annotations

from enum import StrEnum


class RequestState(StrEnum):
    RECEIVED = "received"  # taken in, not yet checked
    REFUSED = "refused"  # the requester may not ask (terminal)
    PREFLIGHT = "preflight"  # pre-flight checks running
    BLOCKED = "blocked"  # a pre-flight check failed (terminal; Retry re-checks)
    NEEDS_INFO = "needs_info"  # the planner asked questions; waiting for answers
    PLANNING = "planning"  # a plan is being made
    PLAN_READY = "plan_ready"  # waiting for Approve or Reject
    REJECTED = "rejected"  # an approver said no (terminal)
    EXPIRED = "expired"  # nobody approved within MOLT_PLAN_TTL (terminal)
    APPROVED = "approved"  # approved, about to be queued
    QUEUED = "queued"  # waiting for the update lock
    RUNNING = "running"  # the job runs; ``phase`` says where
    RESTARTING = "restarting"  # the service is being restarted and verified
    WATCHING = "watching"  # restarted and verified; watched for MOLT_WATCH_SECONDS before success
    SUCCEEDED = "succeeded"  # landed and verified (terminal)
    FAILED = "failed"  # rolled back to the snapshot (terminal; Retry starts again)
    CANCELLED = "cancelled"  # stopped by an operator or the requester (terminal)
    PROPOSED = "proposed"  # delivered as a pull request, the live checkout untouched (terminal)


S = RequestState

TERMINAL = frozenset(
    {S.REFUSED, S.BLOCKED, S.REJECTED, S.EXPIRED, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PROPOSED}
)

#: An update under way on a worker: what abandoned-update recovery rolls back.
UNDER_WAY = frozenset({S.RUNNING, S.RESTARTING, S.WATCHING})

_MOVES: dict[RequestState, frozenset[RequestState]] = {
    S.RECEIVED: frozenset({S.REFUSED, S.PREFLIGHT, S.CANCELLED, S.FAILED}),
    S.PREFLIGHT: frozenset({S.BLOCKED, S.PLANNING, S.CANCELLED, S.FAILED}),
    S.PLANNING: frozenset({S.NEEDS_INFO, S.PLAN_READY, S.CANCELLED, S.FAILED}),
    S.NEEDS_INFO: frozenset({S.PLANNING, S.CANCELLED, S.EXPIRED}),
    # A rollout (pipeline/update/rollouts.py) is blocked by its gate or a freeze at the
    # approval, or by a freeze when a step's turn comes.
    S.PLAN_READY: frozenset(
        {S.APPROVED, S.REJECTED, S.EXPIRED, S.CANCELLED, S.PLANNING, S.BLOCKED}
    ),
    S.APPROVED: frozenset({S.QUEUED, S.FAILED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.FAILED, S.CANCELLED, S.BLOCKED}),
    S.RUNNING: frozenset({S.RUNNING, S.RESTARTING, S.SUCCEEDED, S.FAILED, S.PROPOSED, S.BLOCKED}),
    # Restarted, then verified (phase restart, then verify).
    S.RESTARTING: frozenset({S.RESTARTING, S.RUNNING, S.WATCHING, S.SUCCEEDED, S.FAILED}),
    # A failed watch rolls back (running, phase rollback); a quiet one succeeds.
    S.WATCHING: frozenset({S.RUNNING, S.SUCCEEDED, S.FAILED}),
    # Retry: the same request goes round again from pre-flight.
    S.FAILED: frozenset({S.PREFLIGHT}),
    S.BLOCKED: frozenset({S.PREFLIGHT}),
}


def can_move(current: RequestState, wanted: RequestState) -> bool:
    return wanted in _MOVES.get(current, frozenset())


def template_for(state: RequestState, phase: str = "") -> str | None:
    """The message template a person sees when a request enters ``state``."""
    if state is S.RUNNING:
        return "starting" if phase == "sandbox" else "working"  # the update's first phase
    if state is S.RESTARTING and phase == "verify":
        return "working"
    return {
        S.RECEIVED: "processing",
        S.PREFLIGHT: "processing",
        S.PLANNING: "planning",
        S.NEEDS_INFO: "needs_info",
        S.PLAN_READY: "plan_ready",
        S.QUEUED: "queued",
        S.RESTARTING: "restarting",
        S.WATCHING: "watching",
        S.SUCCEEDED: "success",
        S.FAILED: "failure",
        S.REFUSED: "refused",
        S.BLOCKED: "blocked",
        S.REJECTED: "rejected",
        S.EXPIRED: "expired",
        S.CANCELLED: "cancelled",
        S.PROPOSED: "proposed",
    }.get(state)
