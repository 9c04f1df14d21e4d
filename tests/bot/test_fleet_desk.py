"""The desk of a fleet: the target comes first in the grammar, a channel that one target
lists defaults to it, an ambiguous command is answered with the targets, and each target's
own approvers decide its plans."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from bot.commands import Command, parse
from bot.desk import Desk
from bot.rendering import render
from bot.slack.blocks import content
from pipeline import audit
from pipeline.config import Settings, load_settings
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, RequestStore
from tests.bot.test_desk import Replies
from tests.support import ServiceRepo

TARGETS = ("api", "web")
ANN = Origin("console", "ann", "console")
WES = Origin("console", "wes", "console")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deploy api v1.4", Command("deploy", "v1.4", "deploy api v1.4", target="api")),
        ("rollback web", Command("rollback", "", "rollback web", target="web")),
        ("status api", Command("status", "", "status api", target="api")),
        ("queue web", Command("queue", "", "queue web", target="web")),
        ("history api", Command("history", "", "history api", target="api")),
        ("stop web", Command("stop", "", "stop web", target="web")),
        (
            "api: add a /ping route",
            Command("change", "add a /ping route", "api: add a /ping route", target="api"),
        ),
        ("deploy v1.4", Command("deploy", "v1.4", "deploy v1.4")),
        ("status", Command("status", "", "status")),
        ("db: add a table", Command("change", "db: add a table", "db: add a table")),
    ],
)
def test_in_a_fleet_the_target_comes_first(text: str, expected: Command) -> None:
    assert parse(text, TARGETS) == expected


def test_with_one_target_the_grammar_is_unchanged() -> None:
    assert parse("deploy api v1.4").verb == "invalid"
    assert parse("api: add a route") == Command("change", "api: add a route", "api: add a route")


@pytest.fixture
def fleet_settings(settings: Settings, service: ServiceRepo) -> Settings:
    both = {"dir": str(service.live), "test_command": service.test_command}
    return load_settings(
        data_dir=settings.data_dir,
        authorised_users=["console:alice", "slack:U1ALICE", "console:ann", "console:wes"],
        targets={
            "api": both | {"approvers": ["console:ann"], "operators": ["console:ann"]},
            "web": both
            | {
                "approvers": ["console:wes"],
                "operators": ["console:wes"],
                "channels": ["C1WEB", "acme/web"],
            },
        },
    )


def test_a_channel_one_target_lists_defaults_to_it_and_elsewhere_the_targets_are_listed(
    fleet_settings: Settings, conn: redis.Redis
) -> None:
    replies = Replies()
    desk = Desk(fleet_settings, conn, {"slack": replies})
    try:
        desk.say(Origin("slack", "U1ALICE", "C1WEB"), "deploy main").result(timeout=60)
        [request] = RequestStore(conn).recent(1)
        assert request.target == "web"  # and blocked: no worker serves web here
        assert request.state is S.BLOCKED and "no worker for web" in request.message
        desk.say(Origin("slack", "U1ALICE", "C2ELSE"), "deploy main").result(timeout=60)
        assert [m.title for m in replies.replies] == ["Which target?"]
        assert "api, web" in replies.replies[0].text
        assert len(RequestStore(conn).recent(5)) == 1
        # A repository a target lists stands for each of its issues.
        assert desk._channel_target("acme/web#12") == "web"
        assert desk._channel_target("acme/api#3") == ""
    finally:
        desk.close()


def test_only_the_targets_own_approvers_and_operators_decide(
    fleet_settings: Settings, conn: redis.Redis
) -> None:
    store = RequestStore(conn)
    request = store.create(WES, "deploy web main", "deploy", "main", target="web")
    for state in (S.PREFLIGHT, S.PLANNING):
        store.transition(request.id, state, actor="molt")
    store.transition(
        request.id,
        S.PLAN_READY,
        actor="molt",
        fields={"plan": {"risk": {"level": "low"}}, "plan_ready_at": time.time()},
    )
    replies = Replies()
    desk = Desk(fleet_settings, conn, {"console": replies})
    try:
        desk.press(ANN, "approve", request.id).result(timeout=60)
        assert store.get(request.id).state is S.PLAN_READY
        desk.say(ANN, "stop web").result(timeout=60)
        assert replies.replies[-1].template == "refused"
        desk.say(ANN, "pause api").result(timeout=60)
        assert replies.replies[-1].title.startswith("Molt status: paused")
        desk.press(WES, "approve", request.id).result(timeout=60)
        approved = store.get(request.id)
        assert approved.state is S.QUEUED and approved.approver == "console:wes"
    finally:
        desk.close()
    refusals = [e for e in audit.entries(conn, request.id) if e["actor"] == "console:ann"]
    assert refusals and "approvers" in str(refusals[0]["detail"])
    # Every entry names its target: the refused stop, the pause.
    ann = [
        (e["action"], e["detail"].get("target"))
        for e in audit.entries(conn)
        if e["actor"] == "console:ann"
    ]
    assert ("operator_refused", "web") in ann and ("pause", "api") in ann


def test_status_of_the_fleet_lists_every_target(
    fleet_settings: Settings, conn: redis.Redis, tmp_path: Path
) -> None:
    replies = Replies()
    desk = Desk(fleet_settings, conn, {"console": replies})
    try:
        desk.say(ANN, "status").result(timeout=60)
    finally:
        desk.close()
    [shown] = replies.replies
    assert shown.title == "Molt fleet: 2 targets"
    assert "*api*: idle, no worker seen yet" in shown.text
    assert "*web*: idle, no worker seen yet" in shown.text


def test_every_message_of_a_fleets_request_names_its_target() -> None:
    named = {"request_id": "r1", "codename": "amber-otter", "target_name": "api"}
    message = render("queued", named)
    assert message.title.endswith(" · api") and message.target == "api"
    payload = content(message, "r1", "amber-otter")["metadata"]["event_payload"]
    assert payload["target"] == "api"
    assert render("queued", {"request_id": "r1", "codename": "amber-otter"}).target == ""
