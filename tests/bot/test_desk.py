"""The desk: every verb of the grammar reaches what it names, long work never keeps a
quick answer waiting, and a click that came too late is answered like any other refused
click."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from bot.base import Adapter
from bot.commands import OPERATOR_VERBS, VERBS
from bot.desk import BY_VERB, Desk
from bot.messages import Message
from pipeline import audit, events, keyspace
from pipeline.config import Settings
from pipeline.intake import approval
from pipeline.intake import flow as intake
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request, RequestStore
from tests.support import ServiceRepo

ALICE = Origin("console", "alice")


class Replies(Adapter):
    """The console's answers, kept."""

    platform = "console"

    def __init__(self) -> None:
        self.replies: list[Message] = []

    def deliver(self, request: Request, message: Message) -> None:
        pass

    def reply(self, origin: Origin, message: Message) -> None:
        self.replies.append(message)


def test_every_operator_verb_has_its_own_entry_and_never_becomes_a_request() -> None:
    assert BY_VERB.keys() >= OPERATOR_VERBS
    assert Desk._ask not in [BY_VERB[verb] for verb in OPERATOR_VERBS]


def test_only_deploy_and_words_become_a_new_request() -> None:
    assert VERBS - BY_VERB.keys() == {"deploy"}
    assert {"help", "answer", "invalid"} <= BY_VERB.keys()


def test_status_and_help_answer_while_long_pre_flight_runs_fill_the_desk(
    service: ServiceRepo, settings: Settings, conn: redis.Redis, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"  # the tests wait until the test lets them finish
    slow = f"while [ ! -e {gate} ]; do sleep 0.05; done; {service.test_command}"
    replies = Replies()
    desk = Desk(
        settings.model_copy(update={"test_command": slow, "sandbox": "off"}),
        conn,
        {"console": replies},
    )
    try:
        deploys = [desk.say(ALICE, "deploy main") for _ in range(6)]  # more than its threads
        desk.say(ALICE, "status").result(timeout=60)
        desk.say(ALICE, "help").result(timeout=60)
        assert [m.title for m in replies.replies] == ["Molt status", "Molt commands"]
        assert not any(deploy.done() for deploy in deploys)
    finally:
        gate.touch()
        for deploy in deploys:
            deploy.result(timeout=120)
        desk.close()


def test_a_click_on_a_request_that_moved_on_is_refused_to_that_person_alone(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    """Retry, Request changes and answers on a request that succeeded, failed or was
    answered are told where it is now, audited, and not as a failure."""
    service.commit({"notes.txt": "x\n"}, "notes")
    request = intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main")
    assert approval.reject(settings, conn, request.id, Origin("console", "bob"))
    desk = Desk(settings, conn, {})
    try:
        desk.press(ALICE, "retry", request.id).result(timeout=60)
        desk.revise(ALICE, request.id, "deploy other").result(timeout=60)
        desk.answer(ALICE, request.id, "yes").result(timeout=60)
    finally:
        desk.close()
    said = "this plan was already rejected by console:bob; ask again if it is still wanted"
    unanswerable = "this request is not waiting for answers: it was already rejected by console:bob"
    told = [
        (e.template, e.data.get("reason"))
        for e in (events.Event.from_fields(i, f) for i, f in conn.xrange(keyspace.EVENTS))
        if e.audience == ALICE.principal
    ]
    assert told == [
        ("not_allowed", said),
        ("not_allowed", said),
        ("not_allowed", f"{unanswerable}; ask again if it is still wanted"),
    ]
    refused = [e["action"] for e in audit.entries(conn, request.id) if "refused" in e["action"]]
    assert refused == ["retry_refused", "revise_refused", "answer_refused"]
    assert RequestStore(conn).get(request.id).state is S.REJECTED


def test_a_click_that_breaks_tells_the_person_what_was_not_done_and_logs_why(
    settings: Settings, conn: redis.Redis, service: ServiceRepo, capfd: pytest.CaptureFixture[str]
) -> None:
    """A request Molt cannot read (its stored plan is not JSON): the click is answered with
    what was not done and what to do, and the traceback is in the log under the same error."""
    service.commit({"notes.txt": "x\n"}, "notes")
    request = intake.submit(settings, conn, ALICE, "deploy", "main", "deploy main")
    conn.hset(keyspace.request(request.id), "plan", "{torn")
    replies = Replies()
    desk = Desk(settings, conn, {"console": replies})
    try:
        desk.press(ALICE, "approve", request.id).result(timeout=60)
    finally:
        desk.close()
    [told] = replies.replies
    assert (told.template, told.private) == ("not_done", True)
    shown = told.plain()
    assert f"Molt could not finish your Approve click on {request.id}" in shown
    assert "Try again in a minute. If it fails again, ask an operator" in shown
    [ref] = re.findall(r"look for error (\w+) in Molt's log", shown)
    logged = "".join(capfd.readouterr())
    assert ref in logged and "JSONDecodeError" in logged and "Traceback" in logged
