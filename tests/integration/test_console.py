"""End to end through the console chat: a real Molt process with its real workers,
the embedded Redis, and real git repositories."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipeline import audit, store
from pipeline.config import load_settings
from pipeline.requests import RequestStore
from tests.support import (
    ROOT,
    Molt,
    ServiceRepo,
    hang_on_live,
    processes_in,
    update_processes,
    wait_for_file,
)

StartMolt = Callable[..., Molt]
FAILING_CHECK = "def test_new_feature():\n    assert 1 + 1 == 3, 'new feature is broken'\n"


def _up(molt: Molt) -> Molt:
    molt.wait_for(r"Molt \S+ is up")
    return molt


def _store(data_dir: Path) -> RequestStore:
    return RequestStore(store.connect(load_settings(data_dir=data_dir)))


def test_deploy_lands_after_approval_and_reports_success(
    service: ServiceRepo, start_molt: StartMolt
) -> None:
    old = service.live_head()
    new = service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")
    molt = _up(start_molt())
    since = molt.send("deploy main")
    molt.wait_for(r"📋 Plan ready", since=since)
    molt.wait_for(rf"Rollback point: {old[:7]} on main", since=since)
    molt.send("press approve")
    molt.wait_for(r"✅ Live: ", since=since)
    assert service.live_head() == new
    assert service.live_status() == ""
    assert "phase 1: tests" in molt.output and "phase 2: tests" in molt.output


def test_failing_test_rolls_back_and_retry_runs_again(
    service: ServiceRepo, start_molt: StartMolt
) -> None:
    old = service.live_head()
    service.commit({"checks/test_new.py": FAILING_CHECK}, "a broken feature")
    molt = _up(start_molt())
    since = molt.send("deploy main")
    molt.send("press approve")
    molt.wait_for(r"❌ Failed: ", since=since)
    molt.wait_for(r"new feature is broken|exited 1", since=since)
    molt.wait_for(r"press retry", since=since)
    assert service.live_head() == old
    assert service.live_status() == ""

    fixed = service.commit({"checks/test_new.py": FAILING_CHECK.replace("3", "2")}, "fix it")
    again = molt.send("press retry")
    molt.wait_for(r"📋 Plan ready", since=again)
    molt.send("press approve")
    molt.wait_for(r"✅ Live: ", since=again)
    assert service.live_head() == fixed


def test_people_are_named_by_their_console_names_and_audited_as_principals(
    service: ServiceRepo, start_molt: StartMolt, data_dir: Path
) -> None:
    service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")
    molt = _up(start_molt())
    since = molt.send("deploy main")
    molt.wait_for(r"requested by alice\.", since=since)
    molt.send("press approve")
    molt.wait_for(r"Approved by alice\.", since=since)
    molt.wait_for(r"✅ Live: ", since=since)
    assert "console:alice" not in molt.output[since:]
    requests = _store(data_dir)
    [request] = requests.recent(5)
    assert request.approver == "console:alice"
    approved = [e for e in audit.entries(requests.conn, request.id) if e["action"] == "approved"]
    assert [e["actor"] for e in approved] == ["console:alice"]


def test_unauthorised_user_gets_a_themed_refusal_and_nothing_is_planned(
    service: ServiceRepo, start_molt: StartMolt, data_dir: Path
) -> None:
    service.commit({"app.py": "VERSION = 2\n"}, "v2")
    molt = _up(start_molt(MOLT_CONSOLE_USER="mallory"))
    since = molt.send("deploy main")
    molt.wait_for(r"🚫 Request refused", since=since)
    molt.wait_for(r"not in MOLT_AUTHORISED_USERS", since=since)
    [request] = _store(data_dir).recent(5)
    assert request.state.value == "refused"
    assert request.plan is None
    assert "Plan ready" not in molt.output


def test_a_non_approver_cannot_approve(
    service: ServiceRepo, start_molt: StartMolt, data_dir: Path
) -> None:
    old = service.live_head()
    service.commit({"app.py": "VERSION = 2\n"}, "v2")
    molt = _up(start_molt(MOLT_CONSOLE_USER="carol", MOLT_AUTHORISED_USERS="console:carol"))
    since = molt.send("deploy main")
    molt.send("press approve")
    molt.wait_for(r"only approvers may approve", since=since)
    [request] = _store(data_dir).recent(5)
    assert request.state.value == "plan_ready"
    assert service.live_head() == old


def test_health_check_failing_after_restart_rolls_back_and_restarts_again(
    service: ServiceRepo, start_molt: StartMolt, tmp_path: Path
) -> None:
    restarts = tmp_path / "restarts.log"
    old = service.live_head()
    service.commit({"UNHEALTHY": "the new version cannot serve\n"}, "breaks at runtime")
    molt = _up(
        start_molt(MOLT_BOOT_TIMEOUT="2", MOLT_RESTART_COMMAND=f"git rev-parse HEAD >> {restarts}")
    )
    since = molt.send("deploy main")
    molt.send("press approve")
    molt.wait_for(r"❌ Failed: ", since=since)
    molt.wait_for(r"health command `python health.py` still failing", since=since)
    assert service.live_head() == old
    assert service.live_status() == ""
    # Restarted onto the new code, then again onto the snapshot once rolled back.
    assert restarts.read_text().split() == [service.work_head(), old]


def test_a_phase_that_runs_too_long_is_stopped_and_rolled_back(
    service: ServiceRepo, start_molt: StartMolt
) -> None:
    old = service.live_head()
    slow = "import time\n\n\ndef test_slow():\n    time.sleep(60)\n"
    service.commit({"checks/test_slow.py": slow}, "slow tests")
    molt = _up(start_molt(MOLT_PHASE_TIMEOUT="2"))
    since = molt.send("deploy main")
    molt.send("press approve")
    molt.wait_for(r"❌ Failed: ", since=since)
    molt.wait_for(r"did not finish within 2\.0 s", since=since)
    assert service.live_head() == old


def test_events_wait_in_the_stream_while_molt_is_down(
    service: ServiceRepo, start_molt: StartMolt, data_dir: Path, molt_env: dict[str, str]
) -> None:
    from pipeline import intake
    from pipeline.requests import Origin

    service.commit({"notes.txt": "x\n"}, "notes")
    first = _up(start_molt())
    first.stop()
    settings = load_settings(
        data_dir=data_dir,
        target_dir=service.live,
        test_command=service.test_command,
        authorised_users=["console:alice"],
    )
    conn = store.connect(settings)
    request = intake.submit(
        settings, conn, Origin("console", "alice"), "deploy", "main", "deploy main"
    )
    assert request.state.value == "plan_ready"
    second = _up(start_molt())
    second.wait_for(rf"\[{request.id}\] 📋 Plan ready")


def test_history_shows_a_request_and_its_audit_trail(
    service: ServiceRepo, start_molt: StartMolt, molt_env: dict[str, str], tmp_path: Path
) -> None:
    service.commit({"notes.txt": "x\n"}, "notes")
    molt = _up(start_molt())
    since = molt.send("deploy main")
    molt.send("press approve")
    codename = molt.wait_for(r"✅ Live: (\S+)", since=since).group(1)
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "history", codename],
        env={**os.environ, **molt_env, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    for action in (
        "received",
        "preflight",
        "plan_ready",
        "approved",
        "queued",
        "running",
        "succeeded",
    ):
        assert action in result.stdout
    assert "console:alice" in result.stdout


def test_queued_requests_wait_their_turn_and_are_cleared_when_an_update_fails(
    service: ServiceRepo, start_molt: StartMolt, data_dir: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    slow = (
        "import os, pathlib, time\n\n\ndef test_slow():\n"
        f"    pathlib.Path({str(tmp_path / 'started')!r}).touch()\n"
        f"    while not os.path.exists({str(gate)!r}):\n        time.sleep(0.05)\n"
        "    assert False, 'slow and broken'\n"
    )
    old = service.live_head()
    service.commit({"checks/test_slow.py": slow}, "slow and broken", branch="slow")
    service.commit({"app.py": "VERSION = 2\n"}, "fine", branch="fine")
    service.commit({"app.py": "VERSION = 3\n"}, "also fine", branch="fine2")
    molt = _up(start_molt())
    first = molt.send("deploy slow")
    molt.wait_for(r"📋 Plan ready", since=first)
    molt.send("press approve")
    second = molt.send("deploy fine")
    molt.wait_for(r"📋 Plan ready", since=second)
    molt.send("press approve")
    third = molt.send("deploy fine2")
    molt.wait_for(r"📋 Plan ready", since=third)
    molt.send("press approve")
    molt.wait_for(r"🚀 Starting ", since=first)
    molt.wait_for(r"Queued: .*\(#2\)", since=second)
    queue = molt.send("queue")
    molt.wait_for(r"Queue: 2 waiting", since=queue)
    gate.touch()
    molt.wait_for(r"cleared from the queue because update \S+ failed", since=third)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [r.state.value for r in _store(data_dir).recent(3)]
        if states == ["failed"] * 3:
            break
        time.sleep(0.1)
    assert states == ["failed"] * 3
    molt.wait_count(r"❌ Failed: ", 3)
    assert service.live_head() == old


def test_worker_killed_mid_update_is_rolled_back(
    service: ServiceRepo, start_molt: StartMolt, data_dir: Path, tmp_path: Path
) -> None:
    started = tmp_path / "phase2-started"
    hang = hang_on_live(service.live, started)
    old = service.live_head()
    service.commit({"checks/test_hang.py": hang}, "hangs in phase 2")
    molt = _up(start_molt())
    since = molt.send("deploy main")
    molt.send("press approve")
    wait_for_file(started, molt)
    assert service.live_head() != old  # the live checkout was touched
    for group in update_processes(data_dir):  # as an OOM killer or a crash would
        os.killpg(group, signal.SIGKILL)
    molt.wait_for(r"❌ Failed: ", since=since)
    molt.wait_for(r"worker running this update stopped during phase 2", since=since)
    assert service.live_head() == old
    assert service.live_status() == ""
    assert processes_in(service.live) == []  # its test command went with it


def test_a_worker_killed_in_phase_two_leaves_no_test_command_running(
    service: ServiceRepo, start_molt: StartMolt, data_dir: Path, tmp_path: Path
) -> None:
    """The test command's own children outlive its shell (they ignore their parent's
    death): the rollback of the abandoned update kills its whole process group first."""
    started = tmp_path / "phase2-started"
    stubborn = (
        "import os, pathlib, signal, subprocess, sys, time\n\n\ndef test_stubborn():\n"
        f"    if os.getcwd() == {str(service.live)!r}:\n"
        "        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"        pathlib.Path({str(started)!r}).touch()\n"
        "        signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "        time.sleep(600)\n"
    )
    old = service.live_head()
    service.commit({"checks/test_stubborn.py": stubborn}, "never ends in phase 2")
    molt = _up(start_molt())
    since = molt.send("deploy main")
    molt.send("press approve")
    wait_for_file(started, molt)
    assert processes_in(service.live)  # the test command runs in the live checkout
    for group in update_processes(data_dir):
        os.killpg(group, signal.SIGKILL)
    molt.wait_for(r"worker running this update stopped during phase 2", since=since)
    molt.wait_for(
        r"its test command `python service_tests\.py` was still running "
        r"\(process group \d+, 2 process\(es\)\) and was killed first",
        since=since,
    )
    assert processes_in(service.live) == []
    assert service.live_head() == old
    assert service.live_status() == ""


def test_an_approvers_retry_of_an_unchanged_plan_runs_it_without_asking_again(
    service: ServiceRepo, start_molt: StartMolt, data_dir: Path, tmp_path: Path
) -> None:
    """Once the cause outside the code is fixed, Retry by an approver is the approval of
    the same plan, audited as such."""
    ready = tmp_path / "ready"
    check = f"import os\n\n\ndef test_ready():\n    assert os.path.exists({str(ready)!r})\n"
    new = service.commit({"checks/test_ready.py": check}, "needs something outside the code")
    molt = _up(start_molt())
    since = molt.send("deploy main")
    molt.wait_for(r"📋 Plan ready", since=since)
    molt.send("press approve")
    molt.wait_for(r"❌ Failed: ", since=since)
    ready.touch()
    again = molt.send("press retry")
    molt.wait_for(r"Unchanged since it was approved:\S* console:alice approved it", since=again)
    molt.wait_for(r"✅ Live: ", since=again)
    assert service.live_head() == new
    assert "that did not work" not in molt.output
    requests = _store(data_dir)
    [request] = requests.recent(5)
    approvals = [
        (e["actor"], e["detail"]["message"])
        for e in audit.entries(requests.conn, request.id)
        if e["action"] == "approved"
    ]
    assert approvals == [
        ("console:alice", "approved by console:alice"),
        ("console:alice", "approved by console:alice by pressing Retry: the plan is unchanged"),
    ]
