"""The state machine: legal moves only, each audited and emitted in the same step."""

from __future__ import annotations

import threading

import pytest
import redis

from pipeline import audit, events, keyspace
from pipeline.exceptions import IllegalTransition
from pipeline.requests.states import TERMINAL, RequestState, can_move
from pipeline.requests.store import Origin, RequestStore

S = RequestState
ALICE = Origin("console", "alice")


def test_every_state_change_writes_the_audit_entry_and_the_event(conn: redis.Redis) -> None:
    store = RequestStore(conn)
    request = store.create(ALICE, "deploy main", "deploy", "main")
    store.transition(request.id, S.PREFLIGHT, actor="molt", message="checking")
    store.transition(request.id, S.BLOCKED, actor="molt", message="tests fail")
    actions = [e["action"] for e in audit.entries(conn, request.id)]
    assert actions == ["received", "preflight", "blocked"]
    stream = conn.xrange(keyspace.EVENTS)
    assert [fields["state"] for _, fields in stream] == ["preflight", "blocked"]
    assert [fields["template"] for _, fields in stream] == ["processing", "blocked"]
    assert store.get(request.id).message == "tests fail"
    assert request.id not in conn.smembers("molt:requests:active")


def test_a_progress_refresh_is_an_event_for_the_conversation_but_no_audit_entry(
    conn: redis.Redis,
) -> None:
    store = RequestStore(conn)
    request = store.create(ALICE, "deploy main", "deploy", "main")
    store.transition(request.id, S.PREFLIGHT, actor="molt", message="checking")
    audited = len(audit.entries(conn))
    store.refresh(request.id, {"progress": {"seconds": 15.0, "share": 45, "failed": 1}})
    assert len(audit.entries(conn)) == audited
    [*_, (_, shown)] = conn.xrange(keyspace.EVENTS)
    event = events.Event.from_fields("", shown)
    assert (event.state, event.template, event.audience) == ("preflight", "processing", "")
    assert event.data["progress"] == {"seconds": 15.0, "share": 45, "failed": 1}
    assert event.data["message"] == "checking"
    assert store.get(request.id).state is S.PREFLIGHT


def test_an_illegal_move_is_refused_and_changes_nothing(conn: redis.Redis) -> None:
    store = RequestStore(conn)
    request = store.create(ALICE, "deploy main", "deploy", "main")
    before = len(audit.entries(conn))
    with pytest.raises(IllegalTransition):
        store.transition(request.id, S.SUCCEEDED, actor="molt")
    assert store.get(request.id).state is S.RECEIVED
    assert len(audit.entries(conn)) == before


def test_two_racing_moves_out_of_the_same_state_succeed_once(conn: redis.Redis) -> None:
    store = RequestStore(conn)
    request = store.create(ALICE, "deploy main", "deploy", "main")
    for state in (S.PREFLIGHT, S.PLANNING, S.PLAN_READY):
        store.transition(request.id, state, actor="molt")
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def approve(n: int) -> None:
        barrier.wait()
        try:
            store.transition(
                request.id,
                S.APPROVED,
                actor=f"console:u{n}",
                allowed_from=frozenset({S.PLAN_READY}),
            )
            outcomes.append("won")
        except IllegalTransition:
            outcomes.append("lost")

    threads = [threading.Thread(target=approve, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("won") == 1
    assert [e["action"] for e in audit.entries(conn, request.id)].count("approved") == 1


def test_a_plan_shown_again_from_another_thread_never_follows_its_approval(
    conn: redis.Redis,
) -> None:
    """Pre-flight's run ends on a thread of its own and shows waiting plans again, with their
    buttons: one approved in that instant is not shown as waiting after it was approved."""
    store = RequestStore(conn)
    request = store.create(ALICE, "deploy main", "deploy", "main")
    for state in (S.PREFLIGHT, S.PLANNING, S.PLAN_READY):
        store.transition(request.id, state, actor="molt")
    barrier = threading.Barrier(8)

    def show_again() -> None:
        barrier.wait()
        store.notify(
            request.id, "plan_ready", actor="molt", action="shown_again", only_in=S.PLAN_READY
        )

    def approve() -> None:
        barrier.wait()
        store.transition(request.id, S.APPROVED, actor="console:bob")

    threads = [threading.Thread(target=show_again) for _ in range(7)]
    threads.append(threading.Thread(target=approve))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    shown = [(f["state"], f["template"]) for _, f in conn.xrange(keyspace.EVENTS)]
    approved = [state for state, _ in shown].index("approved")
    assert all(template != "plan_ready" for _, template in shown[approved:])
    audited = len(audit.entries(conn, request.id))
    sent = store.notify(
        request.id, "plan_ready", actor="molt", action="shown_again", only_in=S.PLAN_READY
    )
    assert not sent
    assert len(audit.entries(conn, request.id)) == audited
    assert conn.xlen(keyspace.EVENTS) == len(shown)


def test_a_plan_shown_again_keeps_how_it_was_shown_and_updates_what_changed(
    conn: redis.Redis,
) -> None:
    """Pre-flight's run ends the instant an approver's Retry shows the plan approved: shown
    again with how the run ended, it is still shown approved, never with its buttons."""
    store = RequestStore(conn)
    request = store.create(ALICE, "deploy main", "deploy", "main")
    for state in (S.PREFLIGHT, S.PLANNING):
        store.transition(request.id, state, actor="molt")
    running, passed = {"state": "running"}, {"state": "passed"}
    store.transition(
        request.id,
        S.PLAN_READY,
        actor="molt",
        data={"approved_on_retry": "console:alice", "tests": running},
    )
    assert store.notify(
        request.id,
        "plan_ready",
        actor="molt",
        action="preflight_tests_done",
        data={"tests": passed},
        only_in=S.PLAN_READY,
        again=True,
    )
    *_, (_, last) = conn.xrange(keyspace.EVENTS)
    shown = events.Event.from_fields("0-0", last)
    assert shown.template == "plan_ready"
    assert shown.data["approved_on_retry"] == "console:alice"
    assert shown.data["tests"] == passed
    # what is shown with its buttons stays so when shown again
    store.notify(
        request.id, "plan_ready", actor="molt", action="refused", data={"retry_held": "paused"}
    )
    store.notify(request.id, "plan_ready", actor="molt", action="again", again=True)
    *_, (_, last) = conn.xrange(keyspace.EVENTS)
    again = events.Event.from_fields("0-0", last).data
    assert "approved_on_retry" not in again and again["retry_held"] == "paused"


def test_terminal_states_lead_nowhere_but_retry() -> None:
    for state in TERMINAL:
        for target in RequestState:
            if can_move(state, target):
                assert state in (S.FAILED, S.BLOCKED) and target is S.PREFLIGHT


def test_request_round_trips_through_redis(conn: redis.Redis) -> None:
    store = RequestStore(conn)
    request = store.create(Origin("slack", "U1", "C1", "ana"), "deploy v2", "deploy", "v2")
    store.update(request.id, message_ref={"channel": "C1", "ts": "1.2"})
    loaded = store.get(request.id)
    assert loaded.origin == Origin("slack", "U1", "C1", "ana")
    assert loaded.message_ref == {"channel": "C1", "ts": "1.2"}
    assert loaded.plan is None
