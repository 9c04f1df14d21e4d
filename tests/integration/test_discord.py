"""Discord: the bot's real discord.py client connected to a fake Discord on loopback (REST
and gateway), real Redis, RQ and git. The bot runs in the test's process
(tests/integration/inprocess.py), but in the end-to-end test and the gateway outage, which
start ``molt run``."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline import audit, store
from pipeline.config import load_settings
from pipeline.requests.store import RequestStore
from tests.fakes.discord import (
    CHANNEL_ID,
    EPHEMERAL,
    GUILD_ID,
    ROLE_APPROVERS,
    ROLE_DEPLOYERS,
    ROLE_VISITORS,
    TOKEN,
    Call,
    FakeDiscord,
    Person,
)
from tests.integration.inprocess import StartBot
from tests.support import UP, Molt, ServiceRepo

ALICE = Person("1300000000000000101", "alice")  # may ask, by user id
DANA = Person("1300000000000000102", "dana", (ROLE_DEPLOYERS,))  # may ask, by role
BOB = Person("1300000000000000103", "bob", (ROLE_APPROVERS,))  # approver and operator, by role
MALLORY = Person("1300000000000000109", "mallory")  # nobody
VICTOR = Person("1300000000000000110", "victor", (ROLE_VISITORS,))  # a role with no rights

POST = "POST /channels/{id}/messages"
PATCH = "PATCH /channels/{id}/messages/{id}"
FOLLOWUP = "POST /webhooks/{id}/{token}"
_FOOTER = re.compile(r"^Molt · (?:(?P<request_id>r\w+) · )?(?P<template>\w+)")
GREEN, AMBER, RED = 0x2ECC71, 0xF1A90A, 0xE74C3C


def _embed(body: Any) -> dict[str, Any]:
    embeds = (body or {}).get("embeds") or [] if isinstance(body, dict) else []
    return dict(embeds[0]) if embeds else {}


def _stamp(body: Any) -> tuple[str, str]:
    """(request id, template) from the footer of the message's embed."""
    footer = (_embed(body).get("footer") or {}).get("text") or ""
    found = _FOOTER.match(footer)
    return (found["request_id"] or "", found["template"]) if found else ("", "")


def _buttons(body: Any) -> list[str]:
    return [
        str(c.get("custom_id"))
        for row in (body or {}).get("components") or []
        for c in row.get("components") or []
    ]


def _text(embed: dict[str, Any]) -> str:
    fields = "\n".join(f"{f['name']}: {f['value']}" for f in embed.get("fields") or [])
    return f"{embed.get('title', '')}\n{embed.get('description', '')}\n{fields}"


class DiscordBot:
    """The running Molt, the fake Discord it is connected to, and Molt's Redis."""

    def __init__(
        self,
        fake: FakeDiscord,
        port: int,
        conn: redis.Redis,
        sessions: int,
        said: Callable[[], str],
        stop: Callable[[], object],
    ) -> None:
        self.fake = fake
        self.port = port
        self.said = said
        self.stop = stop
        fake.wait_gateway(lambda g: g["t"] in ("READY",) and g["dir"] == "out", timeout=30)
        self._wait_sessions(sessions)
        self.store = RequestStore(conn)

    def _wait_sessions(self, count: int) -> None:
        ready = [g for g in self.fake.gateway_log() if g["t"] == "READY"]
        if len(ready) < count:
            self.fake.wait_gateway(
                lambda g: g["t"] == "READY" and len(self._readies()) >= count, timeout=30
            )
        self.fake.wait_connected()

    def _readies(self) -> list[dict[str, Any]]:
        return [g for g in self.fake.gateway_log() if g["t"] == "READY"]

    def shown(
        self, template: str, request_id: str = "", since: int = 0, timeout: float = 90
    ) -> Call:
        """Wait for a message (posted, edited or followed up) rendered from ``template``."""

        def matches(call: Call) -> bool:
            if call.status >= 300 or call.route not in (POST, PATCH, FOLLOWUP):
                return False
            shown_id, shown_template = _stamp(call.body)
            return shown_template == template and (not request_id or shown_id == request_id)

        try:
            return self.fake.wait_for(
                lambda c: matches(c) and self.fake.calls().index(c) >= since, timeout=timeout
            )
        except TimeoutError as exc:
            shown = [_stamp(c.body) for c in self.fake.calls() if c.route in (POST, PATCH)]
            said = self.said()[-4000:]
            raise AssertionError(f"{exc}\nshown: {shown}\nMolt said:\n{said}") from None

    def mark(self) -> int:
        return len(self.fake.calls())

    def status_message(self, request_id: str) -> dict[str, Any]:
        ref = self.store.get(request_id).message_ref or {}
        assert ref.get("channel") == CHANNEL_ID
        return self.fake.message(str(ref["message"]))

    def plan(self, who: Person = ALICE, text: str = "deploy main") -> str:
        """Ask in the channel and wait for the plan; returns the request id."""
        mark = self.mark()
        self.fake.say(who, f"!molt {text}")
        request_id, _ = _stamp(self.shown("plan_ready", since=mark).body)
        return request_id

    def click(self, who: Person, request_id: str, action: str) -> str:
        message = self.status_message(request_id)
        return self.fake.click(who, message["id"], f"molt:{action}:{request_id}")

    def templates(self, request_id: str) -> list[str]:
        """Every template shown for ``request_id`` in the channel, in order."""
        return [
            template
            for c in self.fake.calls()
            if c.route in (POST, PATCH) and c.status < 300
            for shown_id, template in [_stamp(c.body)]
            if shown_id == request_id
        ]


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    with FakeDiscord() as running:
        yield running


def discord_env(fake: FakeDiscord, **env: str) -> dict[str, str]:
    """Molt's settings for the fake Discord and its people."""
    return {
        "DISCORD_TOKEN": TOKEN,
        "DISCORD_API_URL": fake.api_url,
        "MOLT_AUTHORISED_USERS": f"discord:{ALICE.id},discord-role:{ROLE_DEPLOYERS}",
        "MOLT_APPROVERS": f"discord:{ALICE.id},discord-role:{ROLE_APPROVERS}",
        **env,
    }


@pytest.fixture
def start_discord_bot(fake: FakeDiscord, start_bot: StartBot) -> Callable[..., DiscordBot]:
    """Molt's bot with Discord, in this process (stopped before the fake Discord is)."""
    started: list[DiscordBot] = []

    def start(**env: str) -> DiscordBot:
        running = start_bot(**discord_env(fake, **env))
        sessions = len(started) + 1
        said = lambda: running.output  # noqa: E731
        bot = DiscordBot(fake, running.port, running.conn, sessions, said, running.stop)
        started.append(bot)
        return bot

    return start


@pytest.fixture
def start_discord_molt(
    fake: FakeDiscord, start_molt: Callable[..., Molt], data_dir: Path
) -> Callable[..., DiscordBot]:
    """``molt run`` with Discord: the bot, its HTTP process and its worker."""

    def start(**env: str) -> DiscordBot:
        molt = start_molt("run", "--no-console", **discord_env(fake, **env))
        port = int(molt.wait_for(UP).group(1))
        conn = store.connect(load_settings(data_dir=data_dir))
        return DiscordBot(fake, port, conn, 1, lambda: molt.output, molt.stop)

    return start


@pytest.fixture
def bot(start_discord_bot: Callable[..., DiscordBot]) -> DiscordBot:
    return start_discord_bot()


def _v2(service: ServiceRepo) -> str:
    return service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")


@pytest.mark.slow
def test_message_command_deploys_to_success_in_one_message_edited_in_place(
    service: ServiceRepo, start_discord_molt: Callable[..., DiscordBot]
) -> None:
    """End to end, with ``molt run``'s processes: the gateway client in the bot, the
    update on its worker."""
    bot = start_discord_molt()
    new = _v2(service)
    request_id = bot.plan(ALICE)
    plan = bot.status_message(request_id)
    embed = _embed(plan)
    request = bot.store.get(request_id)
    assert request.requester == f"discord:{ALICE.id}"
    assert embed["title"].startswith("📋 Plan ready")
    risk = request.plan["risk"]["level"] if request.plan else ""
    assert embed["color"] == {"low": GREEN, "medium": AMBER, "high": RED}[risk]
    names = [f["name"] for f in embed["fields"]]
    for name in ("Risk", "Components", "Tests", "Rollback point"):
        assert name in names
    assert "**Steps**" in embed["description"]
    assert _buttons(plan) == [
        f"molt:approve:{request_id}",
        f"molt:reject:{request_id}",
        f"molt:revise:{request_id}",
    ]

    click = bot.click(BOB, request_id, "approve")
    bot.shown("success", request_id)
    assert bot.fake.interaction(click).callback == {"type": 6}
    assert service.live_head() == new
    assert bot.store.get(request_id).state.value == "succeeded"

    # One status message: posted once, then edited in place, ending without buttons.
    posts = [c for c in bot.fake.calls(POST) if _stamp(c.body)[0] == request_id]
    assert len(posts) == 1
    message_id = posts[0].response["id"]
    edits = [c for c in bot.fake.calls(PATCH) if _stamp(c.body)[0] == request_id]
    assert edits and all(c.path.endswith(f"/{message_id}") for c in edits)
    final = bot.fake.message(message_id)
    assert _stamp(final)[1] == "success" and final["components"] == []
    assert _embed(final)["color"] == GREEN
    shown = bot.templates(request_id)
    for template in ("processing", "plan_ready", "queued", "restarting", "success"):
        assert template in shown
    assert [c["name"] for c in bot.fake.commands()] == ["molt"]


def test_slash_command_from_a_role_member_deploys_to_success(
    service: ServiceRepo, bot: DiscordBot
) -> None:
    new = _v2(service)
    mark = bot.mark()
    asked = bot.fake.slash(DANA, "deploy main")
    answered = bot.fake.wait_interaction(asked, lambda i: i.callback is not None)
    assert answered.callback == {"type": 5, "data": {"flags": EPHEMERAL}}
    request_id, _ = _stamp(bot.shown("plan_ready", since=mark).body)
    request = bot.store.get(request_id)
    assert request.requester == f"discord:{DANA.id}"
    assert ROLE_DEPLOYERS in request.origin.roles

    # The "thinking" answer turns into a pointer to the status message, for DANA alone.
    pointed = bot.fake.wait_interaction(asked, lambda i: bool(i.followups))
    status = bot.status_message(request_id)
    assert status["id"] in pointed.followups[0]["content"]
    assert pointed.followups[0]["flags"] & EPHEMERAL

    bot.click(BOB, request_id, "approve")
    bot.shown("success", request_id)
    assert service.live_head() == new


def test_unauthorised_user_and_unauthorised_role_are_refused_and_audited(
    service: ServiceRepo, bot: DiscordBot
) -> None:
    said = bot.fake.say(MALLORY, "!molt deploy main")
    reply = bot.shown("refused")
    assert reply.body["content"] == f"<@{MALLORY.id}>"
    assert str(reply.body["message_reference"]["message_id"]) == said
    assert [str(u) for u in reply.body["allowed_mentions"]["users"]] == [MALLORY.id]
    assert "not in MOLT_AUTHORISED_USERS" in _text(_embed(reply.body))

    asked = bot.fake.slash(VICTOR, "deploy main")
    refused = bot.fake.wait_interaction(asked, lambda i: bool(i.followups))
    assert _stamp(refused.followups[0])[1] == "refused"
    assert refused.followups[0]["flags"] & EPHEMERAL

    requests = bot.store.recent(5)
    assert sorted(r.requester for r in requests) == sorted(
        [f"discord:{MALLORY.id}", f"discord:{VICTOR.id}"]
    )
    assert all(r.state.value == "refused" and r.plan is None for r in requests)
    for request in requests:
        actions = [e["action"] for e in audit.entries(bot.store.conn, request.id)]
        assert actions == ["received", "refused"]
    public = [c for c in bot.fake.calls(POST) if not c.body.get("content")]
    assert public == [], "nothing is posted for a refused request"


def test_a_non_approver_click_is_refused_and_a_double_click_approves_once(
    service: ServiceRepo, bot: DiscordBot
) -> None:
    _v2(service)
    request_id = bot.plan(ALICE)
    refused = bot.click(MALLORY, request_id, "approve")
    answer = bot.fake.wait_interaction(refused, lambda i: bool(i.followups))
    assert answer.callback == {"type": 6}
    assert _stamp(answer.followups[0])[1] == "not_allowed"
    assert answer.followups[0]["flags"] & EPHEMERAL
    assert "only approvers" in _text(_embed(answer.followups[0]))
    assert bot.store.get(request_id).state.value == "plan_ready"

    first = bot.click(BOB, request_id, "approve")
    second = bot.click(BOB, request_id, "approve")
    bot.shown("success", request_id)
    for click in (first, second):
        assert bot.fake.interaction(click).callback == {"type": 6}
    assert bot.templates(request_id).count("queued") == 1
    approvals = [e for e in audit.entries(bot.store.conn, request_id) if e["action"] == "approved"]
    assert len(approvals) == 1
    late = bot.fake.wait_interaction(second, lambda i: bool(i.followups), timeout=30)
    late_text = _text(_embed(late.followups[0]))
    assert "already" in late_text or "is queued" in late_text or "is running" in late_text


def test_people_are_discord_mentions_that_ping_nobody_and_principals_in_the_audit(
    service: ServiceRepo, bot: DiscordBot
) -> None:
    _v2(service)
    request_id = bot.plan(ALICE)
    assert f"requested by <@{ALICE.id}>" in str(_embed(bot.status_message(request_id)))
    bot.click(BOB, request_id, "approve")
    queued = bot.shown("queued", request_id)
    assert f"Approved by **<@{BOB.id}>**." in _embed(queued.body)["description"]
    assert queued.body["allowed_mentions"] == {"parse": []}
    bot.shown("success", request_id)
    [approved] = [e for e in audit.entries(bot.store.conn, request_id) if e["action"] == "approved"]
    assert approved["actor"] == f"discord:{BOB.id}"
    assert approved["detail"]["message"] == f"approved by discord:{BOB.id}"


def test_a_plan_posted_before_a_restart_is_approved_after_it(
    service: ServiceRepo, start_discord_bot: Callable[..., DiscordBot]
) -> None:
    new = _v2(service)
    first = start_discord_bot()
    request_id = first.plan(ALICE)
    message_id = first.status_message(request_id)["id"]
    first.stop()

    second = start_discord_bot()
    click = second.fake.click(BOB, message_id, f"molt:approve:{request_id}")
    second.shown("success", request_id)
    assert second.fake.interaction(click).callback == {"type": 6}
    assert service.live_head() == new
    # The same message carried the plan and carries the outcome.
    assert second.store.get(request_id).message_ref == {
        "channel": CHANNEL_ID,
        "message": message_id,
    }
    assert _stamp(second.fake.message(message_id))[1] == "success"
    # Registered once: the second process found /molt as it wanted it.
    assert len(second.fake.calls("PUT /applications/{id}/commands")) == 1


def test_failure_offers_retry_and_retry_plans_again(service: ServiceRepo, bot: DiscordBot) -> None:
    old = service.live_head()
    service.commit(
        {"checks/test_new.py": "def test_new():\n    assert False, 'broken'\n"}, "broken"
    )
    request_id = bot.plan(ALICE)
    bot.click(BOB, request_id, "approve")
    failure = bot.shown("failure", request_id)
    assert _buttons(failure.body) == [f"molt:retry:{request_id}"]
    assert _embed(failure.body)["color"] == RED
    assert old[:7] in _text(_embed(failure.body))
    assert service.live_head() == old

    mark = bot.mark()
    bot.click(ALICE, request_id, "retry")
    bot.shown("plan_ready", request_id, since=mark)
    assert bot.store.get(request_id).attempt == 2


def test_request_changes_opens_a_modal_and_plans_the_requested_ref(
    service: ServiceRepo, bot: DiscordBot
) -> None:
    tagged = service.commit({"notes.txt": "v2\n"}, "v2", tag="v2")
    service.commit({"notes.txt": "v3\n"}, "v3")
    request_id = bot.plan(ALICE, "deploy main")
    opened = bot.click(ALICE, request_id, "revise")
    modal = bot.fake.wait_interaction(opened, lambda i: i.callback is not None).callback
    assert modal is not None and modal["type"] == 9
    assert modal["data"]["custom_id"] == f"molt:revision:{request_id}"
    mark = bot.mark()
    submitted = bot.fake.submit(
        ALICE,
        f"molt:revision:{request_id}",
        {"note": "deploy v2"},
        message_id=bot.status_message(request_id)["id"],
    )
    assert bot.fake.wait_interaction(submitted, lambda i: i.callback is not None).callback == {
        "type": 6
    }
    bot.shown("plan_ready", request_id, since=mark)
    assert bot.store.get(request_id).argument == "v2"

    bot.click(BOB, request_id, "approve")
    bot.shown("success", request_id)
    assert service.live_head() == tagged


@pytest.mark.slow
def test_a_gateway_outage_mid_update_loses_no_status(
    service: ServiceRepo, start_discord_molt: Callable[..., DiscordBot]
) -> None:
    """With ``molt run``'s processes: the worker's statuses wait in the stream while the
    bot's gateway is away."""
    bot = start_discord_molt()
    new = _v2(service)
    request_id = bot.plan(ALICE)
    ready = [g for g in bot.fake.gateway_log() if g["t"] == "READY"][-1]["d"]
    bot.click(BOB, request_id, "approve")
    bot.shown("queued", request_id)

    # The gateway goes away mid-update, and the next status edits meet rate limits.
    bot.fake.drop_gateway(hold=True)
    bot.fake.rate_limit(2, retry_after=0.4, where=lambda route: route == PATCH)
    asked = bot.fake.say(BOB, "!molt status")  # waits in the session for the resume
    bot.shown("success", request_id)
    assert service.live_head() == new
    limited = [c for c in bot.fake.calls(PATCH) if c.status == 429]
    assert len(limited) == 2

    bot.fake.release_gateway()
    resume = bot.fake.wait_gateway(lambda g: g["dir"] == "in" and g["op"] == 6, timeout=60)
    assert resume["d"]["session_id"] == ready["session_id"]
    assert resume["path"] == "/gateway-resume"
    bot.fake.wait_gateway(lambda g: g["t"] == "RESUMED")
    status = bot.shown("status")
    assert str(status.body["message_reference"]["message_id"]) == asked

    shown = bot.templates(request_id)
    order = [shown.index(t) for t in ("plan_ready", "queued", "restarting", "success")]
    assert order == sorted(order)
    assert shown[-1] == "success"


def test_missing_message_content_intent_is_reported_and_molt_keeps_running(
    start_bot: StartBot, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeDiscord(privileged_intents=False) as refusing:
        bot = start_bot(DISCORD_TOKEN=TOKEN, DISCORD_API_URL=refusing.api_url)
        said = ""
        deadline = time.monotonic() + 30
        while "MESSAGE CONTENT INTENT" not in said and time.monotonic() < deadline:
            said += capsys.readouterr().err
            time.sleep(0.05)
        told = [line for line in said.splitlines() if "MESSAGE CONTENT INTENT" in line]
        assert told and "Developer Portal" in told[0], said
        assert any(g["op"] == 2 for g in refusing.gateway_log())
        assert not any(g["t"] == "READY" for g in refusing.gateway_log())
        with urllib.request.urlopen(f"{bot.url}/healthz", timeout=10) as answer:
            assert answer.status == 200
        assert "MESSAGE CONTENT INTENT" in bot.log()


def test_an_incident_is_posted_in_its_channel_with_approve_rollback(
    service: ServiceRepo, start_discord_bot: Callable[..., DiscordBot]
) -> None:
    from tests.fakes.alerts import Alertmanager, alertmanager_alert, alertmanager_payload

    bot = start_discord_bot(MOLT_INCIDENT_CHANNEL=f"discord:{CHANNEL_ID}", MOLT_ALERT_TOKEN="tok")
    old = service.live_head()
    _v2(service)
    deploy = bot.plan(ALICE)
    bot.click(BOB, deploy, "approve")
    bot.shown("success", deploy)

    mark = bot.mark()
    alert = alertmanager_payload([alertmanager_alert("c0ffee", summary="HTTP 500s")])
    sender = Alertmanager(f"http://127.0.0.1:{bot.port}/alerts/alertmanager", "tok")
    assert sender.send(alert)[0] == 200
    opened = bot.shown("incident", since=mark)
    assert "HTTP 500s" in _text(_embed(opened.body))
    offered = bot.fake.wait_for(
        lambda c: (
            c.route == POST
            and _stamp(c.body)[1] == "incident"
            and any(b.startswith("molt:approve:") for b in _buttons(c.body))
        )
    )
    [button] = [b for b in _buttons(offered.body) if b.startswith("molt:approve:")]
    rollback = button.rpartition(":")[2]
    assert bot.store.get(rollback).command == "rollback"
    message_id = str((offered.response or {}).get("id"))
    bot.fake.click(BOB, message_id, button)
    bot.shown("success", rollback, since=mark)
    assert service.live_head() == old


def test_a_role_named_as_a_group_is_asked_of_discord_on_each_click_and_kept_for_the_ttl(
    service: ServiceRepo, start_discord_bot: Callable[..., DiscordBot]
) -> None:
    """MOLT_APPROVERS names ``discord:@&<approvers role>``: whether a clicker holds it is
    asked of the guild, not read from the click. Victor (no such role) is refused, twice, the
    second time without asking; Bob's click while Discord errors is refused with the reason
    and approves nothing; his next click approves."""
    member_route = "GET /guilds/{id}/members/{id}"
    bot = start_discord_bot(MOLT_APPROVERS=f"discord:{ALICE.id},discord:@&{ROLE_APPROVERS}")
    _v2(service)
    request_id = bot.plan(ALICE)

    def refusal(click: str) -> str:
        answer = bot.fake.wait_interaction(click, lambda i: bool(i.followups))
        assert _stamp(answer.followups[0])[1] == "not_allowed"
        return _text(_embed(answer.followups[0]))

    assert "only approvers" in refusal(bot.click(VICTOR, request_id, "approve"))
    asked = len(bot.fake.calls(member_route))
    assert asked == 1
    assert "only approvers" in refusal(bot.click(VICTOR, request_id, "approve"))
    assert len(bot.fake.calls(member_route)) == asked

    bot.fake.fail_next(member_route, 503)
    said = refusal(bot.click(BOB, request_id, "approve"))
    assert f"could not check whether discord:{BOB.id}" in said
    assert f"{ROLE_APPROVERS}: Discord answered 503" in said
    request = bot.store.get(request_id)
    assert request.state.value == "plan_ready" and request.approver == ""

    bot.click(BOB, request_id, "approve")
    bot.shown("success", request_id)
    assert bot.store.get(request_id).approver == f"discord:{BOB.id}"
    [member] = [c for c in bot.fake.calls(member_route) if c.status == 200 and BOB.id in c.path]
    assert member.path == f"/guilds/{GUILD_ID}/members/{BOB.id}"
