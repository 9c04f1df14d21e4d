"""The update job (pipeline/update/jobs.py) as a person meets it in the console: approved, queued,
run by an RQ worker in this process, landed or rolled back, with real git and test commands."""

from __future__ import annotations

from pathlib import Path

from pipeline import audit
from pipeline.requests.states import RequestState as S
from tests.desk import StartChat, molt
from tests.support import ServiceRepo, git

V2 = {"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}
FAILING_CHECK = "def test_new_feature():\n    assert 1 + 1 == 3, 'new feature is broken'\n"


def test_deploy_lands_after_approval_and_reports_success(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    old = service.live_head()
    new = service.commit(V2, "v2")
    chat = start_chat()
    since = chat.send("deploy main")
    chat.wait_for(r"📋 Plan ready", since=since)
    chat.wait_for(rf"Rollback point: {old[:7]} on main", since=since)
    chat.send("press approve")
    chat.work()
    chat.wait_for(r"✅ Live: ", since=since)
    assert service.live_head() == new
    assert service.live_status() == ""
    assert "phase 1: tests" in chat.output and "phase 2: tests" in chat.output


def test_a_failing_test_rolls_back_and_retry_runs_again(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    old = service.live_head()
    service.commit({"checks/test_new.py": FAILING_CHECK}, "a broken feature")
    chat = start_chat()
    since = chat.send("deploy main")
    chat.send("press approve")
    chat.work()
    chat.wait_for(r"❌ Failed: ", since=since)
    chat.wait_for(r"new feature is broken|exited 1", since=since)
    chat.wait_for(r"press retry", since=since)
    assert service.live_head() == old
    assert service.live_status() == ""

    fixed = service.commit({"checks/test_new.py": FAILING_CHECK.replace("3", "2")}, "fix it")
    again = chat.send("press retry")
    chat.wait_for(r"📋 Plan ready", since=again)
    chat.send("press approve")
    chat.work()
    chat.wait_for(r"✅ Live: ", since=again)
    assert service.live_head() == fixed


def test_people_are_named_by_their_console_names_and_audited_as_principals(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    service.commit(V2, "v2")
    chat = start_chat()
    since = chat.send("deploy main")
    chat.wait_for(r"requested by alice\.", since=since)
    chat.send("press approve")
    chat.wait_for(r"Approved by alice\.", since=since)
    chat.work()
    chat.wait_for(r"✅ Live: ", since=since)
    assert "console:alice" not in chat.transcript.text(since)
    [request] = chat.requests(5)
    assert request.approver == "console:alice"
    approved = [e for e in audit.entries(chat.conn, request.id) if e["action"] == "approved"]
    assert [e["actor"] for e in approved] == ["console:alice"]


def test_a_phase_that_runs_too_long_is_stopped_and_rolled_back(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    old = service.live_head()
    slow = "import time\n\n\ndef test_slow():\n    time.sleep(60)\n"
    service.commit({"checks/test_slow.py": slow}, "slow tests")
    chat = start_chat(MOLT_PHASE_TIMEOUT="2")
    since = chat.send("deploy main")
    chat.send("press approve")
    chat.work()
    chat.wait_for(r"❌ Failed: ", since=since)
    chat.wait_for(r"did not finish within 2\.0 s", since=since)
    assert service.live_head() == old


def test_queued_requests_wait_their_turn_and_are_cleared_when_an_update_fails(
    service: ServiceRepo, start_chat: StartChat, tmp_path: Path
) -> None:
    gate, started = tmp_path / "gate", tmp_path / "started"
    slow = (
        "import os, pathlib, time\n\n\ndef test_slow():\n"
        f"    pathlib.Path({str(started)!r}).touch()\n"
        f"    while not os.path.exists({str(gate)!r}):\n        time.sleep(0.05)\n"
        "    assert False, 'slow and broken'\n"
    )
    old = service.live_head()
    service.commit({"checks/test_slow.py": slow}, "slow and broken", branch="slow")
    service.commit({"app.py": "VERSION = 2\n"}, "fine", branch="fine")
    service.commit({"app.py": "VERSION = 3\n"}, "also fine", branch="fine2")
    chat = start_chat()
    marks = []
    for branch in ("slow", "fine", "fine2"):
        marks.append(chat.send(f"deploy {branch}"))
        chat.wait_for(r"📋 Plan ready", since=marks[-1])
        chat.send("press approve")
    first, second, third = marks
    chat.wait_for(r"Queued: .*\(#2\)", since=second)
    chat.work_in_background()
    chat.wait_for(r"🚀 Starting ", since=first)
    queue = chat.send("queue")
    chat.wait_for(r"Queue: 2 waiting", since=queue)
    gate.touch()
    chat.wait_for(r"cleared from the queue because update \S+ failed", since=third)
    for request in chat.requests(3):
        chat.wait_for(rf"\[{request.codename or request.id}\] ❌ Failed: ", since=first)
    assert [r.state for r in chat.requests(3)] == [S.FAILED] * 3
    assert service.live_head() == old


def test_a_plan_the_live_checkout_left_behind_fails_before_its_tests_run(
    service: ServiceRepo, start_chat: StartChat, tmp_path: Path
) -> None:
    ran, tests = tmp_path / "ran", tmp_path / "tests.py"
    tests.write_text(  # marks a run of the planned commit's tests
        "import pathlib\n"
        "if 'VERSION = 2' in pathlib.Path('app.py').read_text():\n"
        f"    pathlib.Path({str(ran)!r}).touch()\n"
        "print('1 passed')\n"
    )
    service.commit(V2, "v2")
    chat = start_chat(MOLT_TEST_COMMAND=f"python {tests}")
    since = chat.send("deploy main")
    chat.wait_for(r"📋 Plan ready", since=since)
    git(service.live, "commit", "-q", "--allow-empty", "-m", "moved by hand")
    moved = service.live_head()
    chat.send("press approve")
    chat.work()
    chat.wait_for(
        rf"Failed during snapshot: the live checkout moved to {moved[:7]} since the plan",
        since=since,
    )
    # the service runs on the commit it was moved to, not on the plan's base
    chat.wait_for(rf"Nothing was touched: the service runs as before on `{moved[:7]}`", since=since)
    assert not ran.exists()
    assert service.live_head() == moved and service.live_status() == ""


def test_an_approvers_retry_of_an_unchanged_plan_runs_it_without_asking_again(
    service: ServiceRepo, start_chat: StartChat, tmp_path: Path
) -> None:
    """Once the cause outside the code is fixed, Retry by an approver is the approval of
    the same plan, audited as such."""
    ready = tmp_path / "ready"
    check = f"import os\n\n\ndef test_ready():\n    assert os.path.exists({str(ready)!r})\n"
    new = service.commit({"checks/test_ready.py": check}, "needs something outside the code")
    chat = start_chat()
    since = chat.send("deploy main")
    chat.wait_for(r"📋 Plan ready", since=since)
    chat.send("press approve")
    chat.work()
    chat.wait_for(r"❌ Failed: ", since=since)
    ready.touch()
    again = chat.send("press retry")
    chat.wait_for(r"Unchanged since it was approved:\S* console:alice approved it", since=again)
    chat.work()
    chat.wait_for(r"✅ Live: ", since=again)
    assert service.live_head() == new
    assert "Molt could not finish" not in chat.output
    [request] = chat.requests(5)
    approvals = [
        (e["actor"], e["detail"]["message"])
        for e in audit.entries(chat.conn, request.id)
        if e["action"] == "approved"
    ]
    assert approvals == [
        ("console:alice", "approved by console:alice"),
        ("console:alice", "approved by console:alice by pressing Retry: the plan is unchanged"),
    ]


def test_history_shows_a_request_and_its_audit_trail(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    service.commit({"notes.txt": "x\n"}, "notes")
    chat = start_chat()
    since = chat.send("deploy main")
    chat.send("press approve")
    chat.work()
    codename = chat.wait_for(r"✅ Live: (\S+)", since=since).group(1)
    shown = molt("history", codename)
    assert shown.returncode == 0, shown.stderr
    for action in ("received", "preflight", "plan_ready", "approved", "queued", "running"):
        assert action in shown.stdout
    assert "succeeded" in shown.stdout
    assert "console:alice" in shown.stdout


def test_pause_holds_approved_updates_until_resume(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    old = service.live_head()
    new = service.commit(V2, "v2")
    chat = start_chat()
    paused = chat.send("pause")
    chat.wait_for(r"Paused: no new update will start until `resume`", since=paused)
    since = chat.send("deploy main")
    chat.wait_for(r"📋 Plan ready", since=since)  # requests still get plans
    chat.send("press approve")
    chat.wait_for(r"🕒 Queued", since=since)
    [request] = chat.requests(1)
    chat.work_in_background()
    chat.wait_until_taken(request)  # a worker has its job, and holds it while paused
    status = chat.send("status")
    chat.wait_for(r"Updates are paused: approved requests wait until `resume`", since=status)
    chat.wait_for(r"Nothing is running", since=status)
    assert chat.requests(1)[0].state is S.QUEUED
    assert service.live_head() == old

    resumed = chat.send("resume")
    chat.wait_for(r"Resumed: queued updates will start in turn", since=resumed)
    chat.wait_for(r"✅ Live: ", since=resumed)
    assert service.live_head() == new
