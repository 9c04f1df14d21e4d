"""A request's way from received to plan_ready: authorise, pre-flight, plan.

``submit`` creates the request and runs the rest; chat front ends call it off
their own threads, since pre-flight may run the target's tests (and, with
MOLT_AUTONOMY=semi, phase 1 of a deploy). Under MOLT_AUTONOMY=auto a low-risk plan
is approved by Molt itself as soon as it is ready (pipeline/autonomy.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
import structlog

from pipeline import approval, authorisation, autonomy, planning, preflight
from pipeline.config import Settings
from pipeline.exceptions import MoltError, PlanningError
from pipeline.redaction import redact
from pipeline.requests import Origin, Request, RequestStore
from pipeline.states import RequestState as S

log = structlog.get_logger(__name__)
MOLT = "molt"
MAX_TEXT = 2000
#: Questions, answers and asked changes one request may collect before it must start anew.
MAX_FOLLOW_UPS = 8


def submit(
    settings: Settings, conn: redis.Redis, origin: Origin, command: str, argument: str, text: str
) -> Request:
    """Take a request in and move it as far as it goes without a person."""
    store = RequestStore(conn)
    known = settings.secrets()
    request = store.create(
        origin, redact(text[:MAX_TEXT], known), command, redact(argument[:MAX_TEXT], known)
    )
    decision = authorisation.may_request(settings, origin)
    if not decision:
        return store.transition(request.id, S.REFUSED, actor=MOLT, message=decision.reason)
    return advance(settings, conn, request.id)


def retry(
    settings: Settings, conn: redis.Redis, request_id: str, who: Origin
) -> authorisation.Decision:
    """Run a failed or blocked request again from pre-flight."""
    store = RequestStore(conn)
    request = store.get(request_id)
    principal = who.principal
    decision = authorisation.may_request(settings, who)
    if not decision:
        return decision
    if request.state not in (S.FAILED, S.BLOCKED):
        return authorisation.Decision(False, f"this request is {request.state.value}, not failed")
    try:
        store.transition(
            request_id,
            S.PREFLIGHT,
            actor=principal,
            message=f"retry {request.attempt + 1} asked by {principal}",
            phase="",
            fields={
                "attempt": request.attempt + 1,
                "codename": "",
                "update_dir": "",
                "result": None,
            },
            allowed_from=frozenset({S.FAILED, S.BLOCKED}),
        )
    except MoltError:
        return authorisation.Decision(False, "this request is already being retried")
    advance(settings, conn, request_id, checked=True)
    return authorisation.ALLOWED


def advance(
    settings: Settings, conn: redis.Redis, request_id: str, *, checked: bool = False
) -> Request:
    """Pre-flight and planning, ending in plan_ready, blocked or failed."""
    store = RequestStore(conn)
    if not checked:
        store.transition(request_id, S.PREFLIGHT, actor=MOLT, message="running pre-flight checks")
    request = store.get(request_id)

    def blocked(message: str, check: str, report: list[dict[str, Any]] | None = None) -> Request:
        data: dict[str, Any] = {"check": check}
        if report is not None:
            data["checks"] = report
        return store.transition(request_id, S.BLOCKED, actor=MOLT, message=message, data=data)

    def checks() -> Request:
        off = autonomy.switched_off(settings, request)
        if off:
            return blocked(off, "switch")
        limit = autonomy.over_daily_limit(settings, conn, request)
        if limit:
            return blocked(limit, "daily limit")
        if not request.deploys and not settings.llm_enabled:
            return store.transition(
                request_id,
                S.BLOCKED,
                actor=MOLT,
                message="change requests in plain words need the LLM planner, which is not "
                "configured (set ANTHROPIC_API_KEY); `deploy <ref>` works without it",
                data={"check": "planner"},
            )
        started = time.monotonic()
        results = preflight.run_preflight(settings, conn)
        failed = next((r for r in results if not r.ok), None)
        report = [{"name": r.name, "ok": r.ok, "detail": r.detail} for r in results]
        if failed:
            message = f"pre-flight check '{failed.name}' failed: {failed.detail}"
            return blocked(message, failed.name, report)
        untested = autonomy.tests_refusal(settings, conn)
        if untested:
            report.append({"name": "tests required", "ok": False, "detail": untested})
            return blocked(f"pre-flight check 'tests required' failed: {untested}", "tests", report)
        store.transition(
            request_id,
            S.PLANNING,
            actor=MOLT,
            message=f"pre-flight passed in {time.monotonic() - started:.1f}s; planning",
            data={"checks": report},
        )
        return make_plan(settings, conn, request_id)

    return _finishing(store, request_id, checks)


def make_plan(settings: Settings, conn: redis.Redis, request_id: str) -> Request:
    """Plan a request that is in ``planning``; ends in plan_ready, needs_info or failed."""
    store = RequestStore(conn)

    def plan() -> Request:
        request = store.get(request_id)
        if not request.deploys:
            return _plan_change(settings, conn, store, request)
        made = planning.plan_deploy(settings, conn, request.argument)
        shown = made.to_dict()
        if settings.autonomy == "semi":
            store.notify(
                request_id,
                "planning",
                actor=MOLT,
                action="phase_one_before_approval",
                data={
                    "message": f"{made.summary}. Semi mode (MOLT_AUTONOMY=semi): running "
                    "phase 1 in a sandbox before asking for approval"
                },
            )
            shown["phase_one"] = autonomy.phase_one_before_approval(
                settings, conn, request_id, made
            )
        return _plan_ready(settings, conn, request_id, shown, made.summary)

    return _finishing(store, request_id, plan)


def _plan_ready(
    settings: Settings, conn: redis.Redis, request_id: str, plan: dict[str, Any], summary: str
) -> Request:
    """Show the plan; under MOLT_AUTONOMY=auto a low-risk one is approved by Molt at once."""
    store = RequestStore(conn)
    auto = autonomy.approves_itself(settings, plan)
    held = approval.refusal(settings, conn, store.get(request_id)) if auto else ""
    shown = {"expires_in": settings.plan_ttl, "autonomy": settings.autonomy}
    ready = store.transition(
        request_id,
        S.PLAN_READY,
        actor=MOLT,
        message=summary,
        fields={"plan": plan, "plan_ready_at": time.time()},
        data=shown | {"auto": auto and not held, "auto_held": held},
    )
    if not auto or held:
        return ready
    decision = approval.approve_automatically(settings, conn, request_id)
    if not decision:  # something changed in between: show the plan again, with its buttons
        store.notify(
            request_id,
            "plan_ready",
            actor=MOLT,
            action="auto_approve_refused",
            data=shown | {"auto_held": decision.reason},
        )
    return store.get(request_id)


def _plan_change(
    settings: Settings, conn: redis.Redis, store: RequestStore, request: Request
) -> Request:
    """A change in words, planned by the model: a plan, or its questions for the requester."""
    from pipeline.llm.planner import plan_change  # the planner's client loads on first use

    planned = plan_change(settings, conn, request)
    if planned.plan is None:
        asked = "\n".join(f"{n}. {q}" for n, q in enumerate(planned.questions, start=1))
        count = len(planned.questions)
        return store.transition(
            request.id,
            S.NEEDS_INFO,
            actor=MOLT,
            message=f"the planner asked {count} question{'s' if count != 1 else ''}",
            fields={"answers": [*request.answers, f"The planner asked:\n{asked}"]},
            data={"questions": planned.questions},
        )
    return _plan_ready(settings, conn, request.id, planned.plan.to_dict(), planned.plan.summary)


def answer(
    settings: Settings, conn: redis.Redis, request_id: str, who: Origin, text: str
) -> authorisation.Decision:
    """The requester's answers to the planner's questions: plan again with everything said."""
    store = RequestStore(conn)
    request = store.get(request_id)
    if who.principal != request.requester:
        return authorisation.Decision(False, "only the requester can answer the planner")
    allowed = authorisation.may_request(settings, who)
    if not allowed:
        return allowed
    if request.state is not S.NEEDS_INFO:
        return authorisation.Decision(
            False, f"this request is {request.state.value}, not waiting for answers"
        )
    if len(request.answers) >= MAX_FOLLOW_UPS:
        return authorisation.Decision(
            False, "this request has gone back and forth too often: ask again, in full"
        )
    text = redact(" ".join(text.split())[:MAX_TEXT], settings.secrets())
    if not text:
        return authorisation.Decision(False, "say what the answers are")
    try:
        store.transition(
            request_id,
            S.PLANNING,
            actor=who.principal,
            message=f"answered by {who.principal}; planning again",
            fields={"answers": [*request.answers, f"The requester answered: {text}"]},
            allowed_from=frozenset({S.NEEDS_INFO}),
        )
    except MoltError:
        return authorisation.Decision(False, "this request changed meanwhile")
    make_plan(settings, conn, request_id)
    return authorisation.ALLOWED


def revise(
    settings: Settings, conn: redis.Redis, request_id: str, who: Origin, note: str
) -> authorisation.Decision:
    """ "Request changes": void the plan and plan again with the requester's note.

    For a deploy, a note ``deploy <ref>`` replaces the ref; any other note is kept
    with the request for the planner and the record.
    """
    store = RequestStore(conn)
    request = store.get(request_id)
    if who.principal != request.requester:
        allowed = authorisation.may_approve(settings, who, request.requester, "low")
        if not allowed:
            return authorisation.Decision(
                False, "only the requester or an approver may ask for changes"
            )
    if request.state is not S.PLAN_READY:
        return authorisation.Decision(False, f"this plan is {request.state.value}")
    note = redact(" ".join(note.split())[:MAX_TEXT], settings.secrets())
    if not note:
        return authorisation.Decision(False, "say what should change")
    argument = request.argument
    words = note.split()
    follow_up = note
    if request.deploys and len(words) == 2 and words[0].lower() == "deploy":
        argument = words[1]
    elif not request.deploys:
        if len(request.answers) >= MAX_FOLLOW_UPS:
            return authorisation.Decision(
                False, "this request has gone back and forth too often: ask again, in full"
            )
        summary = (request.plan or {}).get("summary", "")
        follow_up = f"Asked to change the previous plan ({summary}): {note}"
    try:
        store.transition(
            request_id,
            S.PLANNING,
            actor=who.principal,
            message=f"changes asked by {who.principal}: {note}",
            fields={
                "plan": None,
                "argument": argument,
                "answers": [*request.answers, follow_up],
            },
            allowed_from=frozenset({S.PLAN_READY}),
        )
    except MoltError:
        return authorisation.Decision(False, "this plan changed meanwhile")
    make_plan(settings, conn, request_id)
    return authorisation.ALLOWED


def _finishing(store: RequestStore, request_id: str, step: Callable[[], Request]) -> Request:
    """Run ``step``; whatever goes wrong, the request ends failed with the reason."""
    try:
        return step()
    except PlanningError as exc:
        return store.transition(
            request_id, S.FAILED, actor=MOLT, message=f"planning: {exc}", phase="planning"
        )
    except Exception as exc:  # every request ends in a terminal state with a message
        log.exception("intake failed", request_id=request_id)
        current = store.get(request_id)
        if current.terminal:
            return current
        return store.transition(
            request_id,
            S.FAILED,
            actor=MOLT,
            message=f"{current.state.value}: {exc}",
            phase=current.state.value,
        )
