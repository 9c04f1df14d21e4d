"""Intake and approval (pipeline/intake/flow.py, pipeline/intake/approval.py) as a person
meets them in the console, with Molt in this process: who may ask, who may approve, and a
plan that waits in the event stream while nobody is there to show it."""

from __future__ import annotations

from pipeline.config import load_settings
from pipeline.intake import flow as intake
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin
from tests.desk import StartChat
from tests.support import ServiceRepo


def test_an_unauthorised_user_gets_a_themed_refusal_and_nothing_is_planned(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    service.commit({"app.py": "VERSION = 2\n"}, "v2")
    chat = start_chat(MOLT_CONSOLE_USER="mallory")
    since = chat.send("deploy main")
    chat.wait_for(r"🚫 Request refused", since=since)
    chat.wait_for(r"not in MOLT_AUTHORISED_USERS", since=since)
    [request] = chat.requests(5)
    assert request.state is S.REFUSED
    assert request.plan is None
    assert "Plan ready" not in chat.output


def test_a_non_approver_cannot_approve(service: ServiceRepo, start_chat: StartChat) -> None:
    old = service.live_head()
    service.commit({"app.py": "VERSION = 2\n"}, "v2")
    chat = start_chat(MOLT_CONSOLE_USER="carol", MOLT_AUTHORISED_USERS="console:carol")
    since = chat.send("deploy main")
    chat.send("press approve")
    chat.wait_for(r"only approvers may approve", since=since)
    chat.work()
    [request] = chat.requests(5)
    assert request.state is S.PLAN_READY
    assert service.live_head() == old


def test_events_wait_in_the_stream_while_molt_is_down(
    service: ServiceRepo, start_chat: StartChat
) -> None:
    """A plan made while no notifier runs is shown by the next one that starts."""
    service.commit({"notes.txt": "x\n"}, "notes")
    first = start_chat()
    first.close()
    request = intake.submit(
        load_settings(), first.conn, Origin("console", "alice"), "deploy", "main", "deploy main"
    )
    assert request.state is S.PLAN_READY
    second = start_chat()
    second.wait_for(rf"\[{request.id}\] 📋 Plan ready")
