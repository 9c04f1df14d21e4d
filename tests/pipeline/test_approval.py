"""Approval: only approvers, once, while fresh; high risk needs a second person."""

from __future__ import annotations

import time

import redis

from pipeline import audit, events, keyspace
from pipeline.config import Settings
from pipeline.intake import approval
from pipeline.intake import flow as intake
from pipeline.queue import queueing
from pipeline.queue.targets import Target
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request, RequestStore
from tests.support import ServiceRepo, git

ALICE = Origin("console", "alice")


def _planned(
    settings: Settings, conn: redis.Redis, service: ServiceRepo, files: dict[str, str]
) -> Request:
    service.commit(files, "a change")
    request = intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main")
    assert request.state is S.PLAN_READY, request.message
    return request


def _private_notes(conn: redis.Redis, audience: str) -> list[str]:
    return [
        events.Event.from_fields(i, f).data.get("reason", "")
        for i, f in conn.xrange(keyspace.EVENTS)
        if f.get("audience") == audience
    ]


def test_approval_queues_the_request(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    request = _planned(settings, conn, service, {"app.py": "def greet():\n    return 'hi'\n"})
    assert approval.approve(settings, conn, request.id, Origin("console", "bob"))
    queued = RequestStore(conn).get(request.id)
    assert queued.state is S.QUEUED and queued.approver == "console:bob"
    assert Target(settings, conn).line.ids() == [request.id]


def test_a_stranger_cannot_approve_and_is_told_why(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    request = _planned(settings, conn, service, {"notes.txt": "x\n"})
    decision = approval.approve(settings, conn, request.id, Origin("console", "mallory"))
    assert not decision and "only approvers" in decision.reason
    assert RequestStore(conn).get(request.id).state is S.PLAN_READY
    notes = _private_notes(conn, "console:mallory")
    assert "only approvers may approve or reject a plan" in notes
    assert "approve_refused" in [e["action"] for e in audit.entries(conn, request.id)]


def test_a_second_click_does_nothing(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    request = _planned(settings, conn, service, {"notes.txt": "x\n"})
    assert approval.approve(settings, conn, request.id, Origin("console", "bob"))
    again = approval.approve(settings, conn, request.id, Origin("console", "alice"))
    assert not again and "already queued by console:bob" in again.reason
    assert Target(settings, conn).line.ids() == [request.id]


def test_an_expired_plan_cannot_be_approved(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    request = _planned(settings, conn, service, {"notes.txt": "x\n"})
    short = replace_ttl(settings, 0.2)
    time.sleep(0.3)
    decision = approval.approve(short, conn, request.id, Origin("console", "bob"))
    assert not decision and "expired" in decision.reason
    assert RequestStore(conn).get(request.id).state is S.EXPIRED


def test_a_high_risk_plan_needs_someone_other_than_its_requester(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    request = _planned(settings, conn, service, {".ci/run": "#!/bin/sh\nexit 0\n"})
    assert request.plan and request.plan["risk"]["level"] == "high"
    decision = approval.approve(settings, conn, request.id, Origin("console", "alice"))
    assert not decision and "other than its requester" in decision.reason
    assert approval.approve(settings, conn, request.id, Origin("console", "bob"))


def test_a_full_queue_refuses_the_approval_and_keeps_the_plan(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    request = _planned(settings, conn, service, {"notes.txt": "x\n"})
    Target(settings, conn).line.join("r-someone-else")
    small = settings.model_copy(update={"queue_max": 1})
    decision = approval.approve(small, conn, request.id, Origin("console", "bob"))
    assert not decision and "queue is full" in decision.reason
    assert RequestStore(conn).get(request.id).state is S.PLAN_READY


def test_reject_ends_the_request(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    request = _planned(settings, conn, service, {"notes.txt": "x\n"})
    assert approval.reject(settings, conn, request.id, Origin("console", "bob"))
    rejected = RequestStore(conn).get(request.id)
    assert rejected.state is S.REJECTED and "console:bob" in rejected.message


def replace_ttl(settings: Settings, ttl: float) -> Settings:
    return settings.model_copy(update={"plan_ttl": ttl})


def test_request_changes_voids_the_plan_and_plans_again(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    request = _planned(settings, conn, service, {"notes.txt": "x\n"})
    service.commit({"notes.txt": "y\n"}, "another", branch="other")
    assert intake.revise(settings, conn, request.id, ALICE, "deploy other")
    revised = RequestStore(conn).get(request.id)
    assert revised.state is S.PLAN_READY and revised.argument == "other"
    assert revised.plan and revised.plan["ref"] == "other"
    assert revised.answers == ["deploy other"]
    stranger = intake.revise(settings, conn, request.id, Origin("console", "mallory"), "no")
    assert not stranger and "requester or an approver" in stranger.reason
    assert approval.approve(settings, conn, request.id, Origin("console", "bob"))
    late = intake.revise(settings, conn, request.id, ALICE, "deploy main")
    assert not late and "queued" in late.reason


CLEARED = "cleared from the queue because update amber-otter failed"
BOB = Origin("console", "bob")


def _failed(settings: Settings, conn: redis.Redis, request: Request) -> Request:
    """Approved by bob and queued, then failed: the update ahead failed and cleared the queue."""
    assert approval.approve(settings, conn, request.id, BOB)
    assert queueing.clear(settings, conn, CLEARED) == [request.id]
    failed = RequestStore(conn).get(request.id)
    assert failed.state is S.FAILED
    return failed


def test_an_approval_after_the_queue_was_cleared_says_so_and_offers_retry(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    request = _failed(settings, conn, _planned(settings, conn, service, {"notes.txt": "x\n"}))
    late = approval.approve(settings, conn, request.id, ALICE)
    said = f"this request was {CLEARED}; press Retry to run it again"
    assert not late and late.reason == said and late.check == "late"
    assert _private_notes(conn, "console:alice") == [said]
    assert RequestStore(conn).get(request.id).state is S.FAILED
    refused = [e for e in audit.entries(conn, request.id) if e["action"] == "approve_refused"]
    assert [(e["actor"], e["detail"]["reason"]) for e in refused] == [("console:alice", said)]


def test_an_approval_that_loses_the_race_with_a_cleared_queue_midway_says_so(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    """The racing order: the plan moves to approved, the queue is cleared (the request
    fails), and only then does the approval queue it."""
    request = _planned(settings, conn, service, {"notes.txt": "x\n"})
    store = RequestStore(conn)
    assert approval._answer_plan(store, request.id, S.APPROVED, "console:bob", "approved by bob")
    store.transition(request.id, S.FAILED, actor="molt", message=CLEARED, phase="queued")
    lost = approval._queue_approved(settings, conn, request.id)
    assert not lost and lost.reason == f"this request was {CLEARED}; press Retry to run it again"
    assert store.get(request.id).state is S.FAILED
    assert Target(settings, conn).line.ids() == []
    job = queueing.job_id(request.id, request.attempt)
    assert job not in queueing.rq_queue(settings).get_job_ids()


def test_every_click_on_a_request_that_moved_on_says_where_it_is_and_what_to_do(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    failed = _failed(settings, conn, _planned(settings, conn, service, {"notes.txt": "x\n"}))
    retry_it = f"this request was {CLEARED}; press Retry to run it again"
    assert approval.reject(settings, conn, failed.id, BOB).reason == retry_it
    assert intake.revise(settings, conn, failed.id, ALICE, "deploy other").reason == retry_it
    answered = intake.answer(settings, conn, failed.id, ALICE, "yes")
    assert answered.reason == (
        f"this request is not waiting for answers: it was {CLEARED}; press Retry to run it again"
    )

    service.commit({"notes.txt": "y\n"}, "another")
    rejected = intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main")
    assert approval.reject(settings, conn, rejected.id, BOB)
    late = intake.retry(settings, conn, rejected.id, ALICE)
    assert late.reason == (
        "this plan was already rejected by console:bob; ask again if it is still wanted"
    )
    assert late.check == "late"


def test_an_approvers_retry_of_an_unchanged_deploy_is_its_approval(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    request = _failed(settings, conn, _planned(settings, conn, service, {"notes.txt": "x\n"}))
    assert intake.retry(settings, conn, request.id, ALICE)
    retried = RequestStore(conn).get(request.id)
    assert (retried.state, retried.attempt) == (S.QUEUED, 2)
    assert retried.approver == "console:alice"
    assert Target(settings, conn).line.ids() == [request.id]
    approvals = [e for e in audit.entries(conn, request.id) if e["action"] == "approved"]
    assert [(e["actor"], e["detail"]["message"]) for e in approvals] == [
        ("console:bob", "approved by console:bob"),
        ("console:alice", "approved by console:alice by pressing Retry: the plan is unchanged"),
    ]
    shown = [events.Event.from_fields(i, f) for i, f in conn.xrange(keyspace.EVENTS)]
    plans = [e.data.get("approved_on_retry") for e in shown if e.template == "plan_ready"]
    # the plan is shown as approved, no buttons, from then on: also if pre-flight's run
    # ended in that instant and showed it again
    assert plans[0] == "" and plans[1:] and set(plans[1:]) == {"console:alice"}


def test_a_non_approvers_retry_posts_the_plan_for_approval(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    carol = Origin("console", "carol")
    with_carol = settings.model_copy(
        update={"authorised_users": [*settings.authorised_users, carol.principal]}
    )
    request = _failed(settings, conn, _planned(settings, conn, service, {"notes.txt": "x\n"}))
    assert intake.retry(with_carol, conn, request.id, carol)
    assert RequestStore(conn).get(request.id).state is S.PLAN_READY
    assert Target(settings, conn).line.ids() == []


def test_a_retry_after_the_base_moved_asks_for_approval_again(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    landed = service.commit({"notes.txt": "x\n"}, "landed meanwhile")
    request = _failed(settings, conn, _planned(settings, conn, service, {"more.txt": "y\n"}))
    git(service.live, "fetch", "-q", "origin")
    git(service.live, "merge", "-q", "--ff-only", landed)
    assert intake.retry(settings, conn, request.id, ALICE)
    retried = RequestStore(conn).get(request.id)
    assert retried.state is S.PLAN_READY
    assert retried.plan and retried.plan["base_commit"] == landed


def test_a_high_risk_plan_retried_by_its_requester_asks_for_approval_again(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    request = _planned(settings, conn, service, {".ci/run": "#!/bin/sh\nexit 0\n"})
    assert request.plan and request.plan["risk"]["level"] == "high"
    failed = _failed(settings, conn, request)
    assert intake.retry(settings, conn, failed.id, ALICE)
    retried = RequestStore(conn).get(request.id)
    assert retried.state is S.PLAN_READY
    approvals = [e["actor"] for e in audit.entries(conn, request.id) if e["action"] == "approved"]
    assert approvals == ["console:bob"]
