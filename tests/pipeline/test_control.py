"""Operator controls, autonomy modes, limits and switches, and `molt recover`'s steps,
against real Redis and real git: what each shows a person and which state it leaves."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.messages import Message
from bot.rendering import render
from pipeline import audit, keyspace
from pipeline.config import MOLT_HOME, Settings, load_settings
from pipeline.exceptions import ConfigError
from pipeline.intake import approval, autonomy, control, preflight
from pipeline.intake import flow as intake
from pipeline.queue import queueing
from pipeline.queue.targets import Target
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request, RequestStore
from pipeline.sandbox.confinement import Confinement, sandbox_env
from pipeline.sandbox.validation import PhaseSpec, run_phase
from pipeline.update import backups, repair
from tests.support import ServiceRepo, shown_message

ALICE = Origin("console", "alice")
BOB = Origin("console", "bob")
V2 = {"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}
FAILING_CHECK = "def test_new_feature():\n    assert 1 + 1 == 3, 'new feature is broken'\n"


def _with(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update=changes)


def _deploy(settings: Settings, conn: redis.Redis, who: Origin = ALICE) -> Request:
    return intake.submit(settings, conn, who, "deploy", "main", "deploy main")


def _labels(message: Message) -> list[str]:
    return [b.label for b in message.buttons]


# -- autonomy modes -----------------------------------------------------------------------------


def test_observe_mode_shows_the_plan_without_approve_and_refuses_approval(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    observe = _with(settings, autonomy="observe")
    service.commit(V2, "v2")
    request = _deploy(observe, conn)
    assert request.state is S.PLAN_READY
    plan = shown_message(conn, request, "plan_ready")
    assert "Observe mode is on" in plan.text and "Nothing will run" in plan.text
    assert "Approve" not in _labels(plan)

    decision = approval.approve(observe, conn, request.id, BOB)
    assert not decision
    assert "observe mode (MOLT_AUTONOMY=observe)" in decision.reason
    assert RequestStore(conn).get(request.id).state is S.PLAN_READY
    refused = [e for e in audit.entries(conn, request.id) if e["action"] == "approve_refused"]
    assert refused and "observe mode" in refused[-1]["detail"]["reason"]


def test_auto_mode_approves_a_low_risk_plan_itself_and_audits_it_as_molt(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    auto = _with(settings, autonomy="auto")
    service.commit(V2, "v2")
    request = _deploy(auto, conn)
    queued = RequestStore(conn).get(request.id)
    assert queued.state is S.QUEUED and queued.approver == "molt:auto"
    assert Target(settings, conn).line.ids() == [request.id]
    approved = [e for e in audit.entries(conn, request.id) if e["action"] == "approved"]
    assert approved[0]["actor"] == "molt:auto"
    assert "MOLT_AUTONOMY=auto" in approved[0]["detail"]["message"]
    plan = shown_message(conn, request, "plan_ready")
    assert "Molt approves this plan itself" in plan.text
    assert plan.buttons == ()
    assert "Approved by molt:auto" in shown_message(conn, request, "queued").plain().replace(
        "*", ""
    )


def test_auto_mode_leaves_a_medium_risk_plan_to_a_person(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    auto = _with(settings, autonomy="auto")
    service.commit({"requirements.txt": "redis>=5\n"}, "a dependency")
    request = _deploy(auto, conn)
    assert request.state is S.PLAN_READY and request.plan
    assert request.plan["risk"]["level"] == "medium"
    plan = shown_message(conn, request, "plan_ready")
    assert "this one needs an approver" in plan.text
    assert "Approve" in _labels(plan)
    assert approval.approve(auto, conn, request.id, BOB)
    assert RequestStore(conn).get(request.id).approver == "console:bob"


def test_semi_mode_runs_phase_one_before_approval_and_shows_the_results(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    semi = _with(settings, autonomy="semi")
    service.commit(V2, "v2")
    request = _deploy(semi, conn)
    assert request.state is S.PLAN_READY and request.plan
    assert request.plan["phase_one"]["ok"] is True
    plan = shown_message(conn, request, "plan_ready")
    assert "Phase 1, run before approval" in plan.text and "passed in a sandbox" in plan.text
    assert "✓ tests: 1 passed" in plan.text
    assert "Approve" in _labels(plan)
    assert service.live_head() != service.work_head()  # nothing live changed
    progress = shown_message(conn, request, "planning")
    assert "running phase 1 in a sandbox before asking for approval" in progress.text


def test_semi_mode_shows_a_failing_phase_one_and_still_leaves_the_decision(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    semi = _with(settings, autonomy="semi")
    service.commit({"checks/test_new.py": FAILING_CHECK}, "a broken feature")
    request = _deploy(semi, conn)
    assert request.state is S.PLAN_READY and request.plan
    assert request.plan["phase_one"]["ok"] is False
    plan = shown_message(conn, request, "plan_ready")
    assert "FAILED in a sandbox" in plan.text and "✗ tests" in plan.text
    assert "Approving would most likely fail the same way" in plan.text


# -- limits and switches ----------------------------------------------------------------------


def test_the_daily_limit_blocks_new_requests_and_refuses_approval_but_not_a_rollback(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    service.commit(V2, "v2")
    planned = _deploy(settings, conn)
    limited = _with(settings, max_changes_per_day=1)
    earlier = RequestStore(conn).create(ALICE, "deploy x", "deploy", "x")
    autonomy.record_start(limited, conn, earlier)

    blocked = _deploy(limited, conn)
    assert blocked.state is S.BLOCKED
    assert "MOLT_MAX_CHANGES_PER_DAY=1" in blocked.message
    assert "1 update started in the last 24 hours" in blocked.message
    assert "MOLT_MAX_CHANGES_PER_DAY=1" in shown_message(conn, blocked, "blocked").text

    decision = approval.approve(limited, conn, planned.id, BOB)
    assert not decision and "MOLT_MAX_CHANGES_PER_DAY=1" in decision.reason
    assert RequestStore(conn).get(planned.id).state is S.PLAN_READY

    rollback = intake.submit(limited, conn, ALICE, "rollback", "main", "rollback amber-otter")
    assert rollback.state is S.PLAN_READY
    assert control.status(limited, conn)["started_today"] == 1


def test_a_switched_off_component_blocks_with_a_message_naming_the_setting(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    service.commit(V2, "v2")
    no_deploys = _with(settings, allow_deploys=False)
    blocked = _deploy(no_deploys, conn)
    assert blocked.state is S.BLOCKED
    assert "deploys are switched off here (MOLT_ALLOW_DEPLOYS=false)" in blocked.message
    text = shown_message(conn, blocked, "blocked").text
    assert "MOLT_ALLOW_DEPLOYS=false" in text and "Nothing was changed" in text
    blocked_entry = [e for e in audit.entries(conn, blocked.id) if e["action"] == "blocked"]
    assert "MOLT_ALLOW_DEPLOYS=false" in blocked_entry[0]["detail"]["message"]
    # An operator's rollback still goes through; a deploy is not one for what its text says.
    rollback = intake.submit(no_deploys, conn, ALICE, "rollback", "main", "rollback amber-otter")
    assert rollback.state is S.PLAN_READY
    worded = intake.submit(no_deploys, conn, ALICE, "deploy", "main", "rollback amber-otter")
    assert worded.state is S.BLOCKED and "MOLT_ALLOW_DEPLOYS=false" in worded.message

    no_changes = _with(settings, allow_changes=False)
    change = intake.submit(no_changes, conn, ALICE, "change", "add a ping", "add a ping")
    assert change.state is S.BLOCKED and "MOLT_ALLOW_CHANGES=false" in change.message

    github = Origin("github", "octocat")
    no_github = _with(settings, allow_github=False, authorised_users=["github:octocat"])
    from_github = _deploy(no_github, conn, github)
    assert from_github.state is S.BLOCKED and "MOLT_ALLOW_GITHUB=false" in from_github.message


def test_a_switch_turned_off_after_planning_refuses_the_approval(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    service.commit(V2, "v2")
    request = _deploy(settings, conn)
    decision = approval.approve(_with(settings, allow_deploys=False), conn, request.id, BOB)
    assert not decision and "MOLT_ALLOW_DEPLOYS=false" in decision.reason


def test_require_tests_blocks_a_test_command_that_runs_no_countable_tests(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    service.commit(V2, "v2")
    silent = _with(settings, test_command="python -c 'print(\"all good\")'")
    assert _deploy(silent, conn).state is S.PLAN_READY  # planned while the tests run
    preflight.finish_background(timeout=60)
    blocked = _deploy(silent, conn)  # once their run is known, it blocks
    assert blocked.state is S.BLOCKED
    assert "ran no tests Molt could count" in blocked.message
    assert "MOLT_REQUIRE_TESTS" in shown_message(conn, blocked, "blocked").text

    allowed = _deploy(_with(silent, require_tests=False), conn)
    assert allowed.state is S.PLAN_READY


@pytest.mark.parametrize("required", [True, False])
def test_require_tests_fails_a_phase_whose_tests_report_no_count(
    service: ServiceRepo, required: bool
) -> None:
    result = run_phase(
        "phase 1",
        service.live,
        PhaseSpec("python -c 'print(\"ok\")'", timeout=60, require_count=required),
        changed_files=["app.py"],
        baseline_passed=None,
    )
    assert result.ok is not required
    if required:
        assert "ran no tests Molt could count" in result.reason


def test_a_phase_asked_to_stop_kills_its_test_command(service: ServiceRepo, tmp_path: Path) -> None:
    """The emergency stop's safe point comes at once, not when the phase times out."""
    pid_file = tmp_path / "pid"
    command = f"echo $$ > {pid_file}; exec sleep 300"
    result = run_phase(
        "phase 1",
        service.live,
        # Without the sandbox, so that the pid it tells is the host's.
        PhaseSpec(command, timeout=600, confinement=Confinement(False, sandbox_env(()))),
        changed_files=[],
        baseline_passed=None,
        stop=pid_file.exists,
    )
    assert not result.ok
    assert f"`{command}` was stopped" in result.reason
    pid = int(pid_file.read_text())
    gone = subprocess.run(["kill", "-0", str(pid)], capture_output=True, check=False)
    assert gone.returncode != 0


# -- operator controls ------------------------------------------------------------------------


def test_pause_and_resume_are_audited_and_shown_in_status(
    settings: Settings, conn: redis.Redis
) -> None:
    said = control.pause(settings, conn, "console:alice")
    assert "no new update will start until `resume`" in said
    shown = render("status", control.status(settings, conn) | {"request_id": ""})
    assert "paused" in shown.title and "Autonomy: assisted" in shown.plain()
    assert "Resumed" in control.resume(settings, conn, "console:alice")
    assert not control.status(settings, conn)["paused"]
    actions = [(e["actor"], e["action"]) for e in audit.entries(conn)]
    assert ("console:alice", "pause") in actions and ("console:alice", "resume") in actions


def test_stop_clears_the_queue_with_a_message_each_and_aims_at_the_running_update(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    service.commit(V2, "v2")
    first, second = _deploy(settings, conn), _deploy(settings, conn)
    for request in (first, second):
        assert approval.approve(settings, conn, request.id, BOB)
    lock = Target(settings, conn).lock
    assert lock.try_lock("r-running", "brave-otter").ours

    said = control.stop(settings, conn, "console:alice")
    assert said == (
        "Emergency stop: update brave-otter will roll back at its next safe point; "
        "2 queued request(s) cleared."
    )
    for request in (first, second):
        cleared = RequestStore(conn).get(request.id)
        assert cleared.state is S.FAILED
        assert cleared.message == "cleared from the queue by an emergency stop (console:alice)"
        assert "Retry" in _labels(shown_message(conn, cleared, "failure"))
    assert Target(settings, conn).line.ids() == []
    assert control.stop_requested(settings, conn, "r-running") == "console:alice"
    assert control.stop_requested(settings, conn, "r-other") is None
    control.clear_stop(settings, conn, "r-running")
    assert control.stop_requested(settings, conn) is None
    lock.release("r-running")
    assert "no update was running" in control.stop(settings, conn, "console:alice")


def test_rollback_without_a_successful_update_says_so(
    settings: Settings, conn: redis.Redis
) -> None:
    none = control.rollback(settings, conn, ALICE, "")
    assert none.reason == "found no successful update to roll back"
    said = control.rollback(settings, conn, ALICE, "amber-otter").reason
    assert said == "found no successful update 'amber-otter' to roll back"


def _waiting_for_answers(conn: redis.Redis, asked_ago: float = 0.0) -> Request:
    store = RequestStore(conn)
    request = store.create(ALICE, "add a ping", "change", "add a ping")
    for state in (S.PREFLIGHT, S.PLANNING, S.NEEDS_INFO):
        store.transition(request.id, state, actor="molt", message=state.value)
    if asked_ago:
        store.update(request.id, updated_at=time.time() - asked_ago)
    return store.get(request.id)


def test_review_lists_plans_and_questions_waiting_with_age_risk_and_requester(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    service.commit(V2, "v2")
    planned = _deploy(settings, conn)
    asking = _waiting_for_answers(conn)
    pending = control.pending(settings, conn)
    assert [p["request_id"] for p in pending] == [planned.id, asking.id]
    shown = render("review", {"requests": pending, "request_id": ""}).plain()
    assert "Waiting for a person: 2" in shown
    assert f"{planned.id}* waits for approval · LOW risk · asked by alice" in shown
    assert f"{asking.id}* asks its requester questions · asked by alice" in shown
    assert "expires in" in shown


def test_questions_nobody_answers_expire_with_a_message(
    settings: Settings, conn: redis.Redis
) -> None:
    store = RequestStore(conn)
    fresh = _waiting_for_answers(conn)
    assert not approval.expire_unanswered(settings, store, fresh)
    stale = _waiting_for_answers(conn, asked_ago=settings.plan_ttl + 60)
    assert approval.expire_unanswered(settings, store, stale)
    expired = store.get(stale.id)
    assert expired.state is S.EXPIRED
    assert expired.message == "nobody answered the planner's questions within 60 min"
    assert "Nothing was changed" in shown_message(conn, expired, "expired").text
    assert store.get(fresh.id).state is S.NEEDS_INFO


# -- molt recover -----------------------------------------------------------------------------


def test_config_backups_keep_changed_versions_only_and_the_last_ten(
    settings: Settings, tmp_path: Path
) -> None:
    config = tmp_path / "molt.toml"
    config.write_text("MOLT_QUEUE_MAX = 3\n")
    first = backups.backup_config(settings, config)
    assert first is not None and first.read_text() == "MOLT_QUEUE_MAX = 3\n"
    assert backups.backup_config(settings, config) is None  # unchanged: no new copy
    for n in range(12):
        config.write_text(f"MOLT_QUEUE_MAX = {n}\n")
        backups.backup_config(settings, config)
    kept = backups.backups(settings.data_dir, "molt.toml")
    assert len(kept) == backups.KEEP_BACKUPS
    assert kept[-1].read_text() == "MOLT_QUEUE_MAX = 11\n"


def test_recover_restores_a_missing_or_broken_config_from_its_backup(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "molt.toml"
    monkeypatch.setenv("MOLT_CONFIG", str(config))
    config.write_text("MOLT_QUEUE_MAX = 3\n")
    backups.backup_config(settings, config)

    fine = backups.restore_config(config, settings.data_dir)
    assert fine.ok and fine.lines == [f"{config} loads; nothing to restore"]
    config.write_text("MOLT_QUEUE_MAX = [oops\n")
    step = backups.restore_config(config, settings.data_dir)
    assert step.ok and "is not valid TOML" in step.lines[0] and "restored it from" in step.lines[0]
    assert config.read_text() == "MOLT_QUEUE_MAX = 3\n"
    [kept] = tmp_path.glob("molt.toml.broken-*")
    assert kept.read_text() == "MOLT_QUEUE_MAX = [oops\n"

    config.unlink()
    step = backups.restore_config(config, settings.data_dir)
    newest = backups.backups(settings.data_dir, "molt.toml")[-1]
    assert step.ok and step.lines == [f"{config} was missing: restored it from {newest}"]

    config.write_text('MOLT_QUEUE_MAX = "many"\n')
    (settings.data_dir / "config-backup").rename(tmp_path / "elsewhere")
    step = backups.restore_config(config, settings.data_dir)
    assert not step.ok and "MOLT_QUEUE_MAX" in step.lines[0] and "no backup" in step.lines[0]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_recover_makes_the_requests_in_redis_consistent(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    store = RequestStore(conn)
    service.commit(V2, "v2")
    queued = _deploy(settings, conn)
    assert approval.approve(settings, conn, queued.id, BOB)
    conn.delete(*conn.keys("rq:job:*"))  # its worker job is gone
    planned = _deploy(settings, conn)
    finished = store.create(ALICE, "deploy x", "deploy", "x")
    store.transition(finished.id, S.REFUSED, actor="molt", message="no")
    conn.sadd(keyspace.ACTIVE_REQUESTS, finished.id, "r-vanished")
    Target(settings, conn).line.join(finished.id)
    holder = {
        "request_id": "r-gone",
        "codename": "lost-lobster",
        "holder": f"{socket.gethostname()}:{_dead_pid()}",
        "since": time.time(),
        "pids": Target(settings, conn).lock.try_lock("r-gone", "lost-lobster").pids,
    }
    conn.set(f"molt:lock:{settings.target_id}", json.dumps(holder), px=60_000)

    release, requests = repair.recover(settings, conn, actor="console:alice")
    assert release.ok and requests.ok, release.lines + requests.lines
    said = "\n".join(requests.lines)
    assert "released the update lock of lost-lobster" in said
    assert f"{finished.id} (refused)" in said and "r-vanished (unknown)" in said
    assert f"removed {finished.id} (refused) from the waiting line" in said
    assert "no worker job was waiting to run it" in said
    ended = store.get(queued.id)
    assert ended.state is S.FAILED
    assert ended.message == (
        "ended by molt recover: it was queued but no worker job was waiting to run it"
    )
    assert store.get(planned.id).state is S.PLAN_READY  # waits for a person: left alone
    assert Target(settings, conn).lock.holder() is None
    assert set(conn.smembers(keyspace.ACTIVE_REQUESTS)) == {planned.id}
    assert "no update was left half-done" in release.lines[0]

    again = repair.recover(settings, conn, actor="console:alice")[1]
    assert again.lines == ["consistent: 1 open request(s) left, 1 waiting for a person"]
    assert queueing.waiting(settings, conn) == 0


def test_recover_names_the_last_release_of_molt_that_started_healthy(
    settings: Settings, conn: redis.Redis
) -> None:
    """Managing itself, Molt's release step also says which release last started well
    (none yet here); it only reads Molt's own checkout."""
    itself = _with(settings, target_dir=MOLT_HOME)
    assert itself.manages_itself
    release = repair.recover(itself, conn, actor="console:alice")[0]
    assert release.lines[-1] == "no signed release of Molt has reported healthy yet"


def test_an_unknown_autonomy_mode_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MOLT_AUTONOMY", "reckless")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "MOLT_AUTONOMY: expected one of observe, assisted, semi, auto (got 'reckless')" in str(
        caught.value
    )
