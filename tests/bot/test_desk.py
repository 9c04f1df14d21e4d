"""The desk: every verb of the grammar reaches what it names, and long work never keeps
a quick answer waiting."""

from __future__ import annotations

from pathlib import Path

import redis

from bot.base import Adapter
from bot.commands import OPERATOR_VERBS, VERBS
from bot.desk import BY_VERB, Desk
from bot.messages import Message
from pipeline.config import Settings
from pipeline.requests import Origin, Request
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
    desk = Desk(settings.model_copy(update={"test_command": slow}), conn, {"console": replies})
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
