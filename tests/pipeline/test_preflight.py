"""Pre-flight: each failing check blocks the request and names itself; the tests at the
current commit run beside planning, never before it, and are remembered per commit and
test command."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from pipeline import audit, events, keyspace
from pipeline.config import Settings
from pipeline.intake import approval, preflight
from pipeline.intake import flow as intake
from pipeline.queue.targets import Target
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request, RequestStore
from pipeline.requests.timeline import timeline
from pipeline.sandbox.records import TestRecord
from pipeline.update import jobs
from tests.support import ServiceRepo, shown_message

ALICE = Origin("console", "alice")
BOB = Origin("console", "bob")
PYTEST = "python -m pytest -q -p no:cacheprovider checks"


def _gated(settings: Settings, gate: Path) -> Settings:
    """Settings whose test command waits until the test creates ``gate``."""
    command = f"while [ ! -e {gate} ]; do sleep 0.05; done; {settings.test_command}"
    return settings.model_copy(update={"test_command": command})


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


def test_a_failure_of_the_tests_already_known_blocks_naming_the_failing_tests(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    failing = "def test_broken():\n    assert 1 + 1 == 3\n"
    service.commit({"checks/test_broken.py": failing}, "a broken test")
    subprocess.run(["git", "-C", str(service.live), "pull", "-q"], check=True)
    service.commit({"notes.txt": "x\n"}, "notes")
    pytest_run = settings.model_copy(update={"test_command": PYTEST})
    record = preflight.tests_at(pytest_run, conn, service.live_head())
    assert not record.passed
    assert "exited 1; failed: checks/test_broken.py::test_broken" in record.detail

    state, message = _submit(pytest_run, conn)
    assert state is S.BLOCKED and "'tests'" in message
    assert "checks/test_broken.py::test_broken" in message
    assert "Retry runs the tests again now" in message


def test_a_plan_does_not_wait_for_the_tests_and_shows_how_their_run_stands(
    settings: Settings, conn: redis.Redis, service: ServiceRepo, tmp_path: Path
) -> None:
    service.commit({"notes.txt": "x\n"}, "notes")
    gate = tmp_path / "gate"
    slow = _gated(settings, gate)
    request = intake.submit(slow, conn, ALICE, "deploy", "main", "deploy main")
    assert request.state is S.PLAN_READY  # while the tests still wait for the gate
    shown = shown_message(conn, request, "plan_ready")
    assert f"Tests at `{service.live_head()[:7]}`:* running" in shown.text
    assert "the update waits for them" in shown.text
    assert "Approve" in [b.label for b in shown.buttons]

    gate.touch()
    preflight.finish_background(timeout=60)
    again = shown_message(conn, request, "plan_ready")  # shown again once the run is over
    assert f"Tests at `{service.live_head()[:7]}`:* passed" in again.text
    assert "(1 passed in" in again.text
    assert "Approve" in [b.label for b in again.buttons]


def test_a_plan_made_while_the_start_up_run_goes_is_shown_again_when_that_run_ends(
    settings: Settings, conn: redis.Redis, service: ServiceRepo, tmp_path: Path
) -> None:
    service.commit({"notes.txt": "x\n"}, "notes")
    gate = tmp_path / "gate"
    slow = _gated(settings, gate)
    head = service.live_head()
    start_up = threading.Thread(target=preflight.tests_at, args=(slow, conn, head))
    start_up.start()  # the run Molt starts as it starts, not the plan's
    deadline = time.monotonic() + 30
    while Target(slow, conn).tests.running_since(head) is None:
        assert time.monotonic() < deadline, "the start-up run never began"
        time.sleep(0.05)
    request = intake.submit(slow, conn, ALICE, "deploy", "main", "deploy main")
    assert f"Tests at `{head[:7]}`:* running" in shown_message(conn, request, "plan_ready").text

    gate.touch()
    start_up.join(timeout=60)
    preflight.finish_background(timeout=60)
    again = shown_message(conn, request, "plan_ready")
    assert f"Tests at `{head[:7]}`:* passed" in again.text


def test_an_unknown_ref_is_answered_before_any_test_runs_and_claims_no_snapshot(
    settings: Settings, conn: redis.Redis
) -> None:
    request = intake.submit(settings, conn, ALICE, "deploy", "v9.9", "deploy v9.9")
    assert request.state is S.FAILED and "unknown ref 'v9.9'" in request.message
    failure = shown_message(conn, request, "failure")
    assert "snapshot" not in failure.text and "Nothing was touched" in failure.text
    assert not (settings.data_dir / "preflight.log").exists()


def test_deploying_what_already_runs_says_there_is_nothing_to_deploy(
    settings: Settings, conn: redis.Redis
) -> None:
    request = intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main")
    assert request.state is S.FAILED and "nothing to deploy" in request.message
    assert "snapshot" not in shown_message(conn, request, "failure").text


def test_a_result_is_remembered_per_test_command(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    service.commit({"notes.txt": "x\n"}, "notes")
    broken = settings.model_copy(update={"test_command": "python -c 'raise SystemExit(3)'"})
    assert not preflight.tests_at(broken, conn, service.live_head()).passed
    assert _submit(broken, conn)[0] is S.BLOCKED
    # Another test command is not judged by the broken one's record.
    assert _submit(settings, conn)[0] is S.PLAN_READY
    preflight.finish_background(timeout=60)
    record = Target(settings, conn).tests.at(service.live_head())
    assert record is not None and record.passed


def test_a_persons_retry_runs_a_remembered_failure_again(
    settings: Settings, conn: redis.Redis, service: ServiceRepo, tmp_path: Path
) -> None:
    service.commit({"notes.txt": "x\n"}, "notes")
    marker = tmp_path / "fixed"
    flaky = settings.model_copy(
        update={"test_command": f"test -e {marker} && {settings.test_command}"}
    )
    request = intake.submit(flaky, conn, ALICE, "deploy", "main", "deploy main")
    preflight.finish_background(timeout=60)
    blocked = intake.submit(flaky, conn, ALICE, "deploy", "main", "deploy main")
    assert blocked.state is S.BLOCKED
    marker.touch()
    assert intake.retry(flaky, conn, blocked.id, ALICE)
    assert RequestStore(conn).get(blocked.id).state is S.PLAN_READY
    assert request.state is S.PLAN_READY


def test_a_run_past_its_limit_says_so_and_names_the_setting(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    slow = settings.model_copy(update={"test_command": "sleep 30", "phase_timeout": 0.5})
    record = preflight.tests_at(slow, conn, service.live_head())
    assert not record.passed
    assert "did not finish within 0.5 s and was stopped" in record.detail
    assert "raise MOLT_PHASE_TIMEOUT" in record.detail


def test_the_time_limit_follows_the_last_passing_run(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    tests = Target(settings, conn).tests
    assert tests.limit(900).seconds == 900
    tests.record(TestRecord(True, 600, 400.0, service.live_head()))
    limit = tests.limit(900)
    assert limit.seconds == 1200
    assert "3 times the last passing run (6 min 40 s)" in limit.basis
    assert "MOLT_PHASE_TIMEOUT=900 s" in limit.basis


def test_results_are_remembered_per_commit(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    service.commit({"notes.txt": "x\n"}, "notes")
    assert _submit(settings, conn)[0] is S.PLAN_READY
    preflight.finish_background(timeout=60)
    head = service.live_head()
    record = Target(settings, conn).tests.at(head)
    assert record is not None and record.passed and record.count == 1
    log = settings.data_dir / "preflight.log"
    runs = log.read_text().count("$ python service_tests.py")
    assert _submit(settings, conn)[0] is S.PLAN_READY
    preflight.finish_background(timeout=60)
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


def test_free_text_without_a_planner_is_refused_saying_how_to_enable_it(
    settings: Settings, conn: redis.Redis
) -> None:
    """A refusal, not a blocked pre-flight with Retry: no retry brings a planner."""
    request = intake.submit(settings, conn, ALICE, "change", "add a ping", "add a ping")
    assert request.state is S.REFUSED
    assert "ANTHROPIC_API_KEY" in request.message and "deploy <ref>" in request.message


def test_an_unknown_ref_fails_planning_with_a_reason(settings: Settings, conn: redis.Redis) -> None:
    request = intake.submit(settings, conn, ALICE, "deploy", "v9.9", "deploy v9.9")
    assert request.state is S.FAILED and "unknown ref 'v9.9'" in request.message


def _blocked_check(conn: redis.Redis, request_id: str) -> str:
    """The ``check`` a blocked request's event names (for the audit and metrics)."""
    found = [
        events.Event.from_fields(i, f)
        for i, f in conn.xrange(keyspace.EVENTS)
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
    off = settings.model_copy(update={"allow_deploys": False})
    switched = intake.submit(off, conn, ALICE, "deploy", "main", "deploy main")
    assert _blocked_check(conn, switched.id) == "switch"


def _run_update(settings: Settings, conn: redis.Redis) -> threading.Thread:
    """The approved update, run as an RQ job runs it (its turn, then ``Update``), on a
    thread of its own so that the test can watch it wait."""
    turn = jobs.wait_for_turn(settings, conn)
    assert turn is not None
    taken, codename = turn
    thread = threading.Thread(target=jobs.Update(settings, conn, taken).run, args=(codename,))
    thread.start()
    return thread


def _waits_for_the_tests(conn: redis.Redis, request: Request) -> None:
    deadline = time.monotonic() + 60
    while RequestStore(conn).get(request.id).phase != "preflight":
        assert time.monotonic() < deadline, "the update never waited for the pre-flight tests"
        time.sleep(0.05)


@pytest.mark.parametrize("passes", [True, False], ids=["tests pass", "tests fail"])
def test_an_update_approved_while_the_tests_run_waits_for_them_before_its_snapshot(
    settings: Settings, conn: redis.Redis, service: ServiceRepo, tmp_path: Path, passes: bool
) -> None:
    new = service.commit({"notes.txt": "x\n"}, "notes")
    old = service.live_head()
    gate = tmp_path / "gate"
    # At the live commit the tests wait for the gate, then pass or fail; elsewhere they pass.
    verdict = settings.test_command if passes else "exit 1"
    command = (
        f'if [ "$(git rev-parse HEAD)" = {old} ]; then '
        f"while [ ! -e {gate} ]; do sleep 0.05; done; {verdict}; "
        f"else {settings.test_command}; fi"
    )
    runs = settings.model_copy(update={"test_command": command, "restart_command": "true"})
    request = intake.submit(runs, conn, ALICE, "deploy", "main", "deploy main")
    assert request.state is S.PLAN_READY
    assert approval.approve(runs, conn, request.id, BOB)

    update = _run_update(runs, conn)
    _waits_for_the_tests(conn, request)
    waiting = RequestStore(conn).get(request.id)
    assert not waiting.snapshot
    # Phase 1 never touches the live checkout: it ran meanwhile, as the status page draws it.
    bars = {b.phase: b for b in timeline(waiting, audit.entries(conn, request.id)).bars}
    assert bars["phase 1"].outcome == "passed" and bars["snapshot"].outcome == "skipped"
    gate.touch()
    update.join(timeout=120)

    done = RequestStore(conn).get(request.id)
    if passes:
        assert done.state is S.SUCCEEDED and service.live_head() == new
        return
    assert done.state is S.FAILED and done.phase == "pre-flight"
    assert f"the tests fail at the current commit {old[:7]}" in done.message
    assert not done.snapshot and service.live_head() == old
    failure = shown_message(conn, request, "failure")
    assert "Nothing was touched" in failure.text and "snapshot" not in failure.text
    assert "Retry" in [b.label for b in failure.buttons]
