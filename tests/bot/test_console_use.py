"""The console as a new person uses it: what each line typed answers, in the console
itself (the real Console, Desk and Notifier, real Redis and git)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import redis

from pipeline.config import Settings
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import RequestStore
from tests.bot.console_harness import Session
from tests.support import ServiceRepo


@pytest.fixture
def session(settings: Settings, conn: redis.Redis) -> Iterator[Session]:
    session = Session(settings, conn)
    yield session
    session.close()


def test_press_with_nothing_to_press_answers_at_once_and_the_console_goes_on(
    session: Session, service: ServiceRepo, conn: redis.Redis
) -> None:
    """It neither freezes the console nor approves the next plan that appears."""
    service.commit({"notes.txt": "x\n"}, "notes")
    since = session.send("press approve")
    session.wait_for(r"nothing waits for approve", since, timeout=30)
    since = session.send("status")
    session.wait_for(r"Molt status", since, timeout=30)
    since = session.send("deploy main")
    session.wait_for(r"Plan ready", since)
    [request] = RequestStore(conn).recent(5)
    assert RequestStore(conn).get(request.id).state is S.PLAN_READY
    assert "Approved by" not in session.output


def test_press_right_after_a_deploy_waits_for_that_plan_and_approves_it(
    session: Session, service: ServiceRepo, conn: redis.Redis
) -> None:
    service.commit({"notes.txt": "x\n"}, "notes")
    since = session.send("deploy main")
    session.send("press approve")
    session.wait_for(r"Approved by alice", since)
    [request] = RequestStore(conn).recent(5)
    assert request.approver == "console:alice"


def test_a_press_on_a_request_that_moved_on_says_where_it_is_now(
    session: Session, service: ServiceRepo, conn: redis.Redis
) -> None:
    service.commit({"notes.txt": "x\n"}, "notes")
    since = session.send("deploy main")
    session.wait_for(r"Plan ready", since)
    [request] = RequestStore(conn).recent(5)
    since = session.send(f"press reject {request.id}")
    session.wait_for(r"Rejected", since)
    since = session.send(f"press approve {request.codename or request.id}")
    session.wait_for(r"already rejected by alice", since, timeout=30)


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("deploy", "usage: deploy <ref>"),
        ("deploy main; rm -rf /", "usage: deploy <ref>"),
        ("deploy " + "x" * 100_000, "that request is over 2000 characters"),
    ],
)
def test_a_command_that_does_not_parse_says_why(session: Session, line: str, said: str) -> None:
    since = session.send(line)
    session.wait_for(r"Molt commands", since, timeout=30)
    assert said in session.output[since:]


def test_a_stray_word_is_an_unknown_command_and_no_request(
    session: Session, conn: redis.Redis
) -> None:
    since = session.send("clear")
    session.wait_for(r"unknown command `clear`", since, timeout=30)
    assert RequestStore(conn).recent(5) == []


def test_a_change_in_words_without_a_planner_is_refused_saying_how_to_enable_it(
    session: Session,
) -> None:
    since = session.send("add a ping route to the service")
    session.wait_for(r"Request refused", since)
    said = session.output[since:]
    assert "set ANTHROPIC_API_KEY" in said
    assert "press retry" not in said and "ask an operator" not in said


def test_status_names_the_live_version_and_what_is_being_checked(
    session: Session, service: ServiceRepo, conn: redis.Redis
) -> None:
    requests = RequestStore(conn)
    asked = requests.create(session.console.origin, "deploy main", "deploy", "main")
    requests.transition(asked.id, S.PREFLIGHT, actor="molt", message="running pre-flight checks")
    since = session.send("status")
    session.wait_for(r"Molt status", since, timeout=30)
    said = session.output[since:]
    assert re.search(rf"Live version: \W?{service.live_head()[:7]}", said)
    assert "Nothing is running" not in said
    assert f"{asked.id} preflight" in said


def test_help_in_the_console_lists_press_revise_and_quit(session: Session) -> None:
    since = session.send("help")
    session.wait_for(r"Molt commands", since, timeout=30)
    said = session.output[since:]
    assert "press approve|reject|retry [request]" in said
    assert "press revise [request] <what to change>" in said
    assert "quit — leave the console" in said


def test_request_changes_is_pressed_as_press_revise(
    session: Session, service: ServiceRepo, conn: redis.Redis
) -> None:
    first = service.commit({"notes.txt": "x\n"}, "notes")
    service.commit({"notes.txt": "y\n"}, "more notes")
    since = session.send("deploy main")
    session.wait_for(r"Plan ready", since)
    since = session.send(f"press revise deploy {first}")
    session.wait_for(r"Plan ready", since)
    [request] = RequestStore(conn).recent(5)
    assert request.argument == first
    assert request.state is S.PLAN_READY
