"""Approve and Reject: only approvers, only once, only while the plan is fresh.

A click that is not allowed is audited and answered privately; it changes
nothing. Two clicks racing each other are settled by the state machine: the
transition out of plan_ready succeeds once.
"""

from __future__ import annotations

import time
from contextlib import suppress

import redis

from pipeline import authorisation, queueing
from pipeline.authorisation import Decision
from pipeline.config import Settings
from pipeline.exceptions import IllegalTransition
from pipeline.requests import Origin, Request, RequestStore
from pipeline.states import RequestState as S

_FROM_PLAN = frozenset({S.PLAN_READY})


def _refuse(
    store: RequestStore, request: Request, principal: str, action: str, reason: str
) -> Decision:
    store.notify(
        request.id,
        "not_allowed",
        actor=principal,
        action=f"{action}_refused",
        audience=principal,
        data={"reason": reason},
    )
    return Decision(False, reason)


def _late(request: Request) -> str:
    if request.state is S.PLAN_READY:
        return ""
    if request.approver:
        return f"this plan was already {request.state.value} by {request.approver}"
    return f"this plan is {request.state.value}"


def expire_if_due(settings: Settings, store: RequestStore, request: Request) -> bool:
    """Expire a plan past MOLT_PLAN_TTL; true if it is (now) expired."""
    if request.state is not S.PLAN_READY:
        return request.state is S.EXPIRED
    if time.time() - request.plan_ready_at <= settings.plan_ttl:
        return False
    with suppress(IllegalTransition):
        store.transition(
            request.id,
            S.EXPIRED,
            actor="molt",
            message=f"nobody approved it within {settings.plan_ttl / 60:.0f} min",
            allowed_from=_FROM_PLAN,
        )
    return True


def approve(settings: Settings, conn: redis.Redis, request_id: str, who: Origin) -> Decision:
    store = RequestStore(conn)
    request = store.get(request_id)
    principal = who.principal
    risk = (request.plan or {}).get("risk", {}).get("level", "low")
    allowed = authorisation.may_approve(settings, who, request.requester, risk)
    if not allowed:
        return _refuse(store, request, principal, "approve", allowed.reason)
    if expire_if_due(settings, store, request):
        return _refuse(store, request, principal, "approve", "this plan has expired: ask again")
    late = _late(request)
    if late:
        return _refuse(store, request, principal, "approve", late)
    waiting = queueing.waiting(settings, conn)
    if waiting >= settings.queue_max:
        reason = f"the queue is full ({waiting} of MOLT_QUEUE_MAX={settings.queue_max}); try later"
        return _refuse(store, request, principal, "approve", reason)
    try:
        store.transition(
            request_id,
            S.APPROVED,
            actor=principal,
            message=f"approved by {principal}",
            fields={"approver": principal},
            allowed_from=_FROM_PLAN,
        )
    except IllegalTransition:
        return _refuse(store, request, principal, "approve", _late(store.get(request_id)))
    queueing.enqueue(settings, conn, request_id)
    return authorisation.ALLOWED


def reject(settings: Settings, conn: redis.Redis, request_id: str, who: Origin) -> Decision:
    store = RequestStore(conn)
    request = store.get(request_id)
    principal = who.principal
    allowed = authorisation.may_approve(settings, who, request.requester, "low")
    if not allowed:
        return _refuse(store, request, principal, "reject", allowed.reason)
    late = _late(request)
    if late:
        return _refuse(store, request, principal, "reject", late)
    try:
        store.transition(
            request_id,
            S.REJECTED,
            actor=principal,
            message=f"rejected by {principal}",
            fields={"approver": principal},
            allowed_from=_FROM_PLAN,
        )
    except IllegalTransition:
        return _refuse(store, request, principal, "reject", _late(store.get(request_id)))
    return authorisation.ALLOWED
