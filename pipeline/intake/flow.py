"""A request's way from received to plan_ready: authorise, pre-flight, plan.

``submit`` creates the request and runs the rest; chat front ends call it off
their own threads, since pre-flight may run the target's tests (and, with
MOLT_AUTONOMY=semi, phase 1 of a deploy). Under MOLT_AUTONOMY=auto a low-risk plan
is approved by Molt itself as soon as it is ready (pipeline/intake/autonomy.py). ``retry``
runs a failed or blocked request again from pre-flight; when an approver pressed it and
the new plan is unchanged, the press is its approval (pipeline/intake/approval.py).

``advance`` runs named steps: the gates, pre-flight, planning. A refusal among them
ends the request blocked, its data naming the Decision's check: "switch", "daily
limit", "freeze" (pipeline/intake/freezes.py), the failing pre-flight check's name, or
"tests". A change in words with no planner configured is refused at ``submit`` (check
"planner"), as is a break-glass deploy asked by someone who is not an operator: no Retry
changes either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import redis
import structlog

from pipeline import audit, metrics
from pipeline.config import Settings
from pipeline.exceptions import MoltError, PlanningError
from pipeline.git import Git
from pipeline.intake import approval, autonomy, freezes, preflight
from pipeline.planning import deploys as planning
from pipeline.queue import queueing, workers
from pipeline.queue.targets import Target, of_target
from pipeline.redaction import redact
from pipeline.requests import authorisation, steps
from pipeline.requests.decisions import ALLOWED, Decision
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request, RequestStore
from pipeline.sandbox.records import TestRecord

log = structlog.get_logger(__name__)
MOLT = "molt"
MAX_TEXT = 2000
#: Questions, answers and asked changes one request may collect before it must start anew.
MAX_FOLLOW_UPS = 8
#: The answer once a request has collected MAX_FOLLOW_UPS.
TOO_MANY_FOLLOW_UPS = Decision(
    False, "this request has gone back and forth too often: ask again, in full", "follow-ups"
)


def submit(
    settings: Settings,
    conn: redis.Redis,
    origin: Origin,
    command: str,
    argument: str,
    text: str,
    break_glass: str = "",
    incident: dict[str, Any] | None = None,
    rollout: str = "",
) -> Request:
    """Take a request in and move it as far as it goes without a person; ``break_glass``
    is an operator's reason to deploy into a freeze window; ``incident``, the failure a
    Fix it request must reproduce (pipeline/incidents/failures.py); ``rollout`` the
    rollout's request it is a step of (linked before it is planned)."""
    store = RequestStore(conn)
    known = settings.secrets()
    request = store.create(
        origin,
        redact(text[:MAX_TEXT], known),
        command,
        redact(argument[:MAX_TEXT], known),
        target=settings.target_name if settings.fleet else "",
        break_glass=redact(break_glass[:MAX_TEXT], known),
        incident=incident,
    )
    if rollout:
        steps.link(conn, request.id, rollout)
    # Who may ask, then whether anything here can plan what was asked (a change in words
    # needs the LLM planner): both are refusals, with nothing a Retry could change.
    # A switch that is off says so first (blocked, by the gates).
    decision = authorisation.may_request(settings, origin)
    if decision and autonomy.switched_on(settings, request):
        decision = _planner(settings, request) and freezes.may_break_glass(settings, request)
    if not decision:
        return refuse(store, request, decision)
    if request.break_glass:
        detail = freezes.glass(settings, request) | _named(settings)
        audit.append(
            conn,
            actor=request.requester,
            action="break_glass",
            request_id=request.id,
            detail=detail,
        )
    return advance(settings, conn, request.id)


def refuse(store: RequestStore, request: Request, decision: Decision) -> Request:
    """End ``request`` refused with the decision's reason, counted under its check: who may
    ask, or what cannot be planned, with nothing a Retry could change."""
    metrics.refused(decision.check)
    return store.transition(
        request.id, S.REFUSED, actor=MOLT, message=decision.reason, data={"check": decision.check}
    )


def _named(settings: Settings) -> dict[str, str]:
    return {"target": settings.target_name} if settings.fleet else {}


def _on_worker(
    settings: Settings,
    conn: redis.Redis,
    request_id: str,
    step: str,
    retried_by: Origin | None = None,
) -> Request | None:
    """In a fleet, pre-flight and planning run where the target's checkout is: a job on
    its queue (``pipeline.update.jobs.run_intake``), whose worker answers with the plan as an
    event; a target that no worker serves is blocked at once. None without a fleet: the
    step runs here."""
    if not settings.fleet:
        return None
    store = RequestStore(conn)
    served = workers.serving(settings, conn)
    if not served and step == "plan":  # asked to plan again: it fails, with Retry
        return store.transition(
            request_id, S.FAILED, actor=MOLT, message=served.reason, phase="planning"
        )
    if not served:
        return _block(store, request_id, served)
    queueing.add_intake_job(settings, request_id, step, retried_by)
    return store.get(request_id)


def retry(settings: Settings, conn: redis.Redis, request_id: str, who: Origin) -> Decision:
    """Run a failed or blocked request again from pre-flight."""
    store = RequestStore(conn)
    request = store.get(request_id)
    principal = who.principal
    decision = authorisation.may_request(settings, who)
    if not decision:
        return decision
    if request.state not in (S.FAILED, S.BLOCKED):
        return approval.moved_on(request)
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
        return Decision(False, "this request is already being retried", "late")
    advance(settings, conn, request_id, retried_by=who)
    return ALLOWED


def advance(
    settings: Settings, conn: redis.Redis, request_id: str, *, retried_by: Origin | None = None
) -> Request:
    """Pre-flight and planning, ending in plan_ready, blocked or failed (or, when
    ``retried_by`` already moved it back to pre-flight and approves an unchanged plan by
    that press, queued)."""
    if retried_by is None:
        RequestStore(conn).transition(
            request_id, S.PREFLIGHT, actor=MOLT, message="running pre-flight checks"
        )
    handed = _on_worker(settings, conn, request_id, "check", retried_by)
    return handed or check_and_plan(settings, conn, request_id, retried_by)


def check_and_plan(
    settings: Settings, conn: redis.Redis, request_id: str, retried_by: Origin | None = None
) -> Request:
    """Pre-flight and planning of a request in ``preflight``, where the checkout is."""
    step = partial(_checked_and_planned, retried_by=retried_by)
    return _finishing(settings, conn, request_id, step)


def make_plan(settings: Settings, conn: redis.Redis, request_id: str) -> Request:
    """Plan a request that is in ``planning``; ends in plan_ready, needs_info or failed."""
    handed = _on_worker(settings, conn, request_id, "plan")
    return handed or plan_here(settings, conn, request_id)


def plan_here(settings: Settings, conn: redis.Redis, request_id: str) -> Request:
    """``make_plan`` where the checkout is."""
    return _finishing(settings, conn, request_id, _plan)


def _checked_and_planned(
    settings: Settings, conn: redis.Redis, request_id: str, retried_by: Origin | None = None
) -> Request:
    """The gates, then pre-flight's checks (none waits for the tests); planning if all
    pass, else blocked by the one that refused."""
    store = RequestStore(conn)
    gate = _gates(settings, conn, store.get(request_id))
    if not gate:
        return _block(store, request_id, gate)
    if retried_by is not None:  # a person's Retry runs a remembered failure's tests again
        Target(settings, conn).tests.forget_failure(Git(settings.target_dir).head())
    started = time.monotonic()
    checked, report = _preflight(settings, conn, store.get(request_id))
    if not checked:
        return _block(store, request_id, checked, report)
    store.transition(
        request_id,
        S.PLANNING,
        actor=MOLT,
        message=f"pre-flight passed in {time.monotonic() - started:.1f}s; planning",
        data={"checks": report},
    )
    return _plan(settings, conn, request_id, retried_by)


def _gates(settings: Settings, conn: redis.Redis, request: Request) -> Decision:
    """What refuses a request before any check runs: a switch, the daily limit, no planner,
    a freeze."""
    return (
        autonomy.switched_on(settings, request)
        and autonomy.within_daily_limit(settings, conn, request)
        and _planner(settings, request)
        and freezes.gate(settings, request)
    )


def _planner(settings: Settings, request: Request) -> Decision:
    if request.deploys or settings.llm_enabled:
        return ALLOWED
    return Decision(
        False,
        "change requests in plain words need the LLM planner, which is not configured "
        "(set ANTHROPIC_API_KEY); `deploy <ref>` works without it",
        "planner",
    )


def _preflight(
    settings: Settings, conn: redis.Redis, request: Request
) -> tuple[Decision, list[dict[str, Any]]]:
    """Run the pre-flight checks, a failure of the tests already known, and
    MOLT_REQUIRE_TESTS: the first refusal, and the report of every check run (what the
    blocked and planning messages list)."""
    results = preflight.run_preflight(settings, conn)
    if all(results) and tests_first(request):
        results.append(preflight.known_failure(settings, conn, Git(settings.target_dir).head()))
    report = [{"name": r.check, "ok": r.allowed, "detail": r.reason} for r in results if r.reason]
    failed = next((r for r in results if not r), None)
    if failed is not None:
        message = f"pre-flight check '{failed.check}' failed: {failed.reason}"
        return replace(failed, reason=message), report
    untested = autonomy.tests_countable(settings, conn)
    if not untested:
        report.append({"name": "tests required", "ok": False, "detail": untested.reason})
        message = f"pre-flight check 'tests required' failed: {untested.reason}"
        return replace(untested, reason=message), report
    return ALLOWED, report


def tests_first(request: Request) -> bool:
    """Whether the target's tests must pass at its current commit before the update: not
    for a rollback, which leaves that commit (its failing tests may be why)."""
    return request.command != "rollback"


def _tests(settings: Settings, conn: redis.Redis, request: Request) -> dict[str, Any]:
    """The pre-flight test run at the live commit, started if nobody runs it, as the plan
    shows it; {} for a rollback."""
    if not tests_first(request):
        return {}
    head = Git(settings.target_dir).head()
    done = partial(_tests_done, settings)
    return preflight.start_tests(settings, conn, head, done).to_dict()


def _tests_done(settings: Settings, conn: redis.Redis, record: TestRecord) -> None:
    """The pre-flight run finished: each plan still waiting that was shown with the run
    under way is shown again with how it ended (a status message updated in place)."""
    store = RequestStore(conn)
    state = preflight.tests_state(settings, conn, record.commit)
    if state is None:
        return
    for request in store.active():
        plan = request.plan or {}
        if (
            request.state is S.PLAN_READY
            and of_target(settings, request)
            and plan.get("base_commit") == record.commit
        ):
            store.notify(
                request.id,
                "plan_ready",
                actor=MOLT,
                action="preflight_tests_done",
                data={
                    "expires_in": settings.plan_ttl,
                    "autonomy": settings.autonomy,
                    "tests": state.to_dict(),
                },
                only_in=S.PLAN_READY,
                again=True,
            )


def _block(
    store: RequestStore,
    request_id: str,
    decision: Decision,
    report: list[dict[str, Any]] | None = None,
) -> Request:
    """End the request blocked: the refusal's reason, its check, and the checks run."""
    data: dict[str, Any] = {"check": decision.check}
    metrics.refused(decision.check)
    fields: dict[str, Any] = {}
    if report is not None:
        data["checks"] = report
        fields["result"] = {"checks": report}  # what the status page lists of a blocked one
    return store.transition(
        request_id, S.BLOCKED, actor=MOLT, message=decision.reason, data=data, fields=fields
    )


def _plan(
    settings: Settings, conn: redis.Redis, request_id: str, retried_by: Origin | None = None
) -> Request:
    """A deploy's plan (under MOLT_AUTONOMY=semi with its phase 1 run), or a change's (always
    posted for approval: a retry plans it anew)."""
    store = RequestStore(conn)
    request = store.get(request_id)
    if not request.deploys:  # the model takes a while: the tests run meanwhile
        return _plan_change(settings, conn, store, request, _tests(settings, conn, request))
    # An unknown ref ends here.
    made = planning.plan_deploy(settings, conn, request.argument, request.rollback_of)
    tests = _tests(settings, conn, request)
    shown = made.to_dict()
    if request.break_glass:  # the plan shows the freeze it breaks, and why
        shown["break_glass"] = freezes.glass(settings, request)
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
        shown["phase_one"] = autonomy.phase_one_before_approval(settings, conn, request_id, made)
        tests = _tests(settings, conn, request)
    return _plan_ready(settings, conn, request_id, shown, made.summary, retried_by, tests)


def _plan_ready(
    settings: Settings,
    conn: redis.Redis,
    request_id: str,
    plan: dict[str, Any],
    summary: str,
    retried_by: Origin | None = None,
    tests: dict[str, Any] | None = None,
) -> Request:
    """Show the plan, with how the pre-flight test run stands (``tests``), and approve it at
    once when its approver is known already: the one who pressed Retry, if it is
    unchanged; under MOLT_AUTONOMY=auto, Molt if it is low risk."""
    store = RequestStore(conn)
    request = store.get(request_id)  # its plan is still the one before this one
    presser = None
    if retried_by is not None and approval.approves_on_retry(settings, retried_by, request, plan):
        presser = retried_by
    recovery = presser is None and autonomy.recovers_itself(settings, request)
    auto = presser is None and (recovery or autonomy.approves_itself(settings, plan))
    auto = auto and not request.break_glass  # a second operator approves those
    if steps.rollout_of(conn, request_id):  # a rollout's step: its rollout approves it in turn
        presser, recovery, auto = None, False, False
    held = approval.approvable(settings, conn, request) if auto or presser else ALLOWED
    shown = {"expires_in": settings.plan_ttl, "autonomy": settings.autonomy, "tests": tests or {}}
    held_key = "retry_held" if presser else "auto_held"
    at_once = {
        "auto": auto and held.allowed,
        "approved_on_retry": presser.principal if presser and held else "",
        held_key: "" if held else held.reason,
    }
    ready = store.transition(
        request_id,
        S.PLAN_READY,
        actor=MOLT,
        message=summary,
        fields={"plan": plan, "plan_ready_at": time.time()},
        data=shown | at_once,
    )
    if not (auto or presser) or not held:
        return ready
    if presser is not None:
        decision = approval.approve_on_retry(settings, conn, request_id, presser)
    elif recovery:
        decision = approval.approve_recovery(settings, conn, request_id)
    else:
        decision = approval.approve_automatically(settings, conn, request_id)
    if not decision:
        # something changed in between: show the plan again, with its buttons
        store.notify(
            request_id,
            "plan_ready",
            actor=MOLT,
            action=f"{'retry' if presser else 'auto'}_approve_refused",
            data=shown | {held_key: decision.reason},
            only_in=S.PLAN_READY,
        )
    return store.get(request_id)


def _plan_change(
    settings: Settings,
    conn: redis.Redis,
    store: RequestStore,
    request: Request,
    tests: dict[str, Any],
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
    plan = planned.plan
    return _plan_ready(settings, conn, request.id, plan.to_dict(), plan.summary, tests=tests)


def answer(
    settings: Settings, conn: redis.Redis, request_id: str, who: Origin, text: str
) -> Decision:
    """The requester's answers to the planner's questions: plan again with everything said."""
    store = RequestStore(conn)
    request = store.get(request_id)
    if who.principal != request.requester:
        return Decision(False, "only the requester can answer the planner", authorisation.CHECK)
    allowed = authorisation.may_request(settings, who)
    if not allowed:
        return allowed
    if request.state is not S.NEEDS_INFO:
        return approval.moved_on(request, "answers")
    if len(request.answers) >= MAX_FOLLOW_UPS:
        return TOO_MANY_FOLLOW_UPS
    text = redact(" ".join(text.split())[:MAX_TEXT], settings.secrets())
    if not text:
        return Decision(False, "say what the answers are", "empty")
    return _plan_again(
        settings,
        conn,
        request,
        who,
        f"answered by {who.principal}; planning again",
        {"answers": [*request.answers, f"The requester answered: {text}"]},
    )


def revise(
    settings: Settings, conn: redis.Redis, request_id: str, who: Origin, note: str
) -> Decision:
    """ "Request changes": void the plan and plan again with the requester's note.

    For a deploy, a note ``deploy <ref>`` replaces the ref; any other note is kept
    with the request for the planner and the record.
    """
    store = RequestStore(conn)
    request = store.get(request_id)
    if who.principal != request.requester:
        allowed = authorisation.may_approve(settings, who, request.requester, "low")
        if not allowed:
            return Decision(
                False, "only the requester or an approver may ask for changes", allowed.check
            )
    if request.state is not S.PLAN_READY:
        return approval.moved_on(request)
    note = redact(" ".join(note.split())[:MAX_TEXT], settings.secrets())
    if not note:
        return Decision(False, "say what should change", "empty")
    argument = request.argument
    words = note.split()
    follow_up = note
    if request.deploys and len(words) == 2 and words[0].lower() == "deploy":
        argument = words[1]
    elif not request.deploys:
        if len(request.answers) >= MAX_FOLLOW_UPS:
            return TOO_MANY_FOLLOW_UPS
        summary = (request.plan or {}).get("summary", "")
        follow_up = f"Asked to change the previous plan ({summary}): {note}"
    return _plan_again(
        settings,
        conn,
        request,
        who,
        f"changes asked by {who.principal}: {note}",
        {"plan": None, "argument": argument, "answers": [*request.answers, follow_up]},
    )


def _plan_again(
    settings: Settings,
    conn: redis.Redis,
    request: Request,
    who: Origin,
    message: str,
    fields: dict[str, Any],
) -> Decision:
    """Back to planning from where ``request`` waited (its questions, or its plan), once:
    a request that moved on meanwhile is not planned twice."""
    try:
        RequestStore(conn).transition(
            request.id,
            S.PLANNING,
            actor=who.principal,
            message=message,
            fields=fields,
            allowed_from=frozenset({request.state}),
        )
    except MoltError:
        changed = "plan" if request.state is S.PLAN_READY else "request"
        return Decision(False, f"this {changed} changed meanwhile", "late")
    make_plan(settings, conn, request.id)
    return ALLOWED


def _finishing(
    settings: Settings,
    conn: redis.Redis,
    request_id: str,
    step: Callable[[Settings, redis.Redis, str], Request],
) -> Request:
    """Run ``step``; whatever goes wrong, the request ends failed with the reason."""
    store = RequestStore(conn)
    try:
        return step(settings, conn, request_id)
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
