"""Autonomy modes and limits (pipeline/intake/autonomy.py) as the console shows them, with Molt in
this process: observe mode plans only, auto mode lands low-risk plans itself, semi mode
runs phase 1 before approval, and the daily limit and switches block with a clear message."""

from __future__ import annotations

from pipeline.requests.states import RequestState as S
from tests.desk import StartChat, molt
from tests.support import ServiceRepo

V2 = {"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}
V3 = {"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 3\n"}


def test_observe_mode_makes_plans_that_nothing_can_run(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    old = service.live_head()
    service.commit(V2, "v2")
    chat = start_chat(MOLT_AUTONOMY="observe", MOLT_CONSOLE_WAIT="2")
    since = chat.send("deploy main")
    chat.wait_for(r"📋 Plan ready", since=since)
    chat.wait_for(
        r"Observe mode is on \(MOLT_AUTONOMY=observe\): this plan is for reading", since=since
    )
    chat.wait_for(r"\[Reject\] \[Request changes\]", since=since)
    pressed = chat.send("press approve")
    chat.wait_for(r"nothing waits for approve", since=pressed)
    chat.work()
    assert "[Approve]" not in chat.output
    [request] = chat.requests(1)
    assert request.state is S.PLAN_READY
    assert service.live_head() == old


def test_auto_mode_lands_a_low_risk_plan_itself_and_leaves_medium_risk_to_a_person(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    new = service.commit(V2, "v2")
    chat = start_chat(MOLT_AUTONOMY="auto")
    since = chat.send("deploy main")
    chat.wait_for(r"Low risk: Molt approves this plan itself \(MOLT_AUTONOMY=auto\)", since=since)
    chat.wait_for(r"Approved by molt:auto", since=since)
    chat.work()
    codename = chat.wait_for(r"✅ Live: (\S+)", since=since).group(1)
    assert service.live_head() == new
    trail = molt("history", codename)
    assert trail.returncode == 0
    assert any("molt:auto" in line and "approved" in line for line in trail.stdout.splitlines())

    service.commit({"requirements.txt": "redis>=5\n"}, "a new dependency")
    again = chat.send("deploy main")
    chat.wait_for(r"this one needs an approver", since=again)
    chat.wait_for(r"\[Approve\] \[Reject\]", since=again)
    chat.work()
    [request] = chat.requests(1)
    assert request.state is S.PLAN_READY
    assert service.live_head() == new


def test_semi_mode_shows_phase_one_results_before_approval_and_still_runs_both_phases(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    old = service.live_head()
    new = service.commit(V2, "v2")
    chat = start_chat(MOLT_AUTONOMY="semi")
    since = chat.send("deploy main")
    chat.wait_for(r"Phase 1, run before approval \(MOLT_AUTONOMY=semi\): passed", since=since)
    chat.wait_for(r"✓ tests: 1 passed", since=since)
    chat.wait_for(r"\[Approve\]", since=since)
    assert service.live_head() == old
    chat.send("press approve")
    chat.work()
    chat.wait_for(r"✅ Live: ", since=since)
    assert service.live_head() == new
    assert "phase 1: tests" in chat.output and "phase 2: tests" in chat.output


def test_the_daily_limit_and_a_switched_off_component_block_with_a_clear_message(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    new = service.commit(V2, "v2")
    chat = start_chat(MOLT_MAX_CHANGES_PER_DAY="1", MOLT_ALLOW_CHANGES="false")
    since = chat.send("deploy main")
    chat.send("press approve")
    chat.work()
    chat.wait_for(r"✅ Live: ", since=since)
    service.commit(V3, "v3")
    again = chat.send("deploy main")
    chat.wait_for(r"⛔ Blocked", since=again)
    chat.wait_for(
        r"MOLT_MAX_CHANGES_PER_DAY=1\): 1 update started in the last 24 hours", since=again
    )
    status = chat.send("status")
    chat.wait_for(r"Updates started in 24 h: 1 of 1", since=status)
    chat.wait_for(r"Switched off: MOLT_ALLOW_CHANGES=false", since=status)
    change = chat.send("add a ping command")
    chat.wait_for(
        r"change requests in words are switched off here \(MOLT_ALLOW_CHANGES=false\)",
        since=change,
    )
    assert service.live_head() == new
    assert [r.state for r in chat.requests(3)] == [S.BLOCKED, S.BLOCKED, S.SUCCEEDED]
