"""Slack in HTTP mode: signed requests against the bot's real HTTP server, real Redis and
RQ, and a fake Slack Web API on loopback. The bot runs in the test's process
(tests/integration/inprocess.py), but in the end-to-end test, which starts ``molt run``."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline import keyspace, store
from pipeline.config import load_settings
from pipeline.requests.store import RequestStore
from tests.fakes.slack import (
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    SignedRequest,
    block_action,
    event_callback,
    sign,
    signed_event,
    slash_command,
    view_submission,
)
from tests.integration.inprocess import StartBot
from tests.support import UP, Molt, ServiceRepo

ALICE = {"user_id": "U1ALICE", "user_name": "alice"}
BOB = {"user_id": "U2BOB", "user_name": "bob"}
MALLORY = {"user_id": "U9MALLORY", "user_name": "mallory"}
POSTING = ("chat.postMessage", "chat.update", "chat.postEphemeral")


class SlackBot:
    """The running Molt, its Slack fake, and what it takes to talk to it like Slack does."""

    def __init__(
        self, slack: FakeSlack, port: int, conn: redis.Redis, said: Callable[[], str]
    ) -> None:
        self.slack = slack
        self.port = port
        self.store = RequestStore(conn)
        self.said = said

    def post(self, signed: SignedRequest | tuple[bytes, dict[str, str]]) -> int:
        body, headers = signed if isinstance(signed, tuple) else (signed.body, signed.headers)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/slack/events", data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return int(exc.code)

    def command(self, text: str, who: dict[str, str] = ALICE) -> int:
        return self.post(slash_command(text, **who))

    def click(self, action: str, request_id: str, who: dict[str, str] = BOB) -> int:
        return self.post(block_action(f"molt_{action}", request_id, **who))

    def shown(self, template: str, timeout: float = 60) -> dict[str, Any]:
        """Wait for a message rendered from ``template``; returns its call's arguments."""
        try:
            call = self.slack.wait_for(
                lambda c: c.method in POSTING and _payload(c.args).get("template") == template,
                timeout=timeout,
            )
        except TimeoutError as exc:
            shown = [_payload(c.args).get("template") for c in self.slack.calls()]
            said = self.said()[-3000:]
            raise AssertionError(f"{exc}\nshown: {shown}\nMolt said:\n{said}") from None
        return call.args

    def request_id(self, template: str = "plan_ready") -> str:
        return str(_payload(self.shown(template))["request_id"])


def _payload(args: dict[str, Any]) -> dict[str, Any]:
    metadata = args.get("metadata") or {}
    return dict(metadata.get("event_payload") or {})


def _buttons(args: dict[str, Any]) -> list[str]:
    return [
        element["action_id"]
        for block in args.get("blocks") or []
        if block.get("type") == "actions"
        for element in block["elements"]
    ]


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


def slack_env(slack: FakeSlack, **env: str) -> dict[str, str]:
    """Molt's settings for the fake Slack and its people."""
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.url,
        "MOLT_AUTHORISED_USERS": "slack:U1ALICE",
        "MOLT_APPROVERS": "slack:U1ALICE,slack:U2BOB",
        **env,
    }


@pytest.fixture
def start_slack_bot(slack: FakeSlack, start_bot: StartBot) -> Callable[..., SlackBot]:
    """Molt's bot with Slack, in this process (stopped before the fake Slack is)."""

    def start(**env: str) -> SlackBot:
        bot = start_bot(**slack_env(slack, **env))
        return SlackBot(slack, bot.port, bot.conn, lambda: bot.output)

    return start


@pytest.fixture
def start_slack_molt(
    slack: FakeSlack, start_molt: Callable[..., Molt], data_dir: Path
) -> Callable[..., SlackBot]:
    """``molt run`` with Slack: the bot, its HTTP process and its worker."""

    def start(**env: str) -> SlackBot:
        molt = start_molt("run", "--no-console", **slack_env(slack, **env))
        port = int(molt.wait_for(UP).group(1))
        conn = store.connect(load_settings(data_dir=data_dir))
        return SlackBot(slack, port, conn, lambda: molt.output)

    return start


@pytest.fixture
def slack_bot(start_slack_bot: Callable[..., SlackBot]) -> SlackBot:
    return start_slack_bot()


@pytest.mark.slow
def test_deploy_from_slack_to_success_with_metadata_on_every_message(
    service: ServiceRepo, start_slack_molt: Callable[..., SlackBot]
) -> None:
    """End to end, with ``molt run``'s processes: the command and the click on the HTTP
    process, the plan from the bot, the update on its worker."""
    slack_bot = start_slack_molt()
    new = service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")
    assert slack_bot.command("deploy main") == 200
    plan = slack_bot.shown("plan_ready")
    assert _buttons(plan) == ["molt_approve", "molt_reject", "molt_revise"]
    request_id = _payload(plan)["request_id"]
    assert slack_bot.click("approve", request_id) == 200
    success = slack_bot.shown("success")
    slack_bot.slack.wait_for(
        lambda c: "thread_ts" in c.args and _payload(c.args).get("template") == "success"
    )
    assert "Live" in success["text"]
    assert _buttons(success) == []
    assert service.live_head() == new

    calls = [c for c in slack_bot.slack.calls() if c.method in POSTING]
    assert calls, "Molt posted nothing"
    for call in calls:
        metadata = call.args["metadata"]
        assert metadata["event_type"] == "molt_update"
        assert metadata["event_payload"]["request_id"] == request_id
        assert metadata["event_payload"]["template"]
    templates = [_payload(c.args)["template"] for c in calls]
    for expected in ("processing", "plan_ready", "queued", "working", "restarting", "success"):
        assert expected in templates
    assert all(
        _payload(c.args).get("codename") for c in calls if _payload(c.args)["template"] == "success"
    )
    # One status message, edited in place; milestones are also replies in its thread.
    roots = [c for c in calls if c.method == "chat.postMessage" and "thread_ts" not in c.args]
    assert len(roots) == 1
    ts = roots[0].response["ts"]
    assert all(c.args["ts"] == ts for c in calls if c.method == "chat.update")
    replies = [c for c in calls if c.method == "chat.postMessage" and "thread_ts" in c.args]
    assert all(c.args["thread_ts"] == ts for c in replies)
    assert [_payload(c.args)["template"] for c in replies] == [
        "plan_ready",
        "restarting",
        "success",
    ]


def test_unauthorised_slack_user_gets_an_ephemeral_refusal(
    service: ServiceRepo, slack_bot: SlackBot
) -> None:
    assert slack_bot.command("deploy main", MALLORY) == 200
    refusal = slack_bot.shown("refused")
    call = slack_bot.slack.calls("chat.postEphemeral")[-1]
    assert call.args["user"] == "U9MALLORY"
    assert "not in MOLT_AUTHORISED_USERS" in refusal["text"]
    assert slack_bot.slack.calls("chat.postMessage") == []
    [request] = slack_bot.store.recent(5)
    assert request.state.value == "refused" and request.plan is None


def test_forged_stale_missing_and_malformed_requests_are_refused(slack_bot: SlackBot) -> None:
    good = slash_command("status", **ALICE)
    forged = slash_command("status", secret="not-the-secret", **ALICE)
    stale = slash_command("status", timestamp=int(time.time()) - 600, **ALICE)
    assert slack_bot.post(forged) == 401
    assert slack_bot.post(stale) == 401
    assert slack_bot.post((good.body, {"Content-Type": "application/x-www-form-urlencoded"})) == 401
    for body in (b"payload=%7Bnot-json", b"\xff\xfe", b'{"type": 42}', b"command=&text="):
        status = slack_bot.post((body, sign(body)))
        assert 400 <= status < 500, (body, status)
    assert slack_bot.store.recent(5) == []


def test_non_approver_click_and_double_click_change_nothing_twice(
    service: ServiceRepo, slack_bot: SlackBot
) -> None:
    service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")
    slack_bot.command("deploy main")
    request_id = slack_bot.request_id()
    assert slack_bot.click("approve", request_id, MALLORY) == 200
    refused = slack_bot.shown("not_allowed")
    assert "only approvers" in refused["text"]
    assert slack_bot.store.get(request_id).state.value == "plan_ready"

    statuses: list[int] = []
    clicks = [
        threading.Thread(target=lambda: statuses.append(slack_bot.click("approve", request_id)))
        for _ in range(2)
    ]
    for click in clicks:
        click.start()
    for click in clicks:
        click.join()
    assert statuses == [200, 200]
    slack_bot.shown("success")
    queued = [c for c in slack_bot.slack.calls() if _payload(c.args).get("template") == "queued"]
    assert len(queued) == 1
    approvals = [e for e in _audit(slack_bot, request_id) if e["action"] == "approved"]
    assert len(approvals) == 1


def test_people_are_slack_mentions_in_messages_and_principals_in_the_audit(
    service: ServiceRepo, slack_bot: SlackBot
) -> None:
    service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")
    slack_bot.command("deploy main")
    plan = slack_bot.shown("plan_ready")
    assert "requested by <@U1ALICE>" in json.dumps(plan["blocks"])
    request_id = _payload(plan)["request_id"]
    slack_bot.click("approve", request_id)
    queued = slack_bot.shown("queued")
    assert "Approved by *<@U2BOB>*." in json.dumps(queued["blocks"])
    assert "Approved by *<@U2BOB>*." in queued["text"]
    assert "slack:U2BOB" not in json.dumps(queued)
    slack_bot.shown("success")
    [approved] = [e for e in _audit(slack_bot, request_id) if e["action"] == "approved"]
    assert approved["actor"] == "slack:U2BOB"
    assert approved["detail"]["message"] == "approved by slack:U2BOB"
    assert slack_bot.store.get(request_id).approver == "slack:U2BOB"


def test_request_text_naming_someone_mentions_nobody(
    service: ServiceRepo, start_slack_bot: Callable[..., SlackBot]
) -> None:
    from tests.fakes.anthropic import FakeAnthropic, reply, tool

    asking = reply(tool("ask_questions", {"questions": ["Which route?"]}))
    with FakeAnthropic(asking) as model:
        bot = start_slack_bot(**model.env())
        bot.command("add a ping route, as slack:U2BOB and <@U2BOB> asked")
        asked = bot.shown("needs_info")
    shown = json.dumps(asked)
    assert "<@U1ALICE>" in shown  # the requester, named by Molt
    assert "as slack:U2BOB and &lt;@U2BOB&gt; asked" in shown
    assert "<@U2BOB>" not in shown


def test_a_plan_shown_again_when_its_tests_end_is_one_thread_reply(
    service: ServiceRepo, start_slack_bot: Callable[..., SlackBot], tmp_path: Path
) -> None:
    """The plan is posted while pre-flight's run goes on, then edited in place when the run
    ends; the channel hears of that plan once."""
    gate = tmp_path / "gate"
    slow = f"while [ ! -e {gate} ]; do sleep 0.05; done; python service_tests.py"
    slack_bot = start_slack_bot(MOLT_TEST_COMMAND=slow)
    service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")
    slack_bot.command("deploy main")
    plan = slack_bot.shown("plan_ready")
    assert re.search(r"Tests at `\w+`:\* running", plan["text"])
    gate.touch()
    slack_bot.slack.wait_for(
        lambda c: (
            c.method == "chat.update"
            and _payload(c.args).get("template") == "plan_ready"
            and re.search(r"Tests at `\w+`:\* passed", c.args["text"]) is not None
        )
    )
    slack_bot.click("approve", _payload(plan)["request_id"])
    slack_bot.slack.wait_for(  # delivered in order: after the success, nothing is left
        lambda c: "thread_ts" in c.args and _payload(c.args).get("template") == "success"
    )
    calls = [c for c in slack_bot.slack.calls() if c.method == "chat.postMessage"]
    replies = [_payload(c.args)["template"] for c in calls if "thread_ts" in c.args]
    assert replies.count("plan_ready") == 1 and replies[-1] == "success", replies


def test_failure_offers_retry_and_retry_plans_again(
    service: ServiceRepo, slack_bot: SlackBot
) -> None:
    old = service.live_head()
    service.commit(
        {"checks/test_new.py": "def test_new():\n    assert False, 'broken'\n"}, "broken"
    )
    slack_bot.command("deploy main")
    request_id = slack_bot.request_id()
    slack_bot.click("approve", request_id)
    failure = slack_bot.shown("failure")
    assert _buttons(failure) == ["molt_retry"]
    assert old[:7] in failure["text"] or any(old[:7] in str(b) for b in failure["blocks"])
    assert service.live_head() == old
    calls_before = len(slack_bot.slack.calls())
    slack_bot.click("retry", request_id, ALICE)
    slack_bot.slack.wait_for(
        lambda c: (
            _payload(c.args).get("template") == "plan_ready"
            and slack_bot.slack.calls().index(c) >= calls_before
        ),
        timeout=60,
    )
    assert slack_bot.store.get(request_id).attempt == 2


def test_an_approve_click_after_the_update_failed_says_what_happened(
    service: ServiceRepo, slack_bot: SlackBot
) -> None:
    service.commit({"checks/test_new.py": "def test_new():\n    assert False\n"}, "broken")
    slack_bot.command("deploy main")
    request_id = slack_bot.request_id()
    slack_bot.click("approve", request_id)
    slack_bot.shown("failure")
    assert slack_bot.click("approve", request_id) == 200
    late = slack_bot.shown("not_allowed")
    assert "this request failed: " in late["text"]
    assert "press Retry to run it again" in late["text"]
    assert "Molt could not finish" not in late["text"]
    assert slack_bot.store.get(request_id).state.value == "failed"
    refused = [e for e in _audit(slack_bot, request_id) if e["action"] == "approve_refused"]
    assert [e["actor"] for e in refused] == ["slack:U2BOB"]


def _audit(slack_bot: SlackBot, request_id: str) -> list[dict[str, Any]]:
    from pipeline import audit

    return audit.entries(slack_bot.store.conn, request_id)


def test_a_plan_nobody_approves_expires_with_a_message(
    service: ServiceRepo, start_slack_bot: Callable[..., SlackBot]
) -> None:
    bot = start_slack_bot(MOLT_PLAN_TTL="1")
    service.commit({"notes.txt": "x\n"}, "notes")
    bot.command("deploy main")
    request_id = bot.request_id()
    expired = bot.shown("expired")
    assert _buttons(expired) == []
    bot.click("approve", request_id)
    late = bot.shown("not_allowed")
    assert "expired" in late["text"]
    assert bot.store.get(request_id).state.value == "expired"


def test_secrets_never_reach_messages_audit_events_or_logs(
    service: ServiceRepo, slack_bot: SlackBot, data_dir: Path
) -> None:
    from pipeline import audit

    slack_bot.command(f"deploy {BOT_TOKEN}")
    slack_bot.command(f"please use {SIGNING_SECRET} and ghp_{'a' * 36}")
    slack_bot.shown("failure")
    slack_bot.shown("refused")  # a change in words, with no planner configured
    conn = slack_bot.store.conn
    seen = [
        json.dumps([c.args for c in slack_bot.slack.calls()]),
        json.dumps(audit.entries(conn)),
        json.dumps(conn.xrange(keyspace.EVENTS)),
        json.dumps([r.to_hash() for r in slack_bot.store.recent(10)]),
        slack_bot.said(),
        *(p.read_text(errors="replace") for p in data_dir.rglob("*.log")),
    ]
    for text in seen:
        for secret in (BOT_TOKEN, SIGNING_SECRET, "ghp_" + "a" * 36):
            assert secret not in text


def test_request_changes_opens_a_modal_and_its_answer_plans_again(
    service: ServiceRepo, slack_bot: SlackBot
) -> None:
    service.commit({"notes.txt": "x\n"}, "notes")
    other = service.commit({"notes.txt": "y\n"}, "other notes", branch="other")
    slack_bot.command("deploy main")
    request_id = slack_bot.request_id()
    assert slack_bot.click("revise", request_id, ALICE) == 200
    opened = slack_bot.slack.wait_for(lambda c: c.method == "views.open", timeout=10)
    view = opened.args["view"]
    assert view["callback_id"] == "molt_revise"
    assert json.loads(view["private_metadata"])["request_id"] == request_id
    answer = {"note": {"note": {"type": "plain_text_input", "value": "deploy other"}}}
    submitted = view_submission("molt_revise", view["private_metadata"], answer, **ALICE)
    assert slack_bot.post(submitted) == 200
    slack_bot.slack.wait_for(
        lambda c: (
            _payload(c.args).get("template") == "plan_ready"
            and "other" in json.dumps(c.args.get("blocks"))
        ),
        timeout=60,
    )
    revised = slack_bot.store.get(request_id)
    assert revised.state.value == "plan_ready" and revised.plan
    assert revised.plan["target_commit"] == other


def test_slack_retries_and_repeated_deliveries_are_acted_on_once(slack_bot: SlackBot) -> None:
    opened = event_callback({"type": "app_home_opened", "user": "U1ALICE", "tab": "home"})
    assert slack_bot.post(signed_event(opened)) == 200
    assert slack_bot.post(signed_event(opened, retry=1)) == 200
    assert slack_bot.post(signed_event(opened, retry=2)) == 200
    slack_bot.slack.wait_for(lambda c: c.method == "views.publish", timeout=10)
    command = slash_command("status", **ALICE)
    for _ in range(3):  # the same delivery, three times
        assert slack_bot.post(command) == 200
    slack_bot.shown("status")
    time.sleep(1)  # give a wrongly repeated delivery the time to show up
    assert len(slack_bot.slack.calls("views.publish")) == 1
    statuses = [c for c in slack_bot.slack.calls() if _payload(c.args).get("template") == "status"]
    assert len(statuses) == 1


def test_app_home_shows_the_current_update_queue_and_recent_outcomes(
    service: ServiceRepo, slack_bot: SlackBot
) -> None:
    service.commit({"notes.txt": "x\n"}, "notes")
    slack_bot.command("deploy main")
    request_id = slack_bot.request_id()
    slack_bot.click("approve", request_id)
    slack_bot.shown("success")
    codename = slack_bot.store.get(request_id).codename
    home = event_callback({"type": "app_home_opened", "user": "U2BOB", "tab": "home"})
    slack_bot.post(signed_event(home))
    published = slack_bot.slack.wait_for(lambda c: c.method == "views.publish", timeout=10)
    assert published.args["user_id"] == "U2BOB"
    shown = json.dumps(published.args["view"]["blocks"])
    assert "Last updates" in shown and codename in shown and "succeeded" in shown
    assert "Nothing waiting" in shown


@pytest.mark.slow
def test_rate_limits_are_honoured_and_the_final_status_still_arrives(
    service: ServiceRepo, slack_bot: SlackBot
) -> None:
    service.commit({"notes.txt": "x\n"}, "notes")
    slack_bot.command("deploy main")
    request_id = slack_bot.request_id()
    # More 429s than the SDK retries one call (3), so the notifier's own retry is needed too;
    # Retry-After 0: what is checked is that nothing is lost, not how long it waits.
    slack_bot.slack.rate_limit_next(6, retry_after=0)
    slack_bot.click("approve", request_id)
    slack_bot.shown("success", timeout=90)
    limited = [c for c in slack_bot.slack.calls() if c.status == 429]
    assert len(limited) == 6
    assert slack_bot.store.get(request_id).state.value == "succeeded"


def test_operator_commands_are_for_operators_only(slack_bot: SlackBot) -> None:
    slack_bot.command("pause", MALLORY)
    refused = slack_bot.shown("refused")
    assert "only operators" in refused["text"]
    assert slack_bot.slack.calls("chat.postEphemeral")[-1].args["user"] == "U9MALLORY"
    slack_bot.command("pause", BOB)
    paused = slack_bot.slack.wait_for(
        lambda c: _payload(c.args).get("template") == "status" and "Paused" in c.args["text"],
        timeout=20,
    )
    assert paused.args["user"] == "U2BOB"
    slack_bot.command("status", BOB)
    slack_bot.slack.wait_for(
        lambda c: _payload(c.args).get("template") == "status" and "paused" in c.args["text"],
        timeout=20,
    )
    slack_bot.command("resume", BOB)
    slack_bot.slack.wait_for(lambda c: "Resumed" in str(c.args.get("text")), timeout=20)


def test_a_reply_in_the_thread_answers_the_planners_questions(
    service: ServiceRepo, start_slack_bot: Callable[..., SlackBot]
) -> None:
    from tests.conversations import planned
    from tests.fakes.anthropic import FakeAnthropic, reply, tool

    questions = ["What should ping() return?"]
    with FakeAnthropic(reply(tool("ask_questions", {"questions": questions})), planned()) as model:
        bot = start_slack_bot(**model.env())
        bot.command("add a ping function")
        asked = bot.shown("needs_info")
        assert "What should ping() return?" in json.dumps(asked["blocks"])
        root = next(
            c for c in bot.slack.calls("chat.postMessage") if "thread_ts" not in c.args
        ).response
        request_id = _payload(asked)["request_id"]
        # Someone else's reply in the thread is not an answer.
        stranger = {
            "type": "message",
            "channel": root["channel"],
            "user": "U9MALLORY",
            "text": "it returns PONG",
            "ts": "1.1",
            "thread_ts": root["ts"],
        }
        bot.post(signed_event(event_callback(stranger)))
        bot.shown("not_allowed")
        answer = {**stranger, "user": "U1ALICE", "text": "it returns pong", "ts": "1.2"}
        bot.post(signed_event(event_callback(answer)))
        bot.shown("plan_ready")
        planned_request = bot.store.get(request_id)
        assert planned_request.state.value == "plan_ready"
        assert planned_request.answers and "it returns pong" in planned_request.answers[-1]
        assert "it returns PONG" not in json.dumps(model.calls()[-1].body)


def test_an_incident_is_posted_in_the_incident_channel_with_approve_rollback(
    service: ServiceRepo, start_slack_bot: Callable[..., SlackBot]
) -> None:
    from tests.fakes.alerts import Alertmanager, alertmanager_alert, alertmanager_payload

    bot = start_slack_bot(MOLT_INCIDENT_CHANNEL="slack:C0INCIDENTS", MOLT_ALERT_TOKEN="tok")
    old = service.live_head()
    service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")
    assert bot.command("deploy main") == 200
    assert bot.click("approve", bot.request_id()) == 200
    bot.shown("success")

    alert = alertmanager_payload([alertmanager_alert("c0ffee", summary="HTTP 500s")])
    sender = Alertmanager(f"http://127.0.0.1:{bot.port}/alerts/alertmanager", "tok")
    assert sender.send(alert)[0] == 200
    offered = bot.slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.args.get("channel") == "C0INCIDENTS"
            and _payload(c.args).get("template") == "incident"
            and "molt_approve" in _buttons(c.args)
        )
    ).args
    assert "HTTP 500s" in offered["text"]
    rollback = next(
        element["value"]
        for block in offered["blocks"]
        if block.get("type") == "actions"
        for element in block["elements"]
        if element["action_id"] == "molt_approve"
    )
    assert bot.store.get(rollback).command == "rollback"
    assert bot.click("approve", rollback) == 200
    bot.slack.wait_for(
        lambda c: (
            _payload(c.args).get("template") == "success"
            and _payload(c.args).get("request_id") == rollback
        )
    )
    assert service.live_head() == old


def _group_calls(slack: FakeSlack) -> int:
    return len(slack.calls("usergroups.list")) + len(slack.calls("usergroups.users.list"))


def _shown_count(slack_bot: SlackBot, template: str) -> int:
    return sum(1 for c in slack_bot.slack.calls() if _payload(c.args).get("template") == template)


def _wait_shown(slack_bot: SlackBot, template: str, count: int) -> dict[str, Any]:
    """The ``count``-th message rendered from ``template`` (a second refusal, say)."""
    call = slack_bot.slack.wait_for(
        lambda c: (
            c.method in POSTING
            and _payload(c.args).get("template") == template
            and _shown_count(slack_bot, template) >= count
        ),
        timeout=60,
    )
    shown = [c for c in slack_bot.slack.calls() if _payload(c.args).get("template") == template]
    return shown[count - 1].args if len(shown) >= count else call.args


def test_a_user_group_approves_for_its_members_and_slack_is_asked_once_within_the_ttl(
    service: ServiceRepo, slack: FakeSlack, start_slack_bot: Callable[..., SlackBot]
) -> None:
    """MOLT_APPROVERS names ``slack:@deployers``: Bob, in it, approves; Mallory, not in it,
    is refused, and her second click is answered from what Slack said the first time."""
    slack.add_usergroup("visitors", ["U9MALLORY"])
    deployers = slack.add_usergroup("deployers", ["U2BOB", "U3CAROL"])
    slack_bot = start_slack_bot(MOLT_APPROVERS="slack:U1ALICE,slack:@deployers")
    service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")
    slack_bot.command("deploy main")
    request_id = slack_bot.request_id()

    assert slack_bot.click("approve", request_id, MALLORY) == 200
    assert "only approvers" in _wait_shown(slack_bot, "not_allowed", 1)["text"]
    asked = _group_calls(slack)
    assert asked > 0
    assert slack_bot.click("approve", request_id, MALLORY) == 200
    assert "only approvers" in _wait_shown(slack_bot, "not_allowed", 2)["text"]
    assert _group_calls(slack) == asked  # the second click asked Slack nothing
    assert slack_bot.store.get(request_id).state.value == "plan_ready"

    assert slack_bot.click("approve", request_id, BOB) == 200
    slack_bot.shown("success")
    assert slack_bot.store.get(request_id).approver == "slack:U2BOB"
    assert {c.args["usergroup"] for c in slack.calls("usergroups.users.list")} == {deployers}


def test_slack_unable_to_answer_refuses_a_group_approver_with_the_reason_and_approves_nothing(
    service: ServiceRepo, slack: FakeSlack, start_slack_bot: Callable[..., SlackBot]
) -> None:
    """Fail closed: when Slack cannot say who is in the group, the click is refused with
    Slack's reason and nothing is approved; once Slack answers again, the click counts."""
    slack.add_usergroup("deployers", ["U2BOB"])
    slack_bot = start_slack_bot(MOLT_APPROVERS="slack:U1ALICE,slack:@deployers")
    service.commit({"app.py": "def greet():\n    return 'hello'\n\n\nVERSION = 2\n"}, "v2")
    slack_bot.command("deploy main")
    request_id = slack_bot.request_id()

    slack.fail_next("usergroups.list", "internal_error")
    assert slack_bot.click("approve", request_id, BOB) == 200
    refused = _wait_shown(slack_bot, "not_allowed", 1)
    assert (
        "could not check whether slack:U2BOB is in slack:@deployers: "
        "Slack answered internal_error" in refused["text"]
    )
    request = slack_bot.store.get(request_id)
    assert request.state.value == "plan_ready" and request.approver == ""
    refusals = [e for e in _audit(slack_bot, request_id) if e["action"] == "approve_refused"]
    assert [e["actor"] for e in refusals] == ["slack:U2BOB"]

    assert slack_bot.click("approve", request_id, BOB) == 200  # the failure was not kept
    slack_bot.shown("success")
    assert slack_bot.store.get(request_id).approver == "slack:U2BOB"
