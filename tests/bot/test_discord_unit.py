"""The Discord adapter: what embeds and buttons people see, the command grammar's way in,
and a request's status kept in one message (edited in place, coalesced, past rate limits,
deleted messages and closed channels), against a fake Discord on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import discord
import pytest

import bot.discord.adapter as adapter_module
from bot.discord.adapter import Discord
from bot.discord.embeds import (
    BLURPLE,
    EMBED_LIMIT,
    GREEN,
    NO_MENTIONS,
    RED,
    colour_for,
    to_embed,
)
from bot.discord.gateway import command_signature
from bot.discord.listeners import command_text
from bot.discord.views import BUTTON_ID, submitted_value, to_buttons
from bot.messages import Button, Message, MessageField
from bot.people import mark
from bot.rendering import render
from pipeline import store as embedded
from pipeline.config import load_settings
from pipeline.requests.store import Origin, Request, RequestStore
from tests.fakes.discord import (
    CHANNEL_ID,
    OTHER_CHANNEL_ID,
    ROLE_DEPLOYERS,
    TOKEN,
    FakeDiscord,
    Person,
)

REQUEST_ID = "r1a2b3c4d"
ANA = Person("1300000000000000201", "ana", (ROLE_DEPLOYERS,))
POST = "POST /channels/{id}/messages"
PATCH = "PATCH /channels/{id}/messages/{id}"


def plan_ready(risk: str = "low", request_id: str = REQUEST_ID) -> Message:
    context: dict[str, Any] = {
        "request_id": request_id,
        "codename": "amber-otter",
        "requester": "ana",
        "argument": "v1.4",
        "expires_in": 3600,
        "plan": {
            "kind": "deploy",
            "ref": "v1.4",
            "summary": "Deploy v1.4 onto main: 3 commits, 4 files",
            "target_commit": "abcdef1234567890abcdef1234567890abcdef12",
            "base_commit": "1234567890abcdef1234567890abcdef12345678",
            "base_branch": "main",
            "risk": {"level": risk, "reasons": ["tests cover every changed file"]},
            "tasks": [{"step": 1, "name": "snapshot"}, {"step": 2, "name": "apply"}],
            "components": ["app", "checks.test_app"],
            "test_command": "python -m pytest -q",
            "rollback_point": "1234567 on main",
        },
    }
    return render("plan_ready", context)


def request_with_risk(risk: str) -> Request:
    return Request(
        id=REQUEST_ID,
        origin=Origin("discord", ANA.id, CHANNEL_ID, "ana"),
        text="deploy v1.4",
        command="deploy",
        argument="v1.4",
        plan={"risk": {"level": risk}},
    )


def units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def embed_size(embed: Any) -> int:
    fields = embed.get("fields") or []
    return (
        units(embed.get("title") or "")
        + units(embed.get("description") or "")
        + units((embed.get("footer") or {}).get("text") or "")
        + sum(units(f["name"]) + units(f["value"]) for f in fields)
    )


# -- embeds and buttons ------------------------------------------------------------


@pytest.mark.parametrize(("risk", "colour"), [("low", GREEN), ("medium", 0xF1A90A), ("high", RED)])
def test_a_plan_is_coloured_by_its_risk(risk: str, colour: int) -> None:
    message = plan_ready(risk)
    assert colour_for(message, request_with_risk(risk)) == colour


def test_outcomes_have_their_own_colour_and_other_messages_default() -> None:
    request = request_with_risk("high")
    assert colour_for(Message("success", "Live"), request) == GREEN
    assert colour_for(Message("failure", "Failed"), request) == RED
    assert colour_for(Message("help", "Help"), None) == BLURPLE


def test_plan_embed_shows_tasks_components_tests_and_rollback_point() -> None:
    embed = to_embed(plan_ready(), GREEN).to_dict()
    assert embed["title"] == "📋 Plan ready: amber-otter"
    assert embed["color"] == GREEN
    description = embed.get("description", "")
    assert "**Deploy v1.4 onto main: 3 commits, 4 files**" in description
    assert "**Steps**" in description and "1. snapshot" in description
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert "**LOW**" in fields["Risk"]
    assert fields["Components"] == "app, checks.test_app"
    assert fields["Tests"] == "`python -m pytest -q`"
    assert fields["Rollback point"] == "1234567 on main"
    assert embed["footer"]["text"] == f"Molt · {REQUEST_ID} · plan_ready"


def test_a_plan_offers_approve_reject_and_request_changes_with_the_request_in_the_id() -> None:
    message = Message(
        "plan_ready",
        "Plan",
        buttons=(
            Button("Approve", "approve", REQUEST_ID, "primary"),
            Button("Reject", "reject", REQUEST_ID, "danger"),
        ),
        request_id=REQUEST_ID,
    )
    buttons = to_buttons(message)
    assert [b.custom_id for b in buttons] == [
        f"molt:approve:{REQUEST_ID}",
        f"molt:reject:{REQUEST_ID}",
        f"molt:revise:{REQUEST_ID}",
    ]
    assert [b.label for b in buttons] == ["Approve", "Reject", "Request changes"]
    assert [b.style for b in buttons] == [
        discord.ButtonStyle.success,
        discord.ButtonStyle.danger,
        discord.ButtonStyle.secondary,
    ]
    for button in buttons:
        found = BUTTON_ID.fullmatch(button.custom_id)
        assert found is not None and found["request_id"] == REQUEST_ID


def test_buttons_that_cannot_carry_their_request_are_left_out() -> None:
    long_id = "r" + "a" * 120
    message = Message(
        "failure",
        "Failed",
        buttons=(
            Button("Retry", "retry", long_id),
            Button("Launch", "launch", REQUEST_ID),
            Button("", "retry", REQUEST_ID),
        ),
    )
    assert to_buttons(message) == []


def test_huge_messages_stay_within_discord_embed_limits() -> None:
    line = "• step *bold* 🦀 " + "x" * 80
    message = Message(
        "plan_ready",
        "📋 " + "T" * 400,
        text="\n".join([line] * 2000),
        fields=tuple(MessageField(f"Field {i} " + "n" * 300, "v 🦀 " * 800) for i in range(40)),
        request_id=REQUEST_ID,
    )
    embed = to_embed(message).to_dict()
    assert units(embed["title"]) <= 256 and embed["title"].endswith("…")
    assert units(embed["description"]) <= 4096
    assert 0 < len(embed["fields"]) <= 25
    for field in embed["fields"]:
        assert 0 < units(field["name"]) <= 256
        assert 0 < units(field["value"]) <= 1024
    assert embed_size(embed) <= EMBED_LIMIT
    assert "more fields not shown" in embed["footer"]["text"]


def test_a_message_with_nothing_but_a_template_still_shows_something() -> None:
    embed = to_embed(Message("notice", "")).to_dict()
    assert embed.get("description") == "notice"


def test_the_approver_is_a_mention_that_pings_nobody() -> None:
    context = {"request_id": REQUEST_ID, "approver": f"discord:{ANA.id}"}
    embed = to_embed(render("queued", context)).to_dict()
    assert f"Approved by **<@{ANA.id}>**." in str(embed.get("description"))
    assert NO_MENTIONS.to_dict() == {"parse": []}


def test_request_text_that_names_someone_mentions_nobody_in_discord() -> None:
    context = {
        "request_id": REQUEST_ID,
        "command": "change",
        "requester": "ana",
        "requester_id": f"discord:{ANA.id}",
        "text": "add a ping for discord:1300000000000000103",
    }
    description = str(to_embed(render("processing", context)).description)
    assert description.startswith(f"**<@{ANA.id}>** asked: ")
    assert "for discord:1300000000000000103" in description
    assert "<@1300000000000000103>" not in description


def test_a_cut_never_splits_a_mention_in_discord() -> None:
    mentions = " ".join(mark(f"discord:{ANA.id}") for _ in range(300))
    value = mark(f"discord:{ANA.id}") * 60
    message = Message("history", "History", text=mentions, fields=(MessageField("By", value),))
    embed = to_embed(message)
    for text in (str(embed.description), embed.fields[0].value or ""):
        assert text.endswith("…")
        assert text.rstrip("…").endswith(f"<@{ANA.id}>")
        assert text.count("<") == text.count(">")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("!molt deploy v1.4", "deploy v1.4"),
        ("  !MOLT   status ", "status"),
        ("!molt", ""),
        ("<@42> deploy main", "deploy main"),
        ("<@!42> help", "help"),
        ("!moltx deploy", None),
        ("deploy main", None),
        ("hello <@42>", None),
    ],
)
def test_message_commands_start_with_the_prefix_or_a_mention(
    content: str, expected: str | None
) -> None:
    assert command_text(content, "!molt", 42) == expected


def test_a_modal_value_is_found_in_an_action_row_or_a_label() -> None:
    rows = [{"type": 1, "components": [{"type": 4, "custom_id": "note", "value": "deploy v2"}]}]
    label = [{"type": 18, "component": {"type": 4, "custom_id": "note", "value": "use v3"}}]
    assert submitted_value(rows, "note") == "deploy v2"
    assert submitted_value(label, "note") == "use v3"
    assert submitted_value([], "note") == ""


def test_registered_commands_are_compared_by_what_people_see() -> None:
    wanted = [
        {
            "name": "molt",
            "description": "Ask Molt",
            "options": [{"name": "command", "type": 3, "description": "what"}],
        }
    ]
    registered = [{"id": "1", "version": "2", "type": 1, **wanted[0]}]
    assert command_signature(registered) == command_signature(wanted)
    changed = [{**wanted[0], "description": "Ask Molt nicely"}]
    assert command_signature(changed) != command_signature(wanted)


def test_discord_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    from pipeline.exceptions import ConfigError

    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("MOLT_DISCORD_CHANNELS", f" {CHANNEL_ID}, {OTHER_CHANNEL_ID} ")
    settings = load_settings(data_dir=data_dir)
    assert settings.discord.channels == [CHANNEL_ID, OTHER_CHANNEL_ID]
    assert settings.discord.prefix == "!molt"
    assert settings.discord.api_url == "https://discord.com/api/v10"
    assert TOKEN in settings.secrets()
    monkeypatch.setenv("MOLT_DISCORD_CHANNELS", "deploys")
    with pytest.raises(ConfigError, match="MOLT_DISCORD_CHANNELS: expected comma-separated"):
        load_settings(data_dir=data_dir)


def test_missing_token_is_a_config_error(data_dir: Path) -> None:
    from pipeline.exceptions import ConfigError

    settings = load_settings(data_dir=data_dir)
    with pytest.raises(ConfigError, match="DISCORD_TOKEN"):
        Discord(settings, RequestStore(embedded.connect(settings)))


# -- the adapter against a fake Discord ------------------------------------------------


class RecordingDesk:
    """Stands in for the desk: records what the adapter handed over."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def _done(self, *call: Any) -> Future[Any]:
        self.calls.append(call)
        future: Future[Any] = Future()
        future.set_result(None)
        return future

    def say(self, origin: Origin, text: str) -> Future[Any]:
        return self._done("say", origin, text)

    def press(self, origin: Origin, action: str, request_id: str) -> Future[Any]:
        return self._done("press", origin, action, request_id)

    def revise(self, origin: Origin, request_id: str, note: str) -> Future[Any]:
        return self._done("revise", origin, request_id, note)

    def wait(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.calls) >= count, self.calls


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    with FakeDiscord() as running:
        yield running


@pytest.fixture
def requests(data_dir: Path) -> RequestStore:
    return RequestStore(embedded.connect(load_settings(data_dir=data_dir)))


@pytest.fixture
def connected(
    fake: FakeDiscord, data_dir: Path, requests: RequestStore
) -> Iterator[tuple[Discord, RecordingDesk]]:
    settings = load_settings(
        data_dir=data_dir,
        discord_token=TOKEN,
        discord_api_url=fake.api_url,
        discord_channels=[CHANNEL_ID],
    )
    adapter = Discord(settings, requests)
    desk = RecordingDesk()
    adapter.desk = desk  # type: ignore[assignment]
    adapter.start()
    fake.wait_connected()
    yield adapter, desk
    adapter.stop()


def new_request(requests: RequestStore) -> Request:
    return requests.create(Origin("discord", ANA.id, CHANNEL_ID, "ana"), "deploy", "deploy", "v1")


def working(request_id: str, step: int) -> Message:
    return Message("working", f"⚙️ step {step}", request_id=request_id)


def test_commands_are_taken_only_in_the_configured_channels(
    connected: tuple[Discord, RecordingDesk], fake: FakeDiscord
) -> None:
    _, desk = connected
    fake.say(ANA, "!molt status", channel=OTHER_CHANNEL_ID)
    fake.say(ANA, "just chatting", channel=CHANNEL_ID)
    elsewhere = fake.slash(ANA, "status", channel=OTHER_CHANNEL_ID)
    answer = fake.wait_interaction(elsewhere, lambda i: i.callback is not None).callback
    assert answer is not None and answer["type"] == 4
    assert answer["data"]["flags"] == 64
    assert f"<#{CHANNEL_ID}>" in answer["data"]["content"]

    fake.say(ANA, "!molt deploy v1.4", channel=CHANNEL_ID)
    desk.wait(1)
    [(kind, origin, text)] = desk.calls
    assert (kind, text) == ("say", "deploy v1.4")
    assert origin == Origin("discord", ANA.id, CHANNEL_ID, "ana", roles=(ROLE_DEPLOYERS,))


@pytest.mark.slow
def test_a_session_that_cannot_be_resumed_identifies_again_and_keeps_listening(
    connected: tuple[Discord, RecordingDesk], fake: FakeDiscord
) -> None:
    _, desk = connected
    fake.forget_sessions()
    fake.drop_gateway()
    fake.wait_gateway(lambda g: g["op"] == 9)
    fake.wait_gateway(lambda g: len([r for r in fake.gateway_log() if r["t"] == "READY"]) == 2)
    identified = [g for g in fake.gateway_log() if g["dir"] == "in" and g["op"] == 2]
    assert len(identified) == 2  # a new session, not a resumed one
    fake.say(ANA, "!molt status")
    desk.wait(1)
    assert desk.calls[0][2] == "status"


def test_progress_edits_are_coalesced_and_the_newest_is_shown(
    connected: tuple[Discord, RecordingDesk], fake: FakeDiscord, requests: RequestStore
) -> None:
    adapter, _ = connected
    request = new_request(requests)
    adapter.deliver(request, Message("processing", "⏳ Checking", request_id=request.id))
    ref = requests.get(request.id).message_ref
    assert ref is not None and ref["channel"] == CHANNEL_ID
    for step in range(1, 9):
        adapter.deliver(request, working(request.id, step))
    fake.wait_for(lambda c: c.route == PATCH and c.body["embeds"][0]["title"] == "⚙️ step 8")
    adapter.deliver(request, Message("success", "✅ Live", request_id=request.id))

    edits = fake.calls(PATCH)
    assert len(edits) < 8
    assert [c.body["embeds"][0]["title"] for c in edits][-1] == "✅ Live"
    assert len(fake.calls(POST)) == 1
    assert fake.message(ref["message"])["embeds"][0]["title"] == "✅ Live"


def test_a_newer_edit_replaces_a_waiting_progress_edit(
    connected: tuple[Discord, RecordingDesk], fake: FakeDiscord, requests: RequestStore
) -> None:
    adapter, _ = connected
    request = new_request(requests)
    adapter.deliver(request, Message("queued", "🕒 Queued", request_id=request.id))
    adapter.deliver(request, working(request.id, 1))  # just after the post: waits
    adapter.deliver(request, working(request.id, 2))  # replaces step 1, waits
    adapter.deliver(request, Message("failure", "❌ Failed", request_id=request.id))
    adapter.stop()  # flushes what still waits: nothing, the failure replaced it
    titles = [c.body["embeds"][0]["title"] for c in fake.calls(PATCH)]
    assert titles == ["❌ Failed"]


def test_rate_limited_edits_wait_for_retry_after_and_go_through(
    connected: tuple[Discord, RecordingDesk], fake: FakeDiscord, requests: RequestStore
) -> None:
    adapter, _ = connected
    request = new_request(requests)
    adapter.deliver(request, Message("queued", "🕒 Queued", request_id=request.id))
    fake.rate_limit(2, retry_after=0.2, where=lambda route: route == PATCH)
    adapter.deliver(request, Message("restarting", "🔄 Restarting", request_id=request.id))
    statuses = [c.status for c in fake.calls(PATCH)]
    assert statuses == [429, 429, 200]
    ref = requests.get(request.id).message_ref or {}
    assert fake.message(ref["message"])["embeds"][0]["title"] == "🔄 Restarting"


def test_a_deleted_status_message_is_posted_again(
    connected: tuple[Discord, RecordingDesk], fake: FakeDiscord, requests: RequestStore
) -> None:
    adapter, _ = connected
    request = new_request(requests)
    adapter.deliver(request, Message("queued", "🕒 Queued", request_id=request.id))
    first = (requests.get(request.id).message_ref or {})["message"]
    fake.delete_message(first)
    adapter.deliver(requests.get(request.id), Message("success", "✅ Live", request_id=request.id))
    second = (requests.get(request.id).message_ref or {})["message"]
    assert second != first
    assert fake.message(second)["embeds"][0]["title"] == "✅ Live"
    assert [c.status for c in fake.calls(PATCH)] == [404]


def test_a_channel_the_bot_cannot_write_to_gets_a_direct_message_instead(
    connected: tuple[Discord, RecordingDesk], fake: FakeDiscord, requests: RequestStore
) -> None:
    adapter, _ = connected
    fake.forbidden_channels.add(CHANNEL_ID)
    request = new_request(requests)
    adapter.deliver(request, Message("queued", "🕒 Queued", request_id=request.id))
    direct = fake.direct_channel(ANA.id)
    assert direct is not None
    assert requests.get(request.id).message_ref == {
        "channel": direct,
        "message": fake.messages(direct)[0]["id"],
    }


def test_a_private_answer_without_an_interaction_replies_mentioning_only_that_person(
    connected: tuple[Discord, RecordingDesk], fake: FakeDiscord
) -> None:
    adapter, desk = connected
    said = fake.say(ANA, "!molt status")
    desk.wait(1)
    adapter.reply(
        Origin("discord", ANA.id, CHANNEL_ID), render("not_allowed", {"reason": "not yours"})
    )
    [call] = fake.calls(POST)
    assert call.body["content"] == f"<@{ANA.id}>"
    assert str(call.body["message_reference"]["message_id"]) == said
    mentions = call.body["allowed_mentions"]
    assert [str(u) for u in mentions["users"]] == [ANA.id] and mentions["parse"] == []
    assert "not yours" in call.body["embeds"][0]["description"]


def test_a_click_is_deferred_then_handed_over_and_answered_privately(
    connected: tuple[Discord, RecordingDesk], fake: FakeDiscord, requests: RequestStore
) -> None:
    adapter, desk = connected
    request = new_request(requests)
    adapter.deliver(request, plan_ready(request_id=request.id))
    posted = fake.messages(CHANNEL_ID)[0]
    clicked = fake.click(ANA, posted["id"], f"molt:approve:{request.id}")
    desk.wait(1)
    assert desk.calls[0][0::2] == ("press", "approve")
    assert fake.interaction(clicked).callback == {"type": 6}
    adapter.reply(Origin("discord", ANA.id, CHANNEL_ID), render("not_allowed", {"reason": "no"}))
    answered = fake.interaction(clicked)
    assert len(answered.followups) == 1 and answered.followups[0]["flags"] & 64


def test_deliveries_fail_when_the_client_is_not_connected(
    fake: FakeDiscord, data_dir: Path, requests: RequestStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter_module, "LOGIN_WAIT", 0.1)
    settings = load_settings(data_dir=data_dir, discord_token=TOKEN, discord_api_url=fake.api_url)
    adapter = Discord(settings, requests)
    request = new_request(requests)
    with pytest.raises(ConnectionError):
        adapter.deliver(request, Message("queued", "🕒 Queued", request_id=request.id))
    adapter.start()
    fake.wait_connected()
    adapter.stop()
    with pytest.raises(ConnectionError):
        adapter.deliver(request, Message("queued", "🕒 Queued", request_id=request.id))
    assert fake.calls(POST) == []
