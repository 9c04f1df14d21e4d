"""The Slack adapter: what Block Kit people see, that Slack's requests are acked and handed to
the desk (and forged or malformed ones refused with a 4xx), and that a request's status is one
message posted once and then edited, with metadata, against a Slack Web API on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import uvicorn
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import RateLimitErrorRetryHandler
from starlette.applications import Starlette
from starlette.routing import Route

from bot.messages import Button, Message, MessageField
from bot.people import mark
from bot.rendering import render
from bot.slack.adapter import Slack
from bot.slack.blocks import content, to_blocks
from pipeline import store as embedded
from pipeline.config import Settings, load_settings
from pipeline.requests.store import Origin, RequestStore
from tests.fakes.slack import (
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    SignedRequest,
    block_action,
    sign,
    slash_command,
)

REQUEST_ID = "r1a2b3c4d"


def plan_ready() -> Message:
    context: dict[str, Any] = {
        "request_id": REQUEST_ID,
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
            "risk": {"level": "low", "reasons": ["tests cover every changed file"]},
            "commits": [
                {"sha": f"{i:040x}", "short": f"c0ffee{i}", "subject": f"Fix {i}", "author": "bo"}
                for i in range(3)
            ],
            "diffstat": {"files": 4, "insertions": 40, "deletions": 2},
        },
    }
    return render("plan_ready", context)


def units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def all_texts(blocks: list[dict[str, Any]]) -> list[str]:
    found: list[str] = []
    for block in blocks:
        if "text" in block:
            found.append(block["text"]["text"])
        found.extend(f["text"] for f in block.get("fields", []))
    return found


# -- Block Kit -------------------------------------------------------------------


def test_plan_ready_has_header_fields_and_buttons_carrying_the_request_id() -> None:
    message = plan_ready()
    blocks = to_blocks(message)

    assert blocks[0]["type"] == "header"
    assert blocks[0]["text"] == {"type": "plain_text", "text": message.title, "emoji": True}
    assert "amber-otter" in blocks[0]["text"]["text"]
    assert blocks[1]["type"] == "section"
    assert "*Deploy v1.4 onto main: 3 commits, 4 files*" in blocks[1]["text"]["text"]
    fields = [f["text"] for b in blocks if "fields" in b for f in b["fields"]]
    assert any(f.startswith("*Risk*\n") and "LOW" in f for f in fields)
    assert any(f.startswith("*Target*\n") and "`v1.4`" in f for f in fields)

    actions = blocks[-1]
    assert actions["type"] == "actions"
    buttons = {b["action_id"]: b for b in actions["elements"]}
    assert set(buttons) == {"molt_approve", "molt_reject", "molt_revise"}
    approve, reject = buttons["molt_approve"], buttons["molt_reject"]
    assert approve["value"] == reject["value"] == REQUEST_ID
    assert approve["style"] == "primary" and "confirm" not in approve
    assert approve["text"] == {"type": "plain_text", "text": "Approve", "emoji": True}
    assert reject["style"] == "danger"
    confirm = reject["confirm"]
    assert {"title", "text", "confirm", "deny"} <= set(confirm)
    assert "amber-otter" in confirm["text"]["text"]


def test_a_button_without_a_style_has_no_style_key() -> None:
    message = Message("failure", "Failed", buttons=(Button("Retry", "retry", REQUEST_ID),))
    (button,) = to_blocks(message)[-1]["elements"]
    assert button["action_id"] == "molt_retry"
    assert "style" not in button and "confirm" not in button


def test_huge_messages_stay_within_block_kit_limits() -> None:
    line = "• step <!channel> & 🦀 " + "x" * 80
    message = Message(
        "plan_ready",
        "📋 " + "T" * 400,
        text="\n".join([line] * 2000),
        fields=tuple(MessageField(f"Field {i}", "v & <w> " * 800) for i in range(300)),
        buttons=(
            Button("Approve", "approve", REQUEST_ID, "primary"),
            Button("Reject", "reject", REQUEST_ID, "danger"),
        ),
        request_id=REQUEST_ID,
    )
    blocks = to_blocks(message)

    assert len(blocks) <= 50
    assert blocks[0]["type"] == "header" and units(blocks[0]["text"]["text"]) <= 150
    assert blocks[0]["text"]["text"].endswith("…")
    for block in blocks:
        if block["type"] == "section" and "text" in block:
            assert 0 < units(block["text"]["text"]) <= 3000
        if "fields" in block:
            assert 0 < len(block["fields"]) <= 10
            assert all(units(f["text"]) <= 2000 for f in block["fields"])
    texts = all_texts(blocks)
    assert sum(units(t) for t in texts) <= 12_000
    # The text is escaped, so a requester's text cannot ping a channel, and no escape is cut.
    assert all("<!channel>" not in t for t in texts)
    assert "&lt;!channel&gt; &amp;" in blocks[1]["text"]["text"]
    assert all(not t.rstrip("…").endswith(("&", "&l", "&lt", "&am", "&amp")) for t in texts)
    # The buttons survive whatever had to be cut, and the cut is said.
    assert blocks[-1]["type"] == "actions"
    assert [b["action_id"] for b in blocks[-1]["elements"]] == ["molt_approve", "molt_reject"]
    assert any(b["type"] == "context" and "more field" in str(b) for b in blocks)


def test_light_markdown_becomes_mrkdwn() -> None:
    message = Message("help", "Help", text="**Deploy** a `ref` with *care* <here>")
    assert to_blocks(message)[1]["text"]["text"] == "*Deploy* a `ref` with *care* &lt;here&gt;"


def test_the_approver_is_a_mention_in_the_blocks_and_the_notification_text() -> None:
    context = {"request_id": REQUEST_ID, "approver": "slack:U2BOB", "message": "position 1"}
    posted = content(render("queued", context), REQUEST_ID, "amber-otter")
    assert "Approved by *<@U2BOB>*." in posted["blocks"][1]["text"]["text"]
    assert "<@U2BOB>" in posted["text"]
    assert "&lt;@" not in json.dumps(posted)


def test_someone_on_another_platform_is_shown_by_principal() -> None:
    context = {"request_id": REQUEST_ID, "approver": "console:bob"}
    assert "Approved by *console:bob*." in to_blocks(render("queued", context))[1]["text"]["text"]


def test_request_text_that_names_someone_mentions_nobody() -> None:
    context = {
        "request_id": REQUEST_ID,
        "command": "change",
        "requester": "ana",
        "requester_id": "slack:U0ANA",
        "text": "add a ping for slack:U2BOB <@U2BOB> <!channel>",
    }
    text = to_blocks(render("processing", context))[1]["text"]["text"]
    assert text.startswith("*<@U0ANA>* asked: ")
    assert "for slack:U2BOB &lt;@U2BOB&gt; &lt;!channel&gt;" in text
    assert "<@U2BOB>" not in text


def test_a_cut_never_splits_a_mention() -> None:
    mentions = " ".join(mark("slack:U2BOB") for _ in range(800))
    blocks = to_blocks(Message("history", "History", text=mentions))
    texts = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert len(texts) > 1
    for text in texts:
        assert text.rstrip("…").endswith("<@U2BOB>")
        assert text.count("<") == text.count(">") == text.count("<@U2BOB>")


# -- the fake Web API with a real WebClient --------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        yield server


def test_fake_slack_posts_then_updates_a_message(fake: FakeSlack) -> None:
    client = WebClient(token=BOT_TOKEN, base_url=fake.url)
    metadata = {"event_type": "molt_update", "event_payload": {"request_id": REQUEST_ID}}
    posted = client.chat_postMessage(
        channel="C0DEPLOYS", text="Planning", blocks=to_blocks(plan_ready()), metadata=metadata
    )
    assert posted["ok"] and posted["channel"] == "C0DEPLOYS"
    assert posted["message"]["metadata"] == metadata
    updated = client.chat_update(channel="C0DEPLOYS", ts=posted["ts"], text="Queued")
    assert updated["ts"] == posted["ts"]

    (message,) = fake.messages().values()
    assert message["text"] == "Queued" and message["updates"] == 1
    assert message["blocks"][0]["type"] == "header"  # kept: the update sent no blocks
    call = fake.calls("chat.postMessage")[0]
    assert call.token == BOT_TOKEN
    assert call.args["metadata"]["event_payload"]["request_id"] == REQUEST_ID

    # Form bodies carry blocks as JSON text; the fake decodes them like Slack.
    second = client.api_call(
        "chat.postMessage",
        data={"channel": "C0DEPLOYS", "text": "hi", "blocks": json.dumps([{"type": "divider"}])},
    )
    assert fake.messages()[second["ts"]]["blocks"] == [{"type": "divider"}]
    assert second["ts"] > posted["ts"]
    ephemeral = client.chat_postEphemeral(channel="C0DEPLOYS", user="U0ANA", text="only you")
    assert fake.ephemerals()[0]["message_ts"] == ephemeral["message_ts"]
    assert fake.ephemerals()[0]["user"] == "U0ANA"


def test_fake_slack_refuses_wrong_tokens_and_unknown_methods(fake: FakeSlack) -> None:
    with pytest.raises(SlackApiError) as refused:
        WebClient(token="xoxb-wrong", base_url=fake.url).auth_test()
    assert refused.value.response["error"] == "invalid_auth"
    client = WebClient(token=BOT_TOKEN, base_url=fake.url)
    with pytest.raises(SlackApiError) as unknown:
        client.api_call("chat.frobnicate")
    assert unknown.value.response["error"] == "unknown_method"
    with pytest.raises(SlackApiError) as missing:
        client.chat_update(channel="C0DEPLOYS", ts="1.000001", text="x")
    assert missing.value.response["error"] == "message_not_found"
    assert client.auth_test()["user_id"] == "U0MOLTBOT"


def test_a_429_is_retried_after_retry_after_by_the_rate_limit_handler(fake: FakeSlack) -> None:
    client = WebClient(
        token=BOT_TOKEN,
        base_url=fake.url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=3)],
    )
    fake.rate_limit_next(1, retry_after=1)
    started = time.monotonic()
    posted = client.chat_postMessage(channel="C0DEPLOYS", text="after a wait")
    assert posted["ok"]
    assert time.monotonic() - started >= 1.0
    statuses = [c.status for c in fake.calls("chat.postMessage")]
    assert statuses == [429, 200]


# -- the Bolt endpoint under uvicorn ---------------------------------------------


class RecordingDesk:
    """Stands in for the front desk: records what an adapter handed over, returns at once."""

    def __init__(self) -> None:
        self.said: list[tuple[Origin, str]] = []
        self.pressed: list[tuple[Origin, str, str]] = []
        self.handed = threading.Event()

    def say(self, origin: Origin, text: str) -> Future[Any]:
        self.said.append((origin, text))
        return self._done()

    def press(self, origin: Origin, action: str, request_id: str) -> Future[Any]:
        self.pressed.append((origin, action, request_id))
        return self._done()

    def _done(self) -> Future[Any]:
        self.handed.set()
        future: Future[Any] = Future()
        future.set_result(None)
        return future


def slack_settings(tmp_path: Path, fake: FakeSlack, **extra: Any) -> Settings:
    return load_settings(
        data_dir=tmp_path / "d",
        target_dir=tmp_path,
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_url=fake.url,
        **extra,
    )


class Served:
    """A Slack adapter behind a real uvicorn server on port 0."""

    def __init__(self, slack: Slack) -> None:
        app = Starlette(routes=[Route("/slack/events", slack.endpoint, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("uvicorn did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/slack/events"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read()

    def send(self, signed: SignedRequest) -> tuple[int, bytes]:
        return self.post(signed.body, signed.headers)


@pytest.fixture
def served(
    tmp_path: Path, fake: FakeSlack, request_store: RequestStore
) -> Iterator[tuple[Served, RecordingDesk]]:
    slack = Slack(slack_settings(tmp_path, fake), request_store)
    desk = RecordingDesk()
    slack.desk = desk  # type: ignore[assignment]
    slack.start()
    fake.wait_for(lambda call: call.method == "auth.test")
    with Served(slack) as server:
        yield server, desk


def test_a_signed_slash_command_is_acked_at_once_and_handed_to_the_desk(
    served: tuple[Served, RecordingDesk],
) -> None:
    server, desk = served
    started = time.monotonic()
    status, body = server.send(slash_command("deploy v1.4", user_id="U0ANA", user_name="ana"))
    assert status == 200 and body == b""
    assert time.monotonic() - started < 3.0  # Slack's deadline for the ack
    assert desk.handed.wait(30)
    assert desk.said == [(Origin("slack", "U0ANA", "C0DEPLOYS", "ana"), "deploy v1.4")]
    assert desk.pressed == []


def test_a_signed_click_presses_the_button_with_the_request_id(
    served: tuple[Served, RecordingDesk],
) -> None:
    server, desk = served
    status, _ = server.send(
        block_action("molt_approve", REQUEST_ID, user_id="U0BO", user_name="bo")
    )
    assert status == 200
    assert desk.handed.wait(30)
    assert desk.pressed == [(Origin("slack", "U0BO", "C0DEPLOYS", "bo"), "approve", REQUEST_ID)]
    status, _ = server.send(block_action("molt_reject", REQUEST_ID))
    assert status == 200
    deadline = time.monotonic() + 30
    while len(desk.pressed) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert desk.pressed[-1][1:] == ("reject", REQUEST_ID)


def test_forged_stale_and_unsigned_requests_get_401(
    served: tuple[Served, RecordingDesk],
) -> None:
    server, desk = served
    forged = slash_command("deploy v1.4", secret="not-the-secret")
    assert server.send(forged)[0] == 401
    stale = slash_command("deploy v1.4", timestamp=int(time.time()) - 6 * 60)
    assert server.send(stale)[0] == 401
    genuine = slash_command("deploy v1.4")
    assert (
        server.post(genuine.body, {"Content-Type": "application/x-www-form-urlencoded"})[0] == 401
    )
    for timestamp in ("soon", "1" * 400):
        headers = genuine.headers | {"X-Slack-Request-Timestamp": timestamp}
        assert server.post(genuine.body, headers)[0] == 401
    tampered = genuine.body.replace(b"deploy", b"stop++")
    assert server.post(tampered, genuine.headers)[0] == 401
    assert desk.said == [] and desk.pressed == []


MALFORMED = [
    pytest.param(b"payload=not-json", "application/x-www-form-urlencoded", id="payload-not-json"),
    pytest.param(
        b"payload=" + quote("[1, 2]").encode(),
        "application/x-www-form-urlencoded",
        id="payload-list",
    ),
    pytest.param(b'{"broken', "application/json", id="json-cut-short"),
    pytest.param(b"[1, 2, 3]", "application/json", id="json-array"),
    pytest.param(b"\xff\xfe\x00\x81garbage", "application/octet-stream", id="not-utf8"),
    pytest.param(b"", "application/x-www-form-urlencoded", id="empty"),
    pytest.param(
        urlencode({"command": "/molt", "text": "deploy v1", "channel_id": "C1"}).encode(),
        "application/x-www-form-urlencoded",
        id="command-without-user",
    ),
    pytest.param(
        b"payload="
        + quote(
            json.dumps({"type": "block_actions", "user": {"id": "U1"}, "actions": []})
        ).encode(),
        "application/x-www-form-urlencoded",
        id="click-without-actions",
    ),
    pytest.param(
        json.dumps({"type": "block_actions", "user": "U1", "actions": [{"value": "r1"}]}).encode(),
        "application/json",
        id="click-without-action-id",
    ),
    pytest.param(
        json.dumps({"type": "event_callback", "event": "message", "team_id": 7}).encode(),
        "application/json",
        id="event-not-an-object",
    ),
    pytest.param(
        json.dumps({"type": "view_submission", "view": None, "user": {"id": "U1"}}).encode(),
        "application/json",
        id="view-null",
    ),
    pytest.param(
        json.dumps({"type": "block_actions", "team": 5, "user": {"id": "U1"}}).encode(),
        "application/json",
        id="team-a-number",
    ),
]


@pytest.mark.parametrize(("body", "content_type"), MALFORMED)
def test_signed_malformed_bodies_get_a_4xx_not_a_5xx(
    served: tuple[Served, RecordingDesk], body: bytes, content_type: str
) -> None:
    server, desk = served
    status, _ = server.post(body, sign(body, content_type=content_type))
    assert 400 <= status < 500
    unsigned, _ = server.post(body, {"Content-Type": content_type})
    assert unsigned == 401
    assert desk.said == [] and desk.pressed == []


def test_a_command_or_button_that_is_not_molts_is_not_handled(
    served: tuple[Served, RecordingDesk],
) -> None:
    server, desk = served
    assert server.send(slash_command("hi", command="/other"))[0] == 404
    assert server.send(block_action("someone_elses", "x"))[0] == 404
    assert desk.said == [] and desk.pressed == []


# -- deliver and reply, with a real (embedded) Redis -------------------------------


@pytest.fixture(scope="module")
def request_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RequestStore]:
    """One embedded Redis for these tests, as stopping one takes seconds; each test makes its
    own request."""
    root = tmp_path_factory.mktemp("redis")
    conn = embedded.connect(load_settings(data_dir=root / "d", target_dir=root))
    try:
        yield RequestStore(conn)
    finally:
        conn.close()
        embedded.stop_embedded(root / "d")


@pytest.fixture
def slack(tmp_path: Path, fake: FakeSlack, request_store: RequestStore) -> Slack:
    return Slack(slack_settings(tmp_path, fake), request_store)


ANA = Origin("slack", "U0ANA", "C0DEPLOYS", "ana")


def test_deliver_posts_once_then_edits_the_status_message(
    slack: Slack, fake: FakeSlack, request_store: RequestStore
) -> None:
    request = request_store.create(ANA, "deploy v1.4", "deploy", "v1.4")
    slack.deliver(request, render("processing", request.context()))
    (post,) = fake.calls("chat.postMessage")
    assert post.args["channel"] == "C0DEPLOYS"
    assert post.args["metadata"] == {
        "event_type": "molt_update",
        "event_payload": {"request_id": request.id, "template": "processing"},
    }
    assert post.args["text"] and post.args["blocks"][0]["type"] == "header"
    saved = request_store.get(request.id).message_ref
    assert saved == {"channel": "C0DEPLOYS", "ts": post.response["ts"]}

    request = request_store.get(request.id)
    request.codename = "amber-otter"
    slack.deliver(request, plan_ready())
    (update,) = fake.calls("chat.update")
    assert (update.args["channel"], update.args["ts"]) == ("C0DEPLOYS", post.response["ts"])
    # The plan is a milestone: also a reply in the status message's thread.
    root, reply = fake.calls("chat.postMessage")
    assert "thread_ts" not in root.args and reply.args["thread_ts"] == post.response["ts"]
    shown = fake.messages()[post.response["ts"]]
    assert shown["updates"] == 1
    assert shown["metadata"]["event_payload"] == {
        "request_id": request.id,
        "codename": "amber-otter",
        "template": "plan_ready",
    }
    assert any(b["type"] == "actions" for b in shown["blocks"])


def test_a_private_message_goes_only_to_the_requester(
    slack: Slack, fake: FakeSlack, request_store: RequestStore
) -> None:
    request = request_store.create(ANA, "deploy v1.4", "deploy", "v1.4")
    refused = render("refused", request.context() | {"refusal_line": "Not today."})
    assert refused.private
    slack.deliver(request, refused)
    assert fake.calls("chat.postMessage") == [] and fake.messages() == {}
    (ephemeral,) = fake.ephemerals()
    assert (ephemeral["channel"], ephemeral["user"]) == ("C0DEPLOYS", "U0ANA")
    assert ephemeral["metadata"]["event_payload"]["template"] == "refused"
    assert request_store.get(request.id).message_ref is None


def test_reply_is_ephemeral_with_metadata(slack: Slack, fake: FakeSlack) -> None:
    slack.reply(ANA, Message("help", "Molt commands", text="`deploy <ref>`"))
    (ephemeral,) = fake.ephemerals()
    assert ephemeral["user"] == "U0ANA"
    assert ephemeral["metadata"] == {
        "event_type": "molt_update",
        "event_payload": {"request_id": "", "template": "help"},
    }
    assert "&lt;ref&gt;" in ephemeral["blocks"][1]["text"]["text"]
    assert ephemeral["text"] == "Molt commands\n`deploy &lt;ref&gt;`"


def test_a_deleted_status_message_is_posted_again(
    slack: Slack, fake: FakeSlack, request_store: RequestStore
) -> None:
    request = request_store.create(ANA, "deploy v1.4", "deploy", "v1.4")
    slack.deliver(request, render("processing", request.context()))
    first = request_store.get(request.id)
    fake.fail_next("chat.update", "message_not_found")
    slack.deliver(first, render("planning", first.context()))
    assert len(fake.calls("chat.postMessage")) == 2
    assert request_store.get(request.id).message_ref != first.message_ref


def test_outside_the_channel_the_status_goes_to_the_requesters_dm(
    slack: Slack, fake: FakeSlack, request_store: RequestStore
) -> None:
    request = request_store.create(ANA, "deploy v1.4", "deploy", "v1.4")
    fake.fail_next("chat.postMessage", "not_in_channel")
    slack.deliver(request, render("processing", request.context()))
    assert request_store.get(request.id).message_ref["channel"] == "D0ANA"  # type: ignore[index]


def test_other_slack_errors_raise_so_the_event_is_delivered_again(
    slack: Slack, fake: FakeSlack, request_store: RequestStore
) -> None:
    request = request_store.create(ANA, "deploy v1.4", "deploy", "v1.4")
    fake.fail_next("chat.postMessage", "internal_error")
    with pytest.raises(SlackApiError):
        slack.deliver(request, render("processing", request.context()))
    assert request_store.get(request.id).message_ref is None
