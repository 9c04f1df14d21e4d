"""The Slack front end: a slash command and three buttons in, Block Kit messages out.

Slack wants an answer within 3 s, so every listener acks first and hands the work
to the ``Desk`` (which returns at once); nothing touches Redis before the ack. Bolt
runs with ``process_before_response`` so the ack is the HTTP response, and
verifies every request's signature. A request's status lives in one message,
posted once and then edited in place (``message_ref`` on the request).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog
from slack_bolt import Ack, App
from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
from slack_bolt.middleware.authorization.single_team_authorization import (
    SingleTeamAuthorization,
)
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import RateLimitErrorRetryHandler, default_retry_handlers
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response

from bot.base import Adapter, MessageRefs
from bot.messages import Button, Message
from pipeline.config import Settings
from pipeline.exceptions import ConfigError
from pipeline.requests import Origin, Request, RequestStore

if TYPE_CHECKING:
    from bot.base import Front

log = structlog.get_logger(__name__)

#: The buttons Molt puts on messages; the action id is ``molt_<action>``.
ACTIONS = ("approve", "reject", "retry")
#: Request changes opens this modal; submitting it re-plans.
REVISION_VIEW = "molt_revise"
#: Messages that are also posted as thread replies, so the channel gets a notification.
MILESTONES = frozenset({"plan_ready", "needs_info", "restarting", "success", "failure", "blocked"})
#: How long a delivery id is remembered to recognise Slack's retries.
SEEN_TTL = 3600
#: How long a thread keeps pointing at its request (for answers in the thread).
THREAD_TTL = 30 * 86400
#: ``event_type`` of the metadata on every message Molt posts.
EVENT_TYPE = "molt_update"

# Block Kit limits (https://docs.slack.dev/reference/block-kit/blocks).
MAX_BLOCKS = 50
HEADER_LIMIT = 150
SECTION_LIMIT = 3000
FIELD_LIMIT = 2000
FIELDS_PER_SECTION = 10
BUTTONS_PER_BLOCK = 25
BUTTON_LABEL_LIMIT = 75
BUTTON_VALUE_LIMIT = 2000
FALLBACK_LIMIT = 3000
#: Slack refuses a message whose blocks hold much more than ~12,000 characters in all
#: (``msg_blocks_too_long``), a limit it does not document; stay well under it.
BLOCKS_TEXT_BUDGET = 11_000
#: Body text beyond this is cut, so the fields (risk, target, commits) still fit.
TEXT_BUDGET = 6000

#: Errors that mean the status message is gone or frozen: post a new one.
_REPOST = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
#: Errors that mean the bot cannot write where the request came from: write to the person.
_NO_CHANNEL = frozenset({"channel_not_found", "not_in_channel", "is_archived"})
#: Slack signs each request; an older timestamp may be a replay.
SIGNATURE_MAX_AGE = 300

_DOUBLE_BOLD = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")
_PARTIAL_ENTITY = re.compile(r"&[a-z]{0,3}$")
#: Top-level keys Bolt's middleware reads as objects, ids or lists: other shapes make it raise.
#: Bolt dereferences ``event`` and ``view`` whenever the key is there, even when null.
_STRICT_OBJECTS = ("event", "view")
_OBJECTS = ("container", "message", "state", "function_data")
_OBJECTS_OR_IDS = ("user", "channel", "team", "enterprise")
_LISTS = ("actions", "authorizations")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # int() would take more, then overflow a float


class Slack(Adapter):
    platform = "slack"

    def __init__(self, settings: Settings, store: RequestStore) -> None:
        token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else ""
        secret = (
            settings.slack_signing_secret.get_secret_value()
            if settings.slack_signing_secret
            else ""
        )
        if not token or not (secret or settings.slack_app_token):
            raise ConfigError(
                "Slack needs SLACK_BOT_TOKEN, and SLACK_SIGNING_SECRET (HTTP mode) or "
                "SLACK_APP_TOKEN (Socket Mode)"
            )
        self.settings = settings
        self.store = store
        self.desk: Front | None = None
        base_url = settings.slack_api_url
        self.client = WebClient(
            token=token,
            base_url=base_url if base_url.endswith("/") else base_url + "/",
            timeout=15,
            # slack_sdk does not retry a 429 by itself.
            retry_handlers=[
                *default_retry_handlers(),
                RateLimitErrorRetryHandler(max_retry_count=3),
            ],
        )
        # The client carries the token (Bolt warns when both are given). Bolt's info
        # lines would dump request bodies, legacy verification token included.
        bolt_logger = logging.getLogger("bot.slack.bolt")
        if bolt_logger.level == logging.NOTSET:
            bolt_logger.setLevel(logging.WARNING)
        self.app = App(
            client=self.client,
            signing_secret=secret or None,
            request_verification_enabled=bool(secret),
            process_before_response=True,
            token_verification_enabled=False,
            logger=bolt_logger,
        )
        self._secret = secret.encode()
        self._refs = MessageRefs()
        self._authorised = False
        self.socket_mode: Any = None
        # Listeners ack, then queue the rest for one hand-over thread: nothing before the
        # ack waits on Redis, and no thread is started per request.
        self._handoffs: queue.SimpleQueue[tuple[str, Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._handoff = threading.Thread(target=self._hand_over, name="molt-slack", daemon=True)
        self.app.command(settings.slack_command)(self._on_command)
        for action in ACTIONS:
            self.app.action(f"molt_{action}")(self._on_button)
        # Opening a modal must happen within the click's 3 s: on Bolt's own thread.
        self.app.action("molt_revise")(ack=_ack, lazy=[self._open_revision])
        self.app.view(REVISION_VIEW)(self._on_revision)
        self.app.event("app_home_opened")(self._on_home)
        self.app.event("message")(self._on_message)

    # -- life cycle --------------------------------------------------------

    def start(self) -> None:
        """Check the token in the background, so a slow Slack does not hold up a restart."""
        threading.Thread(target=self._warm_up, name="molt-slack-auth", daemon=True).start()
        self._handoff.start()

    def connect_socket_mode(self) -> None:
        """Socket Mode: envelopes over a WebSocket (no public URL), the same listeners.

        The client asks ``apps.connections.open`` for its URL, acks each envelope by its
        id, and reconnects by itself.
        """
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        token = self.settings.slack_app_token
        assert token is not None
        self.socket_mode = SocketModeHandler(
            self.app, token.get_secret_value(), web_client=self.client, ping_interval=2
        )
        self.socket_mode.connect()
        log.info("slack socket mode connected")

    def stop(self) -> None:
        if self.socket_mode is not None:
            self.socket_mode.close()
            self.socket_mode = None
        if self._handoff.is_alive():
            self._handoffs.put(None)
            self._handoff.join(timeout=5)

    def _warm_up(self) -> None:
        """Cache ``auth.test`` where Bolt looks for it, or the first command waits on it."""
        try:
            result = self.client.auth_test()
        except SlackApiError as exc:
            log.error("SLACK_BOT_TOKEN refused by auth.test", error=_error_code(exc))
            return
        except Exception as exc:
            log.warning(
                "auth.test unreachable; Bolt will retry on the first request", error=str(exc)
            )
            return
        for middleware in getattr(self.app, "_middleware_list", []):
            if isinstance(middleware, SingleTeamAuthorization) and not middleware.auth_test_result:
                middleware.auth_test_result = result
        self._authorised = True
        log.info("slack connected", team=result.get("team"), bot_user=result.get("user_id"))

    # -- incoming ----------------------------------------------------------

    async def endpoint(self, request: HttpRequest) -> Response:
        """POST /slack/events: Bolt answers, unless the body is malformed where Bolt would raise."""
        body = await request.body()
        if not _verifiable(request.headers):
            return JSONResponse({"error": "invalid request"}, status_code=401)
        try:
            bolt_request = to_bolt_request(request, body)
        except Exception as exc:  # parsing only: bad UTF-8, bad JSON, odd shapes
            problem: str | None = f"unreadable body ({type(exc).__name__})"
        else:
            problem = _malformed(bolt_request.body)
        if problem is not None:
            if not self._signed(body, request.headers):
                return JSONResponse({"error": "invalid request"}, status_code=401)
            log.warning("malformed slack request", problem=problem)
            return JSONResponse({"error": problem}, status_code=400)
        if self._authorised:
            # The listeners only ack and hand over: cheaper in place than through a thread.
            return to_starlette_response(self.app.dispatch(bolt_request))
        # Off the event loop: the first request may still wait on auth.test.
        bolt_response = await run_in_threadpool(self.app.dispatch, bolt_request)
        return to_starlette_response(bolt_response)

    def _signed(self, body: bytes, headers: Mapping[str, str]) -> bool:
        """Slack's signature check over the raw bytes (Bolt's needs a body it can decode)."""
        timestamp = headers.get("x-slack-request-timestamp", "")
        signature = headers.get("x-slack-signature", "")
        if not timestamp or not signature or abs(time.time() - int(timestamp)) > SIGNATURE_MAX_AGE:
            return False
        signed = b"v0:" + timestamp.encode() + b":" + body
        expected = "v0=" + hmac.new(self._secret, signed, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected.encode(), signature.encode("latin-1"))

    def _first_time(self, key: str) -> bool:
        """Slack redelivers (retries, Socket Mode reconnects): act on each delivery once."""
        if not key:
            return True
        return bool(self.store.conn.set(f"molt:slack:seen:{key}", 1, nx=True, ex=SEEN_TTL))

    def _later(self, key: str, work: Callable[[], Any]) -> None:
        self._handoffs.put((key, work))

    def _hand_over(self) -> None:
        """Deduplicate by delivery id and hand to the desk, in arrival order."""
        while (item := self._handoffs.get()) is not None:
            key, work = item
            try:
                if self._first_time(key):
                    work()
            except Exception:
                log.exception("handing a Slack delivery over failed")

    def _on_command(self, ack: Ack, command: dict[str, Any]) -> None:
        ack()
        desk = self.desk
        if desk is None:
            return
        origin = Origin(
            "slack", command["user_id"], command["channel_id"], str(command.get("user_name") or "")
        )
        text = str(command.get("text") or "").strip()
        self._later(str(command.get("trigger_id") or ""), lambda: desk.say(origin, text))

    def _on_button(self, ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        desk = self.desk
        if desk is None:
            return
        verb = str(action["action_id"]).removeprefix("molt_")
        origin, value = _clicker(body), str(action.get("value") or "")
        self._later(str(body.get("trigger_id") or ""), lambda: desk.press(origin, verb, value))

    def _open_revision(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        """Request changes: a modal asking what to change (the trigger lives 3 s)."""
        request_id = str(action.get("value") or "")
        channel = _clicker(body).channel
        self.client.views_open(
            trigger_id=body["trigger_id"], view=revision_view(request_id, channel)
        )

    def _on_revision(self, ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        ack()
        desk = self.desk
        if desk is None:
            return
        meta = json.loads(view.get("private_metadata") or "{}")
        values = (view.get("state") or {}).get("values") or {}
        note = str(((values.get("note") or {}).get("note") or {}).get("value") or "")
        user = body["user"]
        origin = Origin(
            "slack",
            user["id"],
            str(meta.get("channel") or ""),
            str(user.get("username") or user.get("name") or ""),
        )
        request_id = str(meta.get("request_id") or "")
        self._later("", lambda: desk.revise(origin, request_id, note))

    def _on_home(self, ack: Ack, event: dict[str, Any], body: dict[str, Any]) -> None:
        ack()
        desk = self.desk
        if desk is None or event.get("tab", "home") != "home":
            return
        origin = Origin("slack", str(event["user"]))
        self._later(str(body.get("event_id") or ""), lambda: desk.home(origin))

    def _on_message(self, ack: Ack, event: dict[str, Any], body: dict[str, Any]) -> None:
        """A person's reply in a request's thread answers the planner's questions."""
        ack()
        desk = self.desk
        thread = str(event.get("thread_ts") or "")
        if desk is None or not thread or event.get("bot_id") or event.get("subtype"):
            return
        channel = str(event.get("channel") or "")
        origin = Origin("slack", str(event.get("user") or ""), channel)
        text = str(event.get("text") or "")

        def answer() -> None:
            request_id = self.store.conn.get(thread_key(channel, thread))
            if request_id:
                desk.answer(origin, str(request_id), text)

        self._later(str(body.get("event_id") or ""), answer)

    # -- outgoing ----------------------------------------------------------

    def deliver(self, request: Request, message: Message) -> None:
        content = _content(message, request.id, message.codename or request.codename)
        if message.private:
            self._ephemeral(request.origin, content)
            return
        ref = self._root(request, content)
        if message.template in MILESTONES:
            # A reply in the thread too, so the channel is notified of what matters.
            self.client.chat_postMessage(channel=ref["channel"], thread_ts=ref["ts"], **content)

    def show_home(self, origin: Origin, message: Message) -> None:
        """The App Home tab: the current update, the queue, the last ten updates."""
        self.client.views_publish(
            user_id=origin.user, view={"type": "home", "blocks": to_blocks(message)}
        )

    def _root(self, request: Request, content: dict[str, Any]) -> dict[str, str]:
        """Post the request's status message, or update it in place; returns where it is."""
        ref = request.message_ref or self._refs.get(request.id)
        if ref and ref.get("channel") and ref.get("ts"):
            try:
                self.client.chat_update(channel=ref["channel"], ts=ref["ts"], **content)
                return {"channel": ref["channel"], "ts": ref["ts"]}
            except SlackApiError as exc:
                if _error_code(exc) not in _REPOST:
                    raise
                log.info("status message gone; posting a new one", request_id=request.id)
        try:
            posted = self.client.chat_postMessage(channel=request.origin.channel, **content)
        except SlackApiError as exc:
            if _error_code(exc) not in _NO_CHANNEL:
                raise
            # The bot is not in that channel: the app's DM with the requester always works.
            posted = self.client.chat_postMessage(channel=request.origin.user, **content)
        new_ref = {"channel": str(posted["channel"]), "ts": str(posted["ts"])}
        self._refs.remember(request.id, new_ref)
        self.store.update(request.id, message_ref=new_ref)
        self.store.conn.set(
            thread_key(new_ref["channel"], new_ref["ts"]), request.id, ex=THREAD_TTL
        )
        return new_ref

    def reply(self, origin: Origin, message: Message) -> None:
        self._ephemeral(origin, _content(message, message.request_id, message.codename))

    def _ephemeral(self, origin: Origin, content: dict[str, Any]) -> None:
        try:
            self.client.chat_postEphemeral(channel=origin.channel, user=origin.user, **content)
        except SlackApiError as exc:
            if _error_code(exc) not in _NO_CHANNEL:
                raise
            self.client.chat_postMessage(channel=origin.user, **content)


def _ack(ack: Ack) -> None:
    ack()


def _clicker(body: dict[str, Any]) -> Origin:
    user = body["user"]
    channel = body.get("channel") or {}
    container = body.get("container") or {}
    return Origin(
        "slack",
        user["id"],
        str(channel.get("id") or container.get("channel_id") or ""),
        str(user.get("username") or user.get("name") or ""),
    )


def thread_key(channel: str, ts: str) -> str:
    return f"molt:slack:thread:{channel}:{ts}"


def revision_view(request_id: str, channel: str) -> dict[str, Any]:
    """The Request changes modal; the request and channel ride in private_metadata."""
    return {
        "type": "modal",
        "callback_id": REVISION_VIEW,
        "private_metadata": json.dumps({"request_id": request_id, "channel": channel}),
        "title": {"type": "plain_text", "text": "Request changes"},
        "submit": {"type": "plain_text", "text": "Plan again"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": "note",
                "label": {"type": "plain_text", "text": "What should change?"},
                "hint": {
                    "type": "plain_text",
                    "text": "The plan is voided and made again with this. "
                    "For a deploy, `deploy <ref>` picks another ref.",
                },
                "element": {
                    "type": "plain_text_input",
                    "action_id": "note",
                    "multiline": True,
                    "max_length": 2000,
                },
            }
        ],
    }


# -- Block Kit ---------------------------------------------------------------


def to_blocks(message: Message) -> list[dict[str, Any]]:
    """``message`` as Block Kit: header, text, fields, buttons, within Slack's limits."""
    blocks: list[dict[str, Any]] = []
    budget = BLOCKS_TEXT_BUDGET
    title = " ".join(message.title.split())
    if title:
        title = _clip(title, HEADER_LIMIT)
        blocks.append(
            {"type": "header", "text": {"type": "plain_text", "text": title, "emoji": True}}
        )
        budget -= _units(title)
    actions = _actions(message)
    room = MAX_BLOCKS - len(blocks) - len(actions) - 1  # one spare for a "more" note

    text = mrkdwn(message.text).strip()
    if text:
        allowance = min(TEXT_BUDGET, budget)
        pieces = _pieces(_clip(text, allowance), SECTION_LIMIT)[:room]
        for piece in pieces:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": piece}})
            budget -= _units(piece)
        room -= len(pieces)

    shown: list[str] = []
    for field in message.fields:
        if budget < 100:
            break
        name = mrkdwn(" ".join(field.name.split()))
        value = mrkdwn(field.value).strip()
        entry = f"*{name}*\n{value}" if name else value
        if not entry.strip("* \n"):
            continue
        entry = _clip(entry, min(FIELD_LIMIT, budget))
        shown.append(entry)
        budget -= _units(entry)
    sections = [shown[i : i + FIELDS_PER_SECTION] for i in range(0, len(shown), FIELDS_PER_SECTION)]
    kept = sections[: max(room, 0)]
    for group in kept:
        blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": t} for t in group]})
    left_out = len(message.fields) - sum(len(g) for g in kept)
    if left_out > 0:
        note = f"…and {left_out} more field{'s' if left_out != 1 else ''} not shown"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": note}]})

    blocks.extend(actions)
    if not blocks:
        fallback = mrkdwn(message.plain()).strip() or message.template or "Molt"
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip(fallback, SECTION_LIMIT)}}
        )
    return blocks[:MAX_BLOCKS]


def _actions(message: Message) -> list[dict[str, Any]]:
    elements = [_button(b, message) for b in message.buttons if b.label.strip() and b.action]
    return [
        {"type": "actions", "elements": elements[i : i + BUTTONS_PER_BLOCK]}
        for i in range(0, min(len(elements), BUTTONS_PER_BLOCK * 2), BUTTONS_PER_BLOCK)
    ]


def _button(button: Button, message: Message) -> dict[str, Any]:
    label = _clip(" ".join(button.label.split()), BUTTON_LABEL_LIMIT)
    element: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": label, "emoji": True},
        "action_id": f"molt_{button.action}",
        "value": (button.value or message.request_id)[:BUTTON_VALUE_LIMIT],
    }
    if button.style in ("primary", "danger"):
        element["style"] = button.style
    if button.action == "reject" or button.style == "danger":
        element["confirm"] = _confirm(button, message)
    return element


def _confirm(button: Button, message: Message) -> dict[str, Any]:
    """A second question before a click that cannot be taken back."""
    name = message.codename or button.value or message.request_id or "this request"
    if button.action == "reject":
        title = "Reject this plan?"
        text = f"{name} will not be applied and the request ends here."
        yes = "Reject"
    else:
        title = f"{' '.join(button.label.split())}?"
        text = f"This cannot be undone for {name}."
        yes = " ".join(button.label.split())
    return {
        "title": {"type": "plain_text", "text": _clip(title, 100)},
        "text": {"type": "plain_text", "text": _clip(text, 300)},
        "confirm": {"type": "plain_text", "text": _clip(yes, 30)},
        "deny": {"type": "plain_text", "text": "Keep it"},
        "style": "danger",
    }


def mrkdwn(text: str) -> str:
    """Light Markdown as Slack mrkdwn: ``*bold*`` stays, ``**bold**`` becomes it, and
    ``& < >`` are escaped so request text cannot become a mention or a link."""
    return _DOUBLE_BOLD.sub(r"*\1*", _escape(text))


def _escape(text: str) -> str:
    """Slack's three control characters, as it wants them in any text it parses."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _content(message: Message, request_id: str, codename: str) -> dict[str, Any]:
    """What every message Molt sends carries: blocks, a plain fallback, and metadata."""
    payload: dict[str, Any] = {"request_id": request_id, "template": message.template}
    if codename:
        payload["codename"] = codename
    # The fallback shows in notifications, where <!channel> would still ping.
    fallback = _escape(message.plain().strip() or message.template or "Molt")
    return {
        "text": _clip(fallback, FALLBACK_LIMIT),
        "blocks": to_blocks(message),
        "metadata": {"event_type": EVENT_TYPE, "event_payload": payload},
    }


# -- helpers -------------------------------------------------------------------


def _units(text: str) -> int:
    """Length as Slack counts it (UTF-16 code units: an emoji may count twice)."""
    return len(text.encode("utf-16-le")) // 2


def _fit(text: str, limit: int) -> str:
    """The longest start of ``text`` within ``limit`` units that cuts no escape (``&lt;``)."""
    if _units(text) <= limit:
        return text
    head = text[: max(limit, 0)]
    excess = _units(head) - limit
    while excess > 0 and head:
        excess -= _units(head[-1])
        head = head[:-1]
    return _PARTIAL_ENTITY.sub("", head)


def _clip(text: str, limit: int) -> str:
    """``text`` within ``limit`` units, ending in an ellipsis when something was cut."""
    if _units(text) <= limit:
        return text
    return _fit(text, limit - 1).rstrip() + "…"


def _pieces(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` units, cut at line ends where possible."""
    pieces: list[str] = []
    rest = text
    while rest:
        if _units(rest) <= limit:
            head = rest
        else:
            head = _fit(rest, limit)
            newline = head.rfind("\n")
            if newline > len(head) // 2:
                head = head[:newline]
            if not head:  # cannot happen with sane limits; never loop forever
                head = rest[:1]
        if head.strip():
            pieces.append(head.rstrip())
        rest = rest[len(head) :].lstrip("\n")
    return pieces


def _malformed(body: Any) -> str | None:
    """Why a parsed body cannot be handled, for the shapes Molt listens to; None if fine."""
    if not isinstance(body, dict):
        return "the body is not an object"
    if not body:
        return "empty body"
    for name in _STRICT_OBJECTS:
        if name in body and not isinstance(body[name], dict):
            return f"{name} is not an object"
    for name in _OBJECTS:
        if body.get(name) is not None and not isinstance(body[name], dict):
            return f"{name} is not an object"
    for name in _OBJECTS_OR_IDS:
        if body.get(name) is not None and not isinstance(body[name], dict | str):
            return f"{name} is neither an object nor an id"
    for name in _LISTS:
        value = body.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, dict) for v in value)
        ):
            return f"{name} is not a list of objects"
    if "command" in body:
        for name in ("command", "user_id", "channel_id"):
            if not isinstance(body.get(name), str) or not body[name]:
                return f"slash command without {name}"
        if not isinstance(body.get("text", ""), str):
            return "slash command text is not a string"
    kind = body.get("type")
    if kind in ("block_actions", "interactive_message") and not body.get("actions"):
        return f"{kind} without actions"
    if kind == "block_actions":
        user = body.get("user")
        if not isinstance(user, dict) or not isinstance(user.get("id"), str) or not user["id"]:
            return "block_actions without user.id"
        for action in body["actions"]:
            if not isinstance(action.get("action_id"), str):
                return "block_actions with an action that has no action_id"
            if not isinstance(action.get("value", ""), str):
                return "block_actions with a value that is not a string"
    return None


def _verifiable(headers: Mapping[str, str]) -> bool:
    """False for signature headers that would make slack_sdk's verifier raise (a 500)."""
    timestamp = headers.get("x-slack-request-timestamp")
    if timestamp is not None and not _TIMESTAMP.fullmatch(timestamp):
        return False
    signature = headers.get("x-slack-signature")
    return signature is None or signature.isascii()


def _error_code(exc: SlackApiError) -> str:
    try:
        return str(exc.response.get("error", ""))
    except Exception:
        return ""
