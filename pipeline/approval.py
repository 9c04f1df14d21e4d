"""Approve and Reject: only approvers, only once, only while the plan is fresh.

A click that is not allowed is audited and answered privately; it changes
nothing. Two clicks racing each other are settled by the state machine: the
transition out of plan_ready succeeds once. Observe mode, a component switched
off, the daily limit and a full queue refuse every approval, Molt's own included
(MOLT_AUTONOMY=auto approves low-risk plans as ``molt:auto``; pipeline/autonomy.py).
"""

from __future__ import annotations

import time
from contextlib import suppress

import redis

from pipeline import authorisation, autonomy, queueing
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


def _expire(
    settings: Settings,
    store: RequestStore,
    request: Request,
    waiting: S,
    since: float,
    message: str,
) -> bool:
    """End a request that waited in ``waiting`` longer than MOLT_PLAN_TTL; true if it is
    (now) expired."""
    if request.state is not waiting:
        return request.state is S.EXPIRED
    if time.time() - since <= settings.plan_ttl:
        return False
    with suppress(IllegalTransition):
        store.transition(
            request.id,
            S.EXPIRED,
            actor="molt",
            message=message,
            allowed_from=frozenset({waiting}),
        )
    return True


def expire_if_due(settings: Settings, store: RequestStore, request: Request) -> bool:
    """Expire a plan past MOLT_PLAN_TTL; true if it is (now) expired."""
    within = f"{settings.plan_ttl / 60:.0f} min"
    message = f"nobody approved it within {within}"
    return _expire(settings, store, request, S.PLAN_READY, request.plan_ready_at, message)


def expire_unanswered(settings: Settings, store: RequestStore, request: Request) -> bool:
    """Expire a request whose questions waited longer than MOLT_PLAN_TTL for answers."""
    within = f"{settings.plan_ttl / 60:.0f} min"
    message = f"nobody answered the planner's questions within {within}"
    return _expire(settings, store, request, S.NEEDS_INFO, request.updated_at, message)


def refusal(settings: Settings, conn: redis.Redis, request: Request) -> str:
    """Why no plan may be approved now, whoever approves it; "" if one may."""
    held = autonomy.approval_refusal(settings, conn, request)
    if held:
        return held
    waiting = queueing.waiting(settings, conn)
    if waiting >= settings.queue_max:
        return f"the queue is full ({waiting} of MOLT_QUEUE_MAX={settings.queue_max}); try later"
    return ""


def approve_automatically(settings: Settings, conn: redis.Redis, request_id: str) -> Decision:
    """MOLT_AUTONOMY=auto: Molt approves a low-risk plan itself, audited as ``molt:auto``."""
    store = RequestStore(conn)
    request = store.get(request_id)
    reason = _late(request) or refusal(settings, conn, request)
    if not reason and not autonomy.approves_itself(settings, request.plan or {}):
        reason = "only low-risk plans are approved by Molt itself"
    if reason:
        return Decision(False, reason)
    try:
        store.transition(
            request_id,
            S.APPROVED,
            actor=autonomy.AUTO_APPROVER,
            message="approved by Molt itself: a low-risk plan (MOLT_AUTONOMY=auto)",
            fields={"approver": autonomy.AUTO_APPROVER},
            allowed_from=_FROM_PLAN,
        )
    except IllegalTransition:
        return Decision(False, _late(store.get(request_id)))
    queueing.enqueue(settings, conn, request_id)
    return authorisation.ALLOWED


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
    reason = refusal(settings, conn, request)
    if reason:
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
