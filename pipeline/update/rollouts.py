"""Rollouts: one commit through several targets in turn (``[rollouts.<name>]``).

A rollout is a request of its own (command ``rollout``, its target the rollout's name)
whose steps are ordinary requests of their targets, linked to it by
pipeline/requests/steps.py. ``plan`` creates it and plans every step on its target's
worker; ``advance``, run by the ``Driver`` on every event of a rollout or of one of its
steps, moves it on: once each step has its plan, the gate (``from`` and ``soak``) and one
plan of the whole; once approved (the gate checked again), each step approved in turn as
the one before it ended well, watch window included; a failed step or a ``stop`` ends it
failed, rolling the steps already done back as ``on_failure`` says, newest first, each as
a ``rollback`` request of its target. States change only through
``RequestStore.transition``; what a rollout knows of its steps is its ``result``.

A freeze (pipeline/intake/freezes.py) on any step's target blocks the rollout at plan time
and at the approval; one met when a step's turn comes blocks it there, the steps done
rolled back as ``on_failure`` says. ``--break-glass <reason>`` is for an operator of every
step's target, and only a second such operator approves it; each step then carries the
reason. The rollbacks of steps are never held: not by a freeze, a pause, observe mode or
the daily limit. One bot process at a time moves a rollout on: a Redis lock per rollout
(``keyspace.rollout_advancing``), so that bots sharing a Redis never drive it twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
import structlog
from redis.exceptions import LockError

from pipeline import audit, keyspace, metrics
from pipeline.config import ROLLBACK_ALL, Rollout, Settings
from pipeline.exceptions import IllegalTransition, MoltError
from pipeline.incidents.book import OPEN, IncidentBook
from pipeline.intake import approval, control, freezes
from pipeline.intake import flow as intake
from pipeline.redaction import redact
from pipeline.requests import authorisation, steps
from pipeline.requests.decisions import ALLOWED, Decision
from pipeline.requests.states import TERMINAL
from pipeline.requests.states import RequestState as S
from pipeline.requests.steps import ROLLOUT
from pipeline.requests.store import Origin, Request, RequestStore
from pipeline.streams import StreamReader

log = structlog.get_logger(__name__)
MOLT = "molt"
#: A step that has not started yet: its plan waits for its turn.
_NOT_STARTED = frozenset({S.RECEIVED, S.PREFLIGHT, S.PLANNING, S.PLAN_READY})
#: A step's plan that will never run (planned again when its turn comes).
_UNRUN = frozenset({S.EXPIRED, S.CANCELLED, S.REJECTED})
_PLAN_READY = frozenset({S.PLAN_READY})
_RANK = {"low": 0, "medium": 1, "high": 2}
#: Seconds one process may hold a rollout while moving it on (the lock then expires, should
#: it die holding it), and waits for another's hold before leaving it to the next sweep.
HOLD_SECONDS = 60.0
#: The rollouts this thread holds, so that moving one on may move it on again within.
_HELD = threading.local()


@dataclass(frozen=True)
class Gate(Decision):
    """Whether the commit may go out: the update of it that succeeded on ``from``, when its
    watch ended, and how long it has soaked since."""

    shown: dict[str, Any] = field(default_factory=dict, kw_only=True)


# -- planning ----------------------------------------------------------------------


def plan(
    settings: Settings,
    conn: redis.Redis,
    origin: Origin,
    name: str,
    ref: str,
    text: str,
    break_glass: str = "",
) -> Request:
    """``deploy <rollout> <ref>``: a rollout request, each of its steps planned on its target;
    ``break_glass`` is an operator's reason to deploy into the freezes of its steps."""
    rollout = settings.rollout(name)
    store = RequestStore(conn)
    known = settings.secrets()
    reason = redact(break_glass[: intake.MAX_TEXT], known)
    request = store.create(origin, text, ROLLOUT, ref, target=name, break_glass=reason)
    decision = _may_request(settings, rollout, origin)
    decision = decision and _may_break_glass(settings, rollout, request)
    if not decision:
        return intake.refuse(store, request, decision)
    if request.break_glass:
        audit.append(
            conn,
            actor=request.requester,
            action="break_glass",
            request_id=request.id,
            detail={"rollout": name} | _glass(settings, rollout, request),
        )
    return _plan_steps(settings, conn, request, actor=MOLT)


def _may_request(settings: Settings, rollout: Rollout, origin: Origin) -> Decision:
    """Whoever may ask for an update of every step's target may ask for the rollout."""
    for target in rollout.steps:
        decision = authorisation.may_request(settings.for_target(target), origin)
        if not decision:
            return decision
    return ALLOWED


def _may_break_glass(settings: Settings, rollout: Rollout, request: Request) -> Decision:
    """Only an operator of every step's target may ask to deploy into their freezes."""
    if not request.break_glass:
        return ALLOWED
    for target in rollout.steps:
        if not authorisation.may_operate(settings.for_target(target), request.origin):
            return Decision(
                False,
                f"only an operator of every step's target may break glass: not of {target} "
                "(operators)",
                authorisation.CHECK,
            )
    return ALLOWED


def _may_approve_glass(
    settings: Settings, rollout: Rollout, who: Origin, request: Request
) -> Decision:
    """A break-glass rollout is approved by a second operator of every step's target."""
    for target in rollout.steps if request.break_glass else ():
        decision = freezes.may_approve(settings.for_target(target), who, request)
        if not decision:
            return decision
    return ALLOWED


def _frozen(settings: Settings, rollout: Rollout, now: datetime) -> list[freezes.Frozen]:
    """The steps whose targets are frozen at ``now``, in their order."""
    found = (freezes.frozen(settings.for_target(t), now) for t in rollout.steps)
    return [f for f in found if f is not None]


def _break_glass_hint(rollout: Rollout) -> str:
    return (
        "To deploy anyway, an operator of every step's target may break glass: "
        f"`deploy {rollout.name} <ref> --break-glass <reason>`, which a second operator approves"
    )


def check_freezes(
    settings: Settings,
    rollout: Rollout,
    request: Request,
    targets: tuple[str, ...] = (),
    now: datetime | None = None,
) -> Decision:
    """At plan time, at the approval and when each step starts: a freeze on a step's target
    (``targets``, default every step's) blocks the rollout, saying until when and how to break
    glass; a break-glass rollout goes on (a second operator approves it)."""
    if request.break_glass:
        return ALLOWED
    now = now or datetime.now(UTC)
    held = [f for f in _frozen(settings, rollout, now) if f.target in (targets or rollout.steps)]
    if not held:
        return ALLOWED
    said = "; ".join(f.message(now) for f in held)
    return Decision(False, f"{said}. {_break_glass_hint(rollout)}", freezes.CHECK)


def _glass(settings: Settings, rollout: Rollout, request: Request) -> dict[str, Any]:
    """What a break-glass rollout's plan shows and the audit keeps: why, by whom, and each
    frozen step with its freeze."""
    now = datetime.now(UTC)
    frozen = [
        {"target": f.target, "freeze": f.message(now)} for f in _frozen(settings, rollout, now)
    ]
    return {"reason": request.break_glass, "by": request.requester, "frozen": frozen}


def _plan_steps(
    settings: Settings, conn: redis.Redis, request: Request, *, actor: str, retry: bool = False
) -> Request:
    """A step request per target, each planned where its checkout is (its worker); none
    while a step's target is frozen: the rollout is blocked, saying so."""
    store = RequestStore(conn)
    rollout = settings.rollout(request.target)
    with _advancing(conn, request.id):
        held = check_freezes(settings, rollout, request)
        planned = []
        for target in rollout.steps if held else ():
            step = _step_request(conn, request, target)
            planned.append({"target": target, "request_id": step.id})
        message = f"planning {', '.join(rollout.steps)}, each on its target"
        fields: dict[str, Any] = {"result": {"steps": planned}, "plan": None}
        if retry:
            fields |= {"attempt": request.attempt + 1, "codename": ""}
        store.transition(
            request.id,
            S.PREFLIGHT,
            actor=actor,
            message=message if held else "checking the freeze windows",
            fields=fields,
            allowed_from=frozenset({S.FAILED, S.BLOCKED} if retry else {S.RECEIVED}),
        )
        if not held:
            return _blocked(conn, store.get(request.id), [], held)
        for planned_step in planned:
            view = settings.for_target(planned_step["target"])
            intake.advance(view, conn, planned_step["request_id"])
        return advance(settings, conn, request.id)


def _step_request(conn: redis.Redis, rollout: Request, target: str) -> Request:
    """An ordinary deploy of ``target``, a step of ``rollout`` (through its freeze, if the
    rollout breaks glass)."""
    store = RequestStore(conn)
    step = store.create(
        rollout.origin,
        f"deploy {target} {rollout.argument}",
        "deploy",
        rollout.argument,
        target=target,
        break_glass=rollout.break_glass,
    )
    steps.link(conn, step.id, rollout.id)
    return step


def check_gate(
    settings: Settings, conn: redis.Redis, rollout: Rollout, commit: str, now: float = 0.0
) -> Gate:
    """Whether ``commit`` succeeded on the rollout's ``from``, stayed there since, and has
    soaked there (watched, with no open incident) for ``soak``; the reason if not."""
    if not rollout.source:
        return Gate(True)
    now = now or time.time()
    source, short = rollout.source, commit[:7]
    store = RequestStore(conn)
    landed = [
        r
        for r in store.recent(200)
        if r.target == source and r.state is S.SUCCEEDED and r.deploys and r.plan
    ]
    update = next((r for r in landed if (r.plan or {}).get("target_commit") == commit), None)
    if update is None:
        reason = f"{short} never succeeded on {source}: deploy it there first"
        return Gate(False, reason, "gate")
    since = update.updated_at  # its watch ended well: the update succeeded
    shown: dict[str, Any] = {
        "source": source,
        "landed": update.codename or update.id,
        "watch_ended_at": since,
        "soak": rollout.soak,
        "soaked": now - since,
    }
    newest = landed[0]
    if (newest.plan or {}).get("target_commit") != commit:
        replaced = str((newest.plan or {}).get("target_commit", ""))[:7]
        reason = (
            f"{short} no longer runs on {source}: {newest.codename or newest.id} "
            f"replaced it with {replaced}"
        )
        return Gate(False, reason, "gate", shown=shown)
    incident = next(
        (i for i in IncidentBook(settings.for_target(source), conn).recent(50) if i.status == OPEN),
        None,
    )
    if incident is not None:
        reason = (
            f"{source} has an open incident ({incident.id}: {incident.summary}); "
            f"{short} goes on once it is resolved"
        )
        return Gate(False, reason, "gate", shown=shown | {"incident": incident.id})
    if now - since < rollout.soak:
        ready = since + rollout.soak
        reason = (
            f"{short} has soaked on {source} for {_soak_words(now - since, rollout.soak)}; "
            f"ready at {_clock(ready, rollout.soak)}"
        )
        return Gate(False, reason, "gate", shown=shown | {"ready_at": ready})
    return Gate(
        True, f"{short} soaked on {source} since {_clock(since, rollout.soak)}", shown=shown
    )


def _soak_words(soaked: float, soak: float) -> str:
    """ "3 min of 10" (or, for a soak under a minute, "12 s of 30")."""
    if soak >= 60:
        return f"{int(soaked // 60)} min of {soak / 60:g}"
    return f"{int(soaked)} s of {soak:g}"


def _clock(at: float, soak: float) -> str:
    shape = "%H:%M" if soak >= 60 else "%H:%M:%S"
    return datetime.fromtimestamp(at, tz=UTC).strftime(shape) + " UTC"


# -- moving a rollout on ----------------------------------------------------------


@contextmanager
def _advancing(conn: redis.Redis, request_id: str) -> Iterator[bool]:
    """Hold the rollout while moving it on: one thread of one bot process at a time, however
    many share the Redis (a lock there, per rollout); the thread holding it may take it again.
    False if another held it for all of ``HOLD_SECONDS``: the next event or sweep tries again."""
    held: set[str] = _HELD.__dict__.setdefault("ids", set())
    if request_id in held:
        yield True
        return
    lock = conn.lock(
        keyspace.rollout_advancing(request_id),
        timeout=HOLD_SECONDS,
        blocking_timeout=HOLD_SECONDS,
        thread_local=False,
    )
    if not lock.acquire():
        yield False
        return
    held.add(request_id)
    try:
        yield True
    finally:
        held.discard(request_id)
        with suppress(LockError):  # held past its time: it expired
            lock.release()


def advance(settings: Settings, conn: redis.Redis, request_id: str) -> Request:
    """Do what the rollout's state and its steps' states call for next; safe to run again."""
    with _advancing(conn, request_id) as holding:
        store = RequestStore(conn)
        request = store.get(request_id)
        if not holding:
            log.warning("rollout held elsewhere too long", request_id=request_id)
            return request
        if request.command != ROLLOUT:
            return request
        if request.terminal:  # a step planned after its rollout ended never runs
            _cancel_plans(conn, _steps(conn, request), f"its rollout {request.state.value}")
            return request
        try:
            if request.state is S.PREFLIGHT:
                return _planned(settings, conn, request)
            if request.state in (S.QUEUED, S.RUNNING):
                return _drive(settings, conn, request)
        except MoltError as exc:
            log.warning("rollout did not move on", request_id=request_id, error=str(exc))
        return store.get(request_id)


def _steps(conn: redis.Redis, request: Request) -> list[Request]:
    store = RequestStore(conn)
    return [store.get(s["request_id"]) for s in (request.result or {}).get("steps", [])]


def _planned(settings: Settings, conn: redis.Redis, request: Request) -> Request:
    """Once every step has its plan (or one cannot have one): one plan of the whole, or
    blocked saying why."""
    store = RequestStore(conn)
    children = _steps(conn, request)
    if any(c.state is not S.PLAN_READY and not c.terminal for c in children):
        return request  # still planning
    rollout = settings.rollout(request.target)
    held = check_freezes(settings, rollout, request)  # one may have begun meanwhile
    if not held:
        return _blocked(conn, request, children, held)
    unready = next((c for c in children if c.state is not S.PLAN_READY), None)
    if unready is not None:
        reason = f"step {unready.target}: {unready.message or unready.state.value}"
        return _blocked(conn, request, children, Decision(False, reason, "step"))
    commits = {str((c.plan or {}).get("target_commit", "")) for c in children}
    if len(commits) != 1:
        shown = ", ".join(sorted(c[:7] for c in commits))
        reason = f"the steps' targets find {request.argument!r} at different commits ({shown})"
        return _blocked(conn, request, children, Decision(False, reason, "step"))
    commit = commits.pop()
    gate = check_gate(settings, conn, rollout, commit)
    if not gate:
        return _blocked(conn, request, children, gate)
    store.transition(request.id, S.PLANNING, actor=MOLT, message="every step is planned")
    whole = _whole_plan(request, rollout, children, commit, gate)
    if request.break_glass:  # the plan shows each freeze it breaks, and why
        whole["break_glass"] = _glass(settings, rollout, request)
    return store.transition(
        request.id,
        S.PLAN_READY,
        actor=MOLT,
        message=whole["summary"],
        fields={"plan": whole, "plan_ready_at": time.time()},
        data={"expires_in": settings.plan_ttl},
    )


def _whole_plan(
    request: Request, rollout: Rollout, children: list[Request], commit: str, gate: Gate
) -> dict[str, Any]:
    planned = []
    for child in children:
        child_plan = child.plan or {}
        planned.append(
            {
                "target": child.target,
                "request_id": child.id,
                "base_commit": child_plan.get("base_commit", ""),
                "risk": child_plan.get("risk", {}),
                "summary": child_plan.get("summary", ""),
            }
        )
    levels = [str(p["risk"].get("level", "low")) for p in planned]
    level = max(levels, key=lambda lv: _RANK.get(lv, 0))
    reasons = [f"{p['target']}: {r}" for p in planned for r in p["risk"].get("reasons", [])]
    then = ", then ".join(rollout.steps)
    return {
        "kind": ROLLOUT,
        "rollout": rollout.name,
        "ref": request.argument,
        "target_commit": commit,
        "summary": f"roll {commit[:7]} out to {then}",
        "gate": gate.shown | ({"note": gate.reason} if gate.reason else {}),
        "steps": planned,
        "on_failure": rollout.on_failure,
        "risk": {"level": level, "reasons": reasons},
    }


def _blocked(
    conn: redis.Redis,
    request: Request,
    children: list[Request],
    decision: Decision,
    allowed_from: frozenset[S] | None = None,
) -> Request:
    _cancel_plans(conn, children, "its rollout was blocked")
    metrics.refused(decision.check)
    data: dict[str, Any] = {"check": decision.check}
    if isinstance(decision, Gate) and decision.shown:
        data["gate"] = decision.shown
    return RequestStore(conn).transition(
        request.id,
        S.BLOCKED,
        actor=MOLT,
        message=decision.reason,
        data=data,
        allowed_from=allowed_from,
    )


def _cancel_plans(conn: redis.Redis, children: list[Request], why: str) -> None:
    """Steps whose plans will not run end cancelled, saying why."""
    store = RequestStore(conn)
    for child in children:
        if child.state in (S.PLAN_READY, S.NEEDS_INFO):
            with suppress(IllegalTransition):
                store.transition(
                    child.id,
                    S.CANCELLED,
                    actor=MOLT,
                    message=why,
                    allowed_from=frozenset({child.state}),
                )


def approve(settings: Settings, conn: redis.Redis, request_id: str, who: Origin) -> Decision:
    """One approval starts the rollout: by one of its ``approvers`` (or of every step's
    target), someone other than its requester for a high-risk step, a second operator of
    every step's target for a break-glass one. The gate and the freezes are checked again
    first: either ends the rollout blocked, saying why, as at plan time."""
    store = RequestStore(conn)
    request = store.get(request_id)
    rollout = settings.rollout(request.target)
    plan = request.plan or {}
    level = str(plan.get("risk", {}).get("level", "low"))
    decision = _may_approve(settings, rollout, who, request.requester, level)
    decision = decision and _may_approve_glass(settings, rollout, who, request)
    if decision and approval.expire_if_due(settings, store, request):
        decision = Decision(False, "this plan has expired: ask again", "expired")
    if decision and request.state is not S.PLAN_READY:
        decision = approval.moved_on(request)
    if not decision:
        return _refuse(store, request, who, "approve", decision)
    with _advancing(conn, request.id) as holding:
        if not holding:
            busy = Decision(False, "another Molt is moving this rollout on: press again", "late")
            return _refuse(store, request, who, "approve", busy)
        commit = str(plan.get("target_commit", ""))
        held: Decision = check_gate(settings, conn, rollout, commit)
        held = held and check_freezes(settings, rollout, request)
        if not held:
            try:
                _blocked(conn, request, _steps(conn, request), held, allowed_from=_PLAN_READY)
            except IllegalTransition:
                return _refuse(
                    store, request, who, "approve", approval.moved_on(store.get(request.id))
                )
            return held
        moved = _answer(store, request, who, "approve", S.APPROVED)
        if not moved:
            return moved
        if request.break_glass:  # a second operator let it through the freezes: on the record
            audit.append(
                conn,
                actor=who.principal,
                action="break_glass_approved",
                request_id=request.id,
                detail={
                    "rollout": rollout.name,
                    "reason": request.break_glass,
                    "requester": request.requester,
                },
            )
        result = (request.result or {}) | {"started_at": time.time()}
        store.transition(
            request.id,
            S.QUEUED,
            actor=MOLT,
            message=f"starting with {rollout.steps[0]}, the canary",
            fields={"result": result},
        )
        advance(settings, conn, request.id)
    return ALLOWED


def _answer(store: RequestStore, request: Request, who: Origin, verb: str, to: S) -> Decision:
    """The rollout's plan approved or rejected by ``who``, unless it moved on meanwhile."""
    done = "approved" if to is S.APPROVED else "rejected"
    try:
        store.transition(
            request.id,
            to,
            actor=who.principal,
            message=f"{done} by {who.principal}",
            fields={"approver": who.principal},
            allowed_from=frozenset({S.PLAN_READY}),
        )
    except IllegalTransition:
        return _refuse(store, request, who, verb, approval.moved_on(store.get(request.id)))
    return ALLOWED


def _may_approve(
    settings: Settings, rollout: Rollout, who: Origin, requester: str, level: str
) -> Decision:
    if rollout.approvers:  # the rollout's own list, read as any list of people (groups too)
        named = settings.model_copy(update={"approvers": list(rollout.approvers)})
        return authorisation.may_approve(named, who, requester, level)
    for target in rollout.steps:
        decision = authorisation.may_approve(settings.for_target(target), who, requester, level)
        if not decision:
            return decision
    return ALLOWED


def reject(settings: Settings, conn: redis.Redis, request_id: str, who: Origin) -> Decision:
    """Reject the rollout; its steps' plans end with it."""
    store = RequestStore(conn)
    request = store.get(request_id)
    decision = _may_approve(settings, settings.rollout(request.target), who, "", "low")
    if not decision:
        return _refuse(store, request, who, "reject", decision)
    moved = _answer(store, request, who, "reject", S.REJECTED)
    if not moved:
        return moved
    _cancel_plans(conn, _steps(conn, request), f"its rollout was rejected by {who.principal}")
    return ALLOWED


def retry(settings: Settings, conn: redis.Redis, request_id: str, who: Origin) -> Decision:
    """Retry plans the rollout again, from its steps' plans to the gate."""
    store = RequestStore(conn)
    request = store.get(request_id)
    rollout = settings.rollout(request.target)
    decision = _may_request(settings, rollout, who)
    if decision and request.state not in (S.FAILED, S.BLOCKED):
        decision = approval.moved_on(request)
    if not decision:
        return _refuse(store, request, who, "retry", decision)
    try:
        _plan_steps(settings, conn, request, actor=who.principal, retry=True)
    except IllegalTransition:
        return _refuse(store, request, who, "retry", Decision(False, "already retried", "late"))
    return ALLOWED


def _refuse(
    store: RequestStore, request: Request, who: Origin, action: str, decision: Decision
) -> Decision:
    """Tell the one who pressed, and only them, why nothing changed."""
    store.notify(
        request.id,
        "not_allowed",
        actor=who.principal,
        action=f"{action}_refused",
        audience=who.principal,
        data={"reason": decision.reason},
    )
    return decision


def _drive(settings: Settings, conn: redis.Redis, request: Request) -> Request:
    """Approved: the next step approved as the one before it ended well; the end."""
    result = request.result or {}
    if "failed" in result:
        return _rolling_back(settings, conn, request)
    children = _steps(conn, request)
    for index, child in enumerate(children):
        if child.state is S.SUCCEEDED:
            continue
        if result.get("stop") and child.state in _NOT_STARTED | _UNRUN:
            return _fail(settings, conn, request, child.target, f"stopped by {result['stop']}")
        if child.state is S.PLAN_READY:
            return _start_step(settings, conn, request, child)
        if child.state in _UNRUN:  # its plan expired while the steps before it ran
            return _plan_again(settings, conn, request, index)
        if child.state is S.FAILED and child.phase == freezes.CHECK:  # held at its start
            return _held_by_freeze(settings, conn, request, child)
        if child.terminal:  # failed (rolled back as any update), blocked or refused
            reason = child.message or child.state.value
            if result.get("stop"):
                reason = f"stopped by {result['stop']}: {reason}"
            return _fail(settings, conn, request, child.target, reason)
        return request  # planning again, queued or running: its events bring us back
    return _finish(conn, request, S.SUCCEEDED, _succeeded_message(request, children))


def _start_step(settings: Settings, conn: redis.Redis, request: Request, child: Request) -> Request:
    """The step's turn: its freeze checked, then its plan approved with the rollout."""
    store = RequestStore(conn)
    rollout = settings.rollout(request.target)
    if not check_freezes(settings, rollout, request, (child.target,)):
        return _held_by_freeze(settings, conn, request, child)
    view = settings.for_target(child.target)
    platform, _, user = request.approver.partition(":")
    who = Origin(platform, user, request.origin.channel)
    decision = approval.approve_step(view, conn, child.id, who, request.codename or request.id)
    if not decision:
        return _fail(settings, conn, request, child.target, f"approving it: {decision.reason}")
    return store.transition(
        request.id,
        S.RUNNING,
        actor=MOLT,
        message=f"updating {child.target}",
        phase=child.target,
    )


def _plan_again(settings: Settings, conn: redis.Redis, request: Request, index: int) -> Request:
    """A step whose plan did not wait for its turn is planned again, as a request anew."""
    store = RequestStore(conn)
    result = dict(request.result or {})
    planned = [dict(s) for s in result.get("steps", [])]
    step = _step_request(conn, request, planned[index]["target"])
    planned[index]["request_id"] = step.id
    store.update(request.id, result=result | {"steps": planned})
    intake.advance(settings.for_target(step.target), conn, step.id)
    return store.get(request.id)


def _held_by_freeze(
    settings: Settings, conn: redis.Redis, request: Request, child: Request
) -> Request:
    """A step whose turn came in a freeze: the rollout ends blocked, saying until when and how
    to break glass, the steps done rolled back as ``on_failure`` says (rollbacks are never
    frozen)."""
    rollout = settings.rollout(request.target)
    now = datetime.now(UTC)
    found = freezes.frozen(settings.for_target(child.target), now)
    said = found.message(now) if found else freezes.without_hint(child.message)
    return _fail(settings, conn, request, child.target, said, hint=_break_glass_hint(rollout))


def _fail(
    settings: Settings,
    conn: redis.Redis,
    request: Request,
    target: str,
    reason: str,
    hint: str = "",
) -> Request:
    """A step failed (or the rollout was stopped, or a step met a freeze, ``hint`` saying how
    to break it): the steps already done are rolled back as ``on_failure`` says, newest first;
    the rollout ends once they are, blocked by a freeze, else failed."""
    rollout = settings.rollout(request.target)
    children = _steps(conn, request)
    _cancel_plans(conn, children, f"its rollout stopped at {target}")
    done = [c for c in children if c.state is S.SUCCEEDED]
    undo = list(reversed(done)) if rollout.on_failure == ROLLBACK_ALL else []
    result = dict(request.result or {}) | {
        "failed": {"target": target, "reason": reason} | ({"hint": hint} if hint else {}),
        "rollbacks": [
            {"target": c.target, "of": c.codename or c.id, "request_id": ""} for c in undo
        ],
        "kept": [c.target for c in done] if not undo else [],
    }
    RequestStore(conn).update(request.id, result=result)
    audit.append(
        conn,
        actor=MOLT,
        action="rollout_step_failed",
        request_id=request.id,
        detail={
            "target": target,
            "reason": reason,
            "rolling_back": [c.target for c in undo],
            "check": freezes.CHECK if hint else "step",
        },
    )
    return _rolling_back(settings, conn, RequestStore(conn).get(request.id))


def _rolling_back(settings: Settings, conn: redis.Redis, request: Request) -> Request:
    """One rollback at a time, newest step first, each a ``rollback`` request of its target
    approved with the rollout; then the rollout ends failed."""
    store = RequestStore(conn)
    result = dict(request.result or {})
    rollbacks = [dict(r) for r in result.get("rollbacks", [])]
    for entry in rollbacks:
        if entry.get("error"):
            continue
        view = settings.for_target(entry["target"])
        if not entry["request_id"]:
            asked = control.rollback(view, conn, request.origin, entry["of"], request.id)
            if not asked or asked.request is None:
                entry["error"] = asked.reason
                store.update(request.id, result=result | {"rollbacks": rollbacks})
                continue
            entry["request_id"] = asked.request.id
            store.update(request.id, result=result | {"rollbacks": rollbacks})
            if request.state is not S.RUNNING or request.phase != "rollback":
                store.transition(
                    request.id,
                    S.RUNNING,
                    actor=MOLT,
                    message=f"rolling back {entry['target']}",
                    phase="rollback",
                )
            return advance(settings, conn, request.id)
        rollback = store.get(entry["request_id"])
        if rollback.state is S.PLAN_READY:
            decision = approval.approve_rollout_rollback(
                view, conn, rollback.id, request.codename or request.id
            )
            if not decision:
                entry["error"] = decision.reason
                store.update(request.id, result=result | {"rollbacks": rollbacks})
                continue
            return store.get(request.id)
        if not rollback.terminal:
            return request
    failed = result["failed"]
    blocked = bool(failed.get("hint"))
    message = f"step {failed['target']} {'blocked' if blocked else 'failed'}: {failed['reason']}"
    undone, left = [], []
    for entry in rollbacks:
        back = store.get(entry["request_id"]) if entry["request_id"] else None
        if back is not None and back.state is S.SUCCEEDED:
            undone.append(entry["target"])
        else:
            said = back.message if back is not None else entry.get("error", "")
            left.append(f"{entry['target']} ({said})" if said else entry["target"])
    if undone:
        message += f"; rolled back: {', '.join(undone)}"
    if left:
        message += f"; not rolled back: {', '.join(left)}"
    if result.get("kept"):
        message += f"; left as they are (on_failure = stop): {', '.join(result['kept'])}"
    if blocked:
        return _finish(conn, request, S.BLOCKED, f"{message}. {failed['hint']}")
    return _finish(conn, request, S.FAILED, message)


def _succeeded_message(request: Request, children: list[Request]) -> str:
    commit = str((request.plan or {}).get("target_commit", ""))[:7]
    return f"{commit} is live on {', '.join(c.target for c in children)}"


def _finish(conn: redis.Redis, request: Request, state: S, message: str) -> Request:
    """End the rollout; its steps counted by outcome, its duration observed."""
    store = RequestStore(conn)
    if request.state is S.QUEUED and state is S.SUCCEEDED:  # never started: nothing to do
        request = store.transition(request.id, S.RUNNING, actor=MOLT, message="")
    ended = store.transition(request.id, state, actor=MOLT, message=message, phase="")
    result = ended.result or {}
    undone = {r["target"] for r in result.get("rollbacks", []) if r.get("request_id")}
    for child in _steps(conn, ended):
        if child.state is S.SUCCEEDED:
            outcome = "rolled_back" if child.target in undone else "succeeded"
        elif child.state is S.FAILED:
            outcome = "failed"
        else:
            outcome = "not_run"
        metrics.rollout_step(ended.target, outcome)
    started = float(result.get("started_at") or ended.created_at)
    metrics.rollout_finished(ended.target, state.value, time.time() - started)
    return ended


def stop(settings: Settings, conn: redis.Redis, name: str, principal: str) -> str:
    """``stop <rollout>``: the rollout stops at its next safe point (the step running rolls
    back as any update does at a stop) and the steps done are rolled back as ``on_failure``
    says. A rollout still waiting for its plan or approval is cancelled."""
    store = RequestStore(conn)
    request = next(
        (r for r in reversed(store.active()) if r.command == ROLLOUT and r.target == name), None
    )
    audit.append(conn, actor=principal, action="stop", detail={"rollout": name})
    if request is None:
        return f"Stop: no rollout of {name} is under way."
    shown = request.codename or request.id
    if request.state not in (S.QUEUED, S.RUNNING):
        _cancel_plans(conn, _steps(conn, request), f"its rollout was stopped by {principal}")
        try:
            store.transition(
                request.id, S.CANCELLED, actor=principal, message=f"stopped by {principal}"
            )
        except IllegalTransition:
            return f"Stop: rollout {shown} moved on meanwhile; ask again."
        return f"Stop: rollout {shown} cancelled before it started."
    with _advancing(conn, request.id):  # its result is the driver's to write meanwhile
        request = store.get(request.id)
        store.update(request.id, result=(request.result or {}) | {"stop": principal})
    running = next(
        (c for c in _steps(conn, request) if not c.terminal and c.state not in _NOT_STARTED),
        None,
    )
    said = ""
    if running is not None:
        said = " " + control.stop(settings.for_target(running.target), conn, principal)
    advance(settings, conn, request.id)
    return f"Stopping rollout {shown} at its next safe point.{said}"


# -- what people see -----------------------------------------------------------------

#: How a step's state reads in the rollout's message.
_SHOWN = {
    S.SUCCEEDED: "done",
    S.FAILED: "failed",
    S.BLOCKED: "blocked",
    S.REFUSED: "refused",
    S.CANCELLED: "not run",
    S.EXPIRED: "not run",
    S.REJECTED: "not run",
    S.PLAN_READY: "waiting",
    S.RECEIVED: "planning",
    S.PREFLIGHT: "planning",
    S.PLANNING: "planning",
    S.NEEDS_INFO: "planning",
    S.APPROVED: "queued",
    S.QUEUED: "queued",
}


def view(conn: redis.Redis, request: Request) -> dict[str, Any]:
    """What the rollout's message shows: the gate, each step as it stands, the rollbacks."""
    store = RequestStore(conn)
    result = request.result or {}
    plan = request.plan or {}
    planned = {s["target"]: s for s in plan.get("steps", [])}
    rollbacks = {r["target"]: r for r in result.get("rollbacks", [])}
    shown = []
    for child in _steps(conn, request):
        state = _SHOWN.get(child.state, "running")
        if state == "running":  # its state and phase, as its own message would show them
            phase = child.phase.replace("_", " ")
            state = child.state.value + (f" · {phase}" if phase and phase != state else "")
        if state == "waiting" and request.state in (S.PREFLIGHT, S.PLANNING, S.PLAN_READY):
            state = "planned"
        undo = rollbacks.get(child.target)
        if undo and undo.get("request_id"):
            back = store.get(undo["request_id"])
            state += {
                S.SUCCEEDED: ", rolled back",
                S.FAILED: ", rollback failed",
            }.get(back.state, ", rolling back")
        elif undo and undo.get("error"):
            state += f", not rolled back: {undo['error']}"
        step_plan = planned.get(child.target, {})
        shown.append(
            {
                "target": child.target,
                "request_id": child.id,
                "codename": child.codename,
                "state": state,
                "base_commit": step_plan.get("base_commit")
                or (child.plan or {}).get("base_commit", ""),
                "risk": (step_plan.get("risk") or (child.plan or {}).get("risk") or {}).get(
                    "level", ""
                ),
                "message": _failed(child),
            }
        )
    return {
        "rollout": request.target,
        "commit": str(plan.get("target_commit", ""))[:7],
        "gate": plan.get("gate", {}),
        "steps": shown,
        "on_failure": plan.get("on_failure", ""),
        "failed": result.get("failed", {}),
        "stop_by": result.get("stop", ""),
    }


def _failed(child: Request) -> str:
    """Why a step failed, as its rollout shows it (the rollout says how to break a freeze)."""
    if child.state is not S.FAILED:
        return ""
    return freezes.without_hint(child.message) if child.phase == freezes.CHECK else child.message


def listing(conn: redis.Redis, name: str, count: int = 10) -> list[dict[str, Any]]:
    """The rollout's newest requests, newest first, each with its steps (status, history)."""
    store = RequestStore(conn)
    mine = [r for r in store.recent(200) if r.command == ROLLOUT and r.target == name][:count]
    return [r.context() | {"updated_at": r.updated_at} | view(conn, r) for r in mine]


def under_way(settings: Settings, conn: redis.Redis) -> list[dict[str, Any]]:
    """Each rollout's newest request not yet ended, with its steps (the fleet's status)."""
    return [
        shown
        for name in settings.rollout_names()
        for shown in listing(conn, name, 1)
        if S(shown["state"]) not in TERMINAL
    ]


# -- the driver ------------------------------------------------------------------------

GROUP = "rollouts"
CONSUMER = "bot"
#: Seconds between looks at every rollout under way, events or not.
SWEEP_SECONDS = 5.0


class Driver:
    """Moves rollouts on as their steps' events arrive: reads the event stream in a consumer
    group of its own (the notifier's is for showing them), and every few seconds looks at
    each rollout under way anyway."""

    def __init__(self, settings: Settings, conn: redis.Redis) -> None:
        self.settings = settings
        self.conn = conn
        self._stop = threading.Event()
        self.reader = StreamReader(
            conn,
            keyspace.EVENTS,
            GROUP,
            CONSUMER,
            self._event,
            stopping=self._stop,
            name="molt-rollouts",
        )
        self._sweeper = threading.Thread(
            target=self._sweep_loop, name="molt-rollouts-sweep", daemon=True
        )

    def start(self) -> None:
        self.reader.start()
        self._sweeper.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.reader.stop(timeout)
        if self._sweeper.is_alive():
            self._sweeper.join(timeout=timeout)

    def _event(self, _entry_id: str, fields: dict[str, str]) -> None:
        """An event of a rollout's step moves its rollout on."""
        request_id = fields.get("request_id", "")
        parent = steps.rollout_of(self.conn, request_id) if request_id else ""
        if parent:
            advance(self.settings, self.conn, parent)

    def _sweep_loop(self) -> None:
        while not self._stop.wait(SWEEP_SECONDS):
            try:
                self.sweep()
            except redis.RedisError as exc:
                log.warning("rollouts unreachable", error=str(exc))
            except Exception:
                log.exception("rollout sweep")

    def sweep(self) -> None:
        for request in RequestStore(self.conn).active():
            if request.command == ROLLOUT:
                advance(self.settings, self.conn, request.id)
