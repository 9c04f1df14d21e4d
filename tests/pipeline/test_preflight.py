"""Pre-flight: each failing check blocks the request and names itself."""

from __future__ import annotations

import redis

from pipeline import events, intake
from pipeline.config import Settings
from pipeline.requests import Origin
from pipeline.states import RequestState as S
from pipeline.targets import Target
from tests.support import ServiceRepo

ALICE = Origin("console", "alice")


def _submit(settings: Settings, conn: redis.Redis) -> tuple[S, str]:
    request = intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main")
    return request.state, request.message


def test_a_dirty_checkout_blocks(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    service.commit({"notes.txt": "x\n"}, "notes")
    (service.live / "scratch.txt").write_text("left behind\n")
    state, message = _submit(settings, conn)
    assert state is S.BLOCKED
    assert "'clean checkout'" in message and "scratch.txt" in message


def test_failing_tests_at_the_current_commit_block(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    broken = settings.model_copy(update={"test_command": "python -c 'raise SystemExit(3)'"})
    state, message = _submit(broken, conn)
    assert state is S.BLOCKED and "'tests'" in message and "fails at the current commit" in message


def test_test_results_are_remembered_per_commit(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    service.commit({"notes.txt": "x\n"}, "notes")
    assert _submit(settings, conn)[0] is S.PLAN_READY
    head = service.live_head()
    record = Target(settings, conn).tests.at(head)
    assert record is not None and record.passed and record.count == 1
    log = settings.data_dir / "preflight.log"
    runs = log.read_text().count("$ python service_tests.py")
    assert _submit(settings, conn)[0] is S.PLAN_READY
    assert log.read_text().count("$ python service_tests.py") == runs == 1


def test_a_held_lock_with_a_full_queue_blocks(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    service.commit({"notes.txt": "x\n"}, "notes")
    Target(settings, conn).lock.try_lock("r-other", "amber-otter")
    Target(settings, conn).line.join("r-waiting")
    small = settings.model_copy(update={"queue_max": 1})
    state, message = _submit(small, conn)
    assert state is S.BLOCKED and "amber-otter" in message and "queue is full" in message
    assert _submit(settings, conn)[0] is S.PLAN_READY  # room in a longer queue


def test_an_unreachable_remote_blocks(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    service.origin.rename(service.origin.with_suffix(".moved"))
    state, message = _submit(settings, conn)
    assert state is S.BLOCKED and "'remote'" in message and "cannot be reached" in message


def test_an_unclean_last_boot_blocks(settings: Settings, conn: redis.Redis) -> None:
    conn.hset(
        f"molt:boot:{settings.target_id}", mapping={"clean": "0", "detail": "rollback failed"}
    )
    state, message = _submit(settings, conn)
    assert state is S.BLOCKED and "last boot" in message and "rollback failed" in message


def test_free_text_without_a_planner_gets_a_clear_answer(
    settings: Settings, conn: redis.Redis
) -> None:
    request = intake.submit(settings, conn, ALICE, "change", "add a ping", "add a ping")
    assert request.state is S.BLOCKED
    assert "ANTHROPIC_API_KEY" in request.message and "deploy <ref>" in request.message


def test_an_unknown_ref_fails_planning_with_a_reason(settings: Settings, conn: redis.Redis) -> None:
    request = intake.submit(settings, conn, ALICE, "deploy", "v9.9", "deploy v9.9")
    assert request.state is S.FAILED and "unknown ref 'v9.9'" in request.message


def _blocked_check(conn: redis.Redis, request_id: str) -> str:
    """The ``check`` a blocked request's event names (for the audit and metrics)."""
    found = [
        events.Event.from_fields(i, f)
        for i, f in conn.xrange(events.STREAM)
        if f.get("request_id") == request_id and f.get("state") == "blocked"
    ]
    assert found, f"no blocked event for {request_id}"
    return str(found[-1].data["check"])


def test_a_blocked_request_names_the_check_that_blocked_it(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    (service.live / "scratch.txt").write_text("left behind\n")
    dirty = intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main")
    assert _blocked_check(conn, dirty.id) == "clean checkout"
    (service.live / "scratch.txt").unlink()
    words = intake.submit(settings, conn, ALICE, "change", "add a ping", "add a ping")
    assert _blocked_check(conn, words.id) == "planner"
    off = settings.model_copy(update={"allow_deploys": False})
    switched = intake.submit(off, conn, ALICE, "deploy", "main", "deploy main")
    assert _blocked_check(conn, switched.id) == "switch"
