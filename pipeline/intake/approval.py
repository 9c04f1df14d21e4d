"""Approve and Reject: only approvers, only once, only while the plan is fresh.

A click that is not allowed is audited and answered privately; it changes
nothing. Two clicks racing each other are settled by the state machine: the
transition out of plan_ready succeeds once. A click that comes after its request
moved on (it failed, was cleared from the queue, succeeded, expired…) is told where
the request is now, with the message it ended with and what can be done (``moved_on``),
also when it loses that race halfway, between the approval and the enqueue.
Observe mode, a component switched off, the daily limit and a full queue refuse every
approval, Molt's own included (MOLT_AUTONOMY=auto approves low-risk plans as
``molt:auto``; pipeline/intake/autonomy.py), and an approver's Retry of an unchanged plan,
which approves it (``approves_on_retry``).
A refusal is a Decision whose check is "authorisation", "expired", "late", "queue-full",
"autonomy" (not a plan Molt approves itself) or one of pipeline/intake/autonomy.py's.
A break-glass plan (pipeline/intake/freezes.py) is approved only by a second operator, never
its requester nor Molt itself; that approval is audited as ``break_glass_approved``.
"""

from __future__ import annotations

import time
from contextlib import suppress
from typing import Any

import redis

from pipeline import audit
from pipeline.config import Settings
from pipeline.exceptions import IllegalTransition
from pipeline.intake import autonomy, freezes
from pipeline.queue import queueing
from pipeline.queue.targets import Target
from pipeline.requests import authorisation
from pipeline.requests.decisions import ALLOWED, Decision
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request, RequestStore

_FROM_PLAN = frozenset({S.PLAN_READY})
#: Where a request is now, as a click that came after it moved on is told.
_NOW = {
    S.RECEIVED: "is being checked",
    S.REFUSED: "was refused",
    S.PREFLIGHT: "is running its pre-flight checks",
    S.BLOCKED: "was blocked",
    S.NEEDS_INFO: "waits for answers to the planner's questions",
    S.PLANNING: "is being planned",
    S.PLAN_READY: "has a new plan waiting for approval",
    S.REJECTED: "was rejected",
    S.EXPIRED: "expired",
    S.APPROVED: "was approved",
    S.QUEUED: "is queued",
    S.RUNNING: "is running",
    S.RESTARTING: "is restarting the service",
    S.WATCHING: "is live and being watched after its restart",
    S.SUCCEEDED: "succeeded",
    S.FAILED: "failed",
    S.CANCELLED: "was cancelled",
}
_ASK_AGAIN = "ask again if it is still wanted"
_RESULT_FOLLOWS = "its result is posted when it ends"
#: What the person can do about a request in that state.
_NEXT = {
    S.BLOCKED: "press Retry to check it again",
    S.FAILED: "press Retry to run it again",
    S.REFUSED: _ASK_AGAIN,
    S.REJECTED: _ASK_AGAIN,
    S.EXPIRED: _ASK_AGAIN,
    S.CANCELLED: _ASK_AGAIN,
    S.APPROVED: _RESULT_FOLLOWS,
    S.QUEUED: _RESULT_FOLLOWS,
    S.RUNNING: _RESULT_FOLLOWS,
    S.RESTARTING: _RESULT_FOLLOWS,
    S.WATCHING: _RESULT_FOLLOWS,
}
#: States an approver's answer led to: who answered says more than the state's message.
_ANSWERED = frozenset({S.APPROVED, S.QUEUED, S.REJECTED})
_CLEARED = "cleared from the queue"
#: The longest part of a request's message a refused click repeats.
_LONGEST = 300


def _refuse(
    store: RequestStore, request: Request, principal: str, action: str, decision: Decision
) -> Decision:
    """Tell the one who clicked, and only them, why the click changed nothing."""
    store.notify(
        request.id,
        "not_allowed",
        actor=principal,
        action=f"{action}_refused",
        audience=principal,
        data={"reason": decision.reason},
    )
    return decision


def _still_waiting(request: Request) -> Decision:
    """Allowed while the plan waits for its answer; once it moved on, the refusal saying where."""
    return ALLOWED if request.state is S.PLAN_READY else moved_on(request)


def moved_on(request: Request, waiting_for: str = "") -> Decision:
    """The refusal of a click that came after its request moved on: where the request is
    now, the message it ended with, and what the person can do (Retry where it applies).
    ``waiting_for`` names what the click needed the request to wait for, said first."""
    state = request.state
    lines = request.message.strip().splitlines()
    said = lines[0].rstrip(". ") if lines else ""
    if len(said) > _LONGEST:
        said = said[: _LONGEST - 1] + "…"
    subject = "this request"
    if state is S.FAILED and said.startswith(_CLEARED):
        what = f"was {said}"
    elif state in _ANSWERED and request.approver:
        subject, what = "this plan", f"was already {state.value} by {request.approver}"
    else:
        what = _NOW[state] + (f": {said}" if said else "")
    if waiting_for:
        subject = f"this request is not waiting for {waiting_for}: it"
    then = _NEXT.get(state)
    return Decision(False, f"{subject} {what}" + (f"; {then}" if then else ""), "late")


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


def approvable(settings: Settings, conn: redis.Redis, request: Request) -> Decision:
    """Whether any plan may be approved now, whoever approves it: the limits of
    pipeline/intake/autonomy.py, and room in the queue."""
    limits = autonomy.limits_allow(settings, conn, request)
    if not limits:
        return limits
    waiting = queueing.waiting(settings, conn)
    if waiting >= settings.queue_max:
        return Decision(
            False,
            f"the queue is full ({waiting} of MOLT_QUEUE_MAX={settings.queue_max}); try later",
            "queue-full",
        )
    return ALLOWED


def approve_automatically(settings: Settings, conn: redis.Redis, request_id: str) -> Decision:
    """MOLT_AUTONOMY=auto: Molt approves a low-risk plan itself, audited as ``molt:auto``."""
    store = RequestStore(conn)
    request = store.get(request_id)
    decision = _still_waiting(request) and approvable(settings, conn, request)
    if decision and not autonomy.approves_itself(settings, request.plan or {}):
        decision = Decision(False, "only low-risk plans are approved by Molt itself", "autonomy")
    if decision and request.break_glass:
        decision = Decision(False, "breaking glass needs a second operator's approval", "autonomy")
    if not decision:
        return decision
    message = "approved by Molt itself: a low-risk plan (MOLT_AUTONOMY=auto)"
    return _approve_and_queue(settings, conn, request_id, autonomy.AUTO_APPROVER, message)


def approve_recovery(settings: Settings, conn: redis.Redis, request_id: str) -> Decision:
    """MOLT_AUTONOMY=auto: the rollback Molt raised for an incident is approved by Molt
    itself whatever its plan's risk: returning to the release before the suspect update is
    the recovery (pipeline/incidents/oncall.py). Audited as ``molt:auto``."""
    request = RequestStore(conn).get(request_id)
    decision = _still_waiting(request) and approvable(settings, conn, request)
    if decision and not autonomy.recovers_itself(settings, request):
        decision = Decision(False, "only an incident's rollback is approved this way", "autonomy")
    if not decision:
        return decision
    message = "approved by Molt itself: the rollback of an incident's suspect (MOLT_AUTONOMY=auto)"
    return _approve_and_queue(settings, conn, request_id, autonomy.AUTO_APPROVER, message)


def approve(settings: Settings, conn: redis.Redis, request_id: str, who: Origin) -> Decision:
    store = RequestStore(conn)
    request = store.get(request_id)
    principal = who.principal
    risk = (request.plan or {}).get("risk", {}).get("level", "low")
    decision = authorisation.may_approve(settings, who, request.requester, risk)
    decision = decision and freezes.may_approve(settings, who, request)
    if decision and expire_if_due(settings, store, request):
        decision = Decision(False, "this plan has expired: ask again", "expired")
    decision = decision and _still_waiting(request) and approvable(settings, conn, request)
    if decision:
        decision = _approve_and_queue(
            settings, conn, request_id, principal, f"approved by {principal}"
        )
    if not decision:
        return _refuse(store, request, principal, "approve", decision)
    _glass_approved(settings, conn, request, principal)
    return decision


def _glass_approved(settings: Settings, conn: redis.Redis, request: Request, approver: str) -> None:
    """A second operator let a deploy through a freeze: on the record, with the reason."""
    if not request.break_glass:
        return
    detail = {"reason": request.break_glass, "requester": request.requester}
    if settings.fleet:
        detail["target"] = settings.target_name
    audit.append(
        conn, actor=approver, action="break_glass_approved", request_id=request.id, detail=detail
    )


def unchanged(previous: dict[str, Any] | None, plan: dict[str, Any]) -> bool:
    """Whether a retry's new plan is the one approved before: the same target commit onto
    the same base, at the same risk. A change in words is planned anew by the model, its
    commit known only once written, so it never is."""
    if not previous or previous.get("kind") != plan.get("kind") or plan.get("kind") == "change":
        return False
    commits = ("base_commit", "target_commit")
    if not all(plan.get(k) and previous.get(k) == plan.get(k) for k in commits):
        return False
    return bool(previous.get("risk") == plan.get("risk"))


def approves_on_retry(
    settings: Settings, who: Origin, request: Request, plan: dict[str, Any]
) -> bool:
    """Whether ``who`` pressing Retry approves ``plan``, the request's new plan: it is
    unchanged from the one approved before (still ``request.plan``), and ``who`` may
    approve it (so a high-risk plan still needs someone other than its requester)."""
    level = plan.get("risk", {}).get("level", "low")
    may = authorisation.may_approve(settings, who, request.requester, level)
    may = may and freezes.may_approve(settings, who, request)
    return bool(request.approver) and unchanged(request.plan, plan) and may.allowed


def approve_on_retry(
    settings: Settings, conn: redis.Redis, request_id: str, who: Origin
) -> Decision:
    """An approver's Retry of an unchanged plan is its approval, audited as such."""
    message = f"approved by {who.principal} by pressing Retry: the plan is unchanged"
    return _approve_as(settings, conn, request_id, who, message)


def approve_on_merge(
    settings: Settings, conn: redis.Redis, request_id: str, who: Origin, merged: str
) -> Decision:
    """MOLT_MERGE_APPROVES: an approver's merge of the pull request ``merged`` approves the
    deploy of its merge commit, audited as such."""
    message = f"approved by {who.principal} by merging {merged}"
    return _approve_as(settings, conn, request_id, who, message)


def approve_step(
    settings: Settings, conn: redis.Redis, request_id: str, who: Origin, rollout: str
) -> Decision:
    """A rollout's approval stands for each of its steps, approved in turn as the one before
    ended well: the same checks as the button (a high-risk step still needs an approver other
    than its requester), audited as such."""
    message = f"approved by {who.principal} with rollout {rollout}"
    return _approve_as(settings, conn, request_id, who, message)


def approve_rollout_rollback(
    settings: Settings, conn: redis.Redis, request_id: str, rollout: str
) -> Decision:
    """A rollout's ``on_failure = "rollback-all"``: the rollback of a step already done was
    approved with the rollout, which said so; audited as Molt's, like an incident's recovery.
    A rollback is never held: not by the approvers of a plan that went wrong, nor by the
    limits (pipeline/intake/autonomy.py) or a full queue."""
    request = RequestStore(conn).get(request_id)
    decision = _still_waiting(request)
    if not decision:
        return decision
    message = f"approved with rollout {rollout}: a failed step rolls back the steps done"
    return _approve_and_queue(settings, conn, request_id, autonomy.AUTO_APPROVER, message)


def _approve_as(
    settings: Settings, conn: redis.Redis, request_id: str, who: Origin, message: str
) -> Decision:
    """An approval that something other than the Approve button stands for (a Retry, a
    merge): the same checks as the button, then ``message`` in the audit."""
    request = RequestStore(conn).get(request_id)
    level = (request.plan or {}).get("risk", {}).get("level", "low")
    decision = (
        authorisation.may_approve(settings, who, request.requester, level)
        and freezes.may_approve(settings, who, request)
        and _still_waiting(request)
        and approvable(settings, conn, request)
    )
    if not decision:
        return decision
    decision = _approve_and_queue(settings, conn, request_id, who.principal, message)
    if decision:
        _glass_approved(settings, conn, request, who.principal)
    return decision


def reject(settings: Settings, conn: redis.Redis, request_id: str, who: Origin) -> Decision:
    store = RequestStore(conn)
    request = store.get(request_id)
    principal = who.principal
    decision = authorisation.may_approve(
        settings, who, request.requester, "low"
    ) and _still_waiting(request)
    if decision:
        decision = _answer_plan(
            store, request_id, S.REJECTED, principal, f"rejected by {principal}"
        )
    if not decision:
        return _refuse(store, request, principal, "reject", decision)
    return decision


def _approve_and_queue(
    settings: Settings, conn: redis.Redis, request_id: str, approver: str, message: str
) -> Decision:
    """Approve the plan and queue its update; a click that lost the race is told so."""
    decision = _answer_plan(RequestStore(conn), request_id, S.APPROVED, approver, message)
    return decision and _queue_approved(settings, conn, request_id)


def _queue_approved(settings: Settings, conn: redis.Redis, request_id: str) -> Decision:
    """Queue an approved request. One that moved on in between (the update ahead failed
    and cleared the queue, say) stays where it is, out of the waiting line, and the click
    is told what happened to it."""
    try:
        queueing.enqueue(settings, conn, request_id)
    except IllegalTransition:
        current = RequestStore(conn).get(request_id)
        if current.terminal:  # not waiting for anything: its place in the line is stale
            Target(settings, conn).line.leave(request_id)
        return moved_on(current)
    return ALLOWED


def _answer_plan(
    store: RequestStore, request_id: str, answer: S, approver: str, message: str
) -> Decision:
    """Move the plan out of plan_ready, once: the state machine settles two racing clicks."""
    try:
        store.transition(
            request_id,
            answer,
            actor=approver,
            message=message,
            fields={"approver": approver},
            allowed_from=_FROM_PLAN,
        )
    except IllegalTransition:
        return moved_on(store.get(request_id))
    return ALLOWED
