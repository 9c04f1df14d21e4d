"""A Slack Web API on loopback that a real ``slack_sdk.WebClient(base_url=fake.url)`` talks to,
and signed slash commands and button clicks shaped like the ones Slack sends.

The server answers the methods Molt uses the way Slack documents them (form or JSON bodies,
``Authorization: Bearer`` tokens, ``ok``/``error`` envelopes, 429 with ``Retry-After``), keeps
the state of every message it was sent, and records every call so tests can assert on what a
person would see.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from aiohttp import WSMsgType, web

from tests.fakes.loopback import AsyncFake, HttpFake

BOT_TOKEN = "xoxb-0000-molt-test-token"
APP_TOKEN = "xapp-1-molt-test-app-token"
SIGNING_SECRET = "molt-test-signing-secret"
TEAM_ID = "T0MOLT"
TEAM_DOMAIN = "molt-test"
BOT_USER_ID = "U0MOLTBOT"
BOT_ID = "B0MOLTBOT"
APP_ID = "A0MOLT"
#: Arguments Slack takes as JSON text in a form body.
_JSON_ARGS = ("blocks", "metadata", "attachments", "view")


@dataclass(frozen=True)
class SlackCall:
    """One request the fake answered: the method, its arguments (JSON ones decoded)."""

    method: str
    args: dict[str, Any]
    token: str
    status: int
    response: dict[str, Any]
    at: float = field(default_factory=time.time)


class FakeSlack(HttpFake):
    """The Slack Web API on 127.0.0.1, port 0; use as a context manager or start()/stop()."""

    name = "fake Slack"

    def __init__(
        self,
        token: str = BOT_TOKEN,
        *,
        app_token: str = APP_TOKEN,
        team_id: str = TEAM_ID,
        bot_user_id: str = BOT_USER_ID,
    ) -> None:
        super().__init__()
        self.handler = _Handler
        self.token = token
        self.app_token = app_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self._calls: list[SlackCall] = []
        self._messages: dict[str, dict[str, Any]] = {}
        self._ephemerals: list[dict[str, Any]] = []
        self._failures: list[tuple[str, str]] = []
        self._limited = 0
        self._retry_after = 1
        self._last_ts = 0.0
        self._usergroups: dict[str, dict[str, Any]] = {}  # by id
        self._changed = threading.Condition()
        #: Set by ``with_socket_mode()``: the WebSocket end of Socket Mode.
        self.socket_mode: FakeSocketMode | None = None

    # -- life cycle --------------------------------------------------------

    def with_socket_mode(self) -> FakeSocketMode:
        """Serve Socket Mode too: ``apps.connections.open`` hands out its ws:// URL."""
        self.socket_mode = FakeSocketMode().start()
        return self.socket_mode

    def stop(self) -> None:
        if self.socket_mode is not None:
            self.socket_mode.stop()
            self.socket_mode = None
        super().stop()

    @property
    def url(self) -> str:
        """The ``base_url`` for a WebClient (ends in a slash, like https://slack.com/api/)."""
        return f"http://127.0.0.1:{self.port}/api/"

    # -- what tests look at --------------------------------------------------

    def calls(self, method: str | None = None) -> list[SlackCall]:
        with self._changed:
            return [c for c in self._calls if method is None or c.method == method]

    def wait_for(self, predicate: Callable[[SlackCall], bool], timeout: float = 5.0) -> SlackCall:
        """The first recorded call matching ``predicate``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for call in self._calls:
                    if predicate(call):
                        return call
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = ", ".join(c.method for c in self._calls) or "none"
                    raise TimeoutError(f"no matching Slack call within {timeout} s (calls: {seen})")
                self._changed.wait(left)

    def messages(self) -> dict[str, dict[str, Any]]:
        """Every posted message as it stands now (after updates), by ts."""
        with self._changed:
            return copy.deepcopy(self._messages)

    def ephemerals(self) -> list[dict[str, Any]]:
        with self._changed:
            return copy.deepcopy(self._ephemerals)

    # -- what tests arrange ----------------------------------------------------

    def rate_limit_next(self, count: int, retry_after: int = 1) -> None:
        """Answer the next ``count`` calls with HTTP 429 and ``Retry-After``."""
        with self._changed:
            self._limited = count
            self._retry_after = retry_after

    def add_usergroup(self, handle: str, users: list[str], name: str = "") -> str:
        """A user group of the workspace (``@handle``) with these members; returns its id."""
        with self._changed:
            group_id = f"S{len(self._usergroups) + 1:08d}"
            now = int(time.time())
            self._usergroups[group_id] = {
                "id": group_id,
                "team_id": self.team_id,
                "is_usergroup": True,
                "name": name or handle.title(),
                "description": "",
                "handle": handle,
                "is_external": False,
                "date_create": now,
                "date_update": now,
                "date_delete": 0,
                "auto_type": None,
                "created_by": "U0OWNER",
                "updated_by": "U0OWNER",
                "deleted_by": None,
                "prefs": {"channels": [], "groups": []},
                "users": list(users),
                "user_count": len(users),
            }
            return group_id

    def fail_next(self, method: str, error: str) -> None:
        """Answer the next call of ``method`` with ``{"ok": false, "error": error}``."""
        with self._changed:
            self._failures.append((method, error))

    # -- the API -----------------------------------------------------------

    def handle(
        self, method: str, args: dict[str, Any], token: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Answer one call: (HTTP status, JSON body, extra headers)."""
        with self._changed:
            status, body, headers = self._answer(method, args, token)
            self._calls.append(SlackCall(method, args, token, status, body))
            self._changed.notify_all()
        return status, body, headers

    def _answer(
        self, method: str, args: dict[str, Any], token: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        if self._limited > 0:
            self._limited -= 1
            headers = {"Retry-After": str(self._retry_after)}
            return HTTPStatus.TOO_MANY_REQUESTS, {"ok": False, "error": "ratelimited"}, headers
        expected = self.app_token if method == "apps.connections.open" else self.token
        if not token:
            return HTTPStatus.OK, {"ok": False, "error": "not_authed"}, {}
        if not hmac.compare_digest(token.encode(), expected.encode()):
            return HTTPStatus.OK, {"ok": False, "error": "invalid_auth"}, {}
        for index, (failing, error) in enumerate(self._failures):
            if failing == method:
                del self._failures[index]
                return HTTPStatus.OK, {"ok": False, "error": error}, {}
        answer = getattr(self, "_" + method.replace(".", "_"), None)
        if answer is None:
            return HTTPStatus.OK, {"ok": False, "error": "unknown_method", "req_method": method}, {}
        return HTTPStatus.OK, answer(args), {}

    def _next_ts(self) -> str:
        now = max(time.time(), self._last_ts + 0.000001)
        self._last_ts = now
        return f"{now:.6f}"

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": "Molt Test",
            "user": "molt",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _channel(self, args: dict[str, Any]) -> str:
        channel = str(args.get("channel") or "")
        if channel[:1] in ("U", "W"):  # posting to a person lands in the app's DM with them
            return "D" + channel[1:]
        return channel

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args)
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        ts = self._next_ts()
        message: dict[str, Any] = {
            "type": "message",
            "subtype": "bot_message",
            "text": str(args.get("text") or ""),
            "user": self.bot_user_id,
            "bot_id": BOT_ID,
            "app_id": APP_ID,
            "team": self.team_id,
            "ts": ts,
        }
        for name in ("blocks", "metadata"):
            if args.get(name) is not None:
                message[name] = args[name]
        self._messages[ts] = {"channel": channel, "updates": 0, **message}
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(args.get("channel") or ""), str(args.get("ts") or "")
        stored = self._messages.get(ts)
        if stored is None:
            return {"ok": False, "error": "message_not_found"}
        if stored["channel"] != channel:
            return {"ok": False, "error": "channel_not_found"}
        if args.get("text") is not None:
            stored["text"] = str(args["text"])
        for name in ("blocks", "metadata"):
            if args.get(name) is not None:  # left out: Slack keeps what was there
                stored[name] = args[name]
        stored["updates"] += 1
        stored["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        message = {k: v for k, v in stored.items() if k not in ("channel", "updates")}
        return {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "text": stored["text"],
            "message": message,
        }

    def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, user = str(args.get("channel") or ""), str(args.get("user") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not user:
            return {"ok": False, "error": "user_not_found"}
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        ts = self._next_ts()
        self._ephemerals.append(
            {
                "channel": channel,
                "user": user,
                "message_ts": ts,
                "text": str(args.get("text") or ""),
                "blocks": args.get("blocks"),
                "metadata": args.get("metadata"),
            }
        )
        return {"ok": True, "message_ts": ts}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        view = args.get("view")
        if not args.get("trigger_id"):
            return {"ok": False, "error": "invalid_trigger_id"}
        if not isinstance(view, dict) or view.get("type") != "modal":
            return {"ok": False, "error": "invalid_arguments"}
        opened = {"id": f"V{uuid.uuid4().hex[:10].upper()}", "team_id": self.team_id, **view}
        return {"ok": True, "view": opened}

    def _views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        view = args.get("view")
        if not args.get("user_id"):
            return {"ok": False, "error": "user_not_found"}
        if not isinstance(view, dict) or view.get("type") != "home":
            return {"ok": False, "error": "invalid_arguments"}
        return {"ok": True, "view": {"id": f"V{uuid.uuid4().hex[:10].upper()}", **view}}

    def _usergroups_list(self, args: dict[str, Any]) -> dict[str, Any]:
        """The workspace's user groups; their members only with ``include_users``."""
        with_users = str(args.get("include_users", "")).lower() in ("1", "true")
        groups = [
            {k: v for k, v in g.items() if k != "users" or with_users}
            for g in self._usergroups.values()
        ]
        return {"ok": True, "usergroups": copy.deepcopy(groups)}

    def _usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        group = self._usergroups.get(str(args.get("usergroup") or ""))
        if group is None:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(group["users"])}

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.socket_mode is None:
            return {"ok": False, "error": "invalid_auth"}
        ticket = uuid.uuid4()
        return {"ok": True, "url": f"{self.socket_mode.url}?ticket={ticket}&app_id={APP_ID}"}


class _Handler(BaseHTTPRequestHandler):
    owner: FakeSlack
    server_version = "FakeSlack/1.0"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        args = _parse_args(raw, self.headers.get("Content-Type") or "")
        query = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        self._answer({**query, **args})

    def do_GET(self) -> None:
        self._answer(dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True)))

    def _answer(self, args: dict[str, Any]) -> None:
        method = urlsplit(self.path).path.rstrip("/").rsplit("/", 1)[-1]
        for name in _JSON_ARGS:
            if isinstance(args.get(name), str):
                # Not JSON: kept as sent (Slack would answer invalid_blocks).
                with contextlib.suppress(ValueError):
                    args[name] = json.loads(args[name])
        auth = self.headers.get("Authorization") or ""
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        token = token or str(args.pop("token", "") or "")
        status, body, headers = self.owner.handle(method, args, token)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the calls are recorded on the fake instead."""


def _parse_args(raw: bytes, content_type: str) -> dict[str, Any]:
    text = raw.decode("utf-8", errors="replace")
    if content_type.split(";")[0].strip() == "application/json":
        try:
            parsed = json.loads(text) if text else {}
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return dict(parse_qsl(text, keep_blank_values=True))


# -- signed requests, as Slack sends them to the bot ---------------------------


@dataclass(frozen=True)
class SignedRequest:
    """A body and the headers that sign it, ready to POST to /slack/events."""

    body: bytes
    headers: dict[str, str]


def sign(
    body: bytes,
    secret: str = SIGNING_SECRET,
    timestamp: int | None = None,
    content_type: str = "application/x-www-form-urlencoded",
) -> dict[str, str]:
    """Slack's headers for ``body``: ``v0=hmac_sha256(secret, "v0:{ts}:{body}")``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256)
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest.hexdigest()}",
    }


_trigger = itertools.count(1)


def _trigger_id() -> str:
    return f"{next(_trigger)}.{int(time.time())}.{uuid.uuid4().hex[:32]}"


def slash_command(
    text: str,
    *,
    secret: str = SIGNING_SECRET,
    command: str = "/molt",
    user_id: str = "U0ANA",
    user_name: str = "ana",
    channel_id: str = "C0DEPLOYS",
    channel_name: str = "deploys",
    timestamp: int | None = None,
) -> SignedRequest:
    """A signed slash command, form-encoded like Slack's."""
    fields = {
        "token": "legacy-verification-token",
        "team_id": TEAM_ID,
        "team_domain": TEAM_DOMAIN,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": APP_ID,
        "is_enterprise_install": "false",
        "response_url": f"https://hooks.slack.com/commands/{TEAM_ID}/1/{uuid.uuid4().hex}",
        "trigger_id": _trigger_id(),
    }
    body = urlencode(fields).encode()
    return SignedRequest(body, sign(body, secret, timestamp))


def block_action(
    action_id: str,
    value: str,
    *,
    secret: str = SIGNING_SECRET,
    user_id: str = "U0ANA",
    user_name: str = "ana",
    channel_id: str = "C0DEPLOYS",
    channel_name: str = "deploys",
    message_ts: str = "1700000000.000100",
    timestamp: int | None = None,
) -> SignedRequest:
    """A signed click on a button, a ``payload=`` form field holding JSON like Slack's."""
    action_ts = f"{time.time():.6f}"
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": TEAM_ID},
        "api_app_id": APP_ID,
        "token": "legacy-verification-token",
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": False,
        },
        "trigger_id": _trigger_id(),
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": channel_name},
        "message": {
            "type": "message",
            "subtype": "bot_message",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "ts": message_ts,
            "text": "📋 Plan ready",
        },
        "state": {"values": {}},
        "response_url": f"https://hooks.slack.com/actions/{TEAM_ID}/1/{uuid.uuid4().hex}",
        "actions": [
            {
                "action_id": action_id,
                "block_id": "molt",
                "text": {"type": "plain_text", "text": action_id, "emoji": True},
                "value": value,
                "type": "button",
                "action_ts": action_ts,
            }
        ],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    return SignedRequest(body, sign(body, secret, timestamp))


def view_submission(
    callback_id: str,
    private_metadata: str,
    values: dict[str, Any],
    *,
    secret: str = SIGNING_SECRET,
    user_id: str = "U0ANA",
    user_name: str = "ana",
    timestamp: int | None = None,
) -> SignedRequest:
    """A signed modal submission: ``payload=`` JSON with the view and its state."""
    payload: dict[str, Any] = {
        "type": "view_submission",
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": TEAM_ID},
        "api_app_id": APP_ID,
        "token": "legacy-verification-token",
        "trigger_id": _trigger_id(),
        "view": {
            "id": f"V{uuid.uuid4().hex[:10].upper()}",
            "team_id": TEAM_ID,
            "type": "modal",
            "callback_id": callback_id,
            "private_metadata": private_metadata,
            "state": {"values": values},
            "hash": uuid.uuid4().hex[:20],
            "app_id": APP_ID,
            "bot_id": BOT_ID,
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    return SignedRequest(body, sign(body, secret, timestamp))


def signed_event(
    body: dict[str, Any], *, secret: str = SIGNING_SECRET, retry: int = 0
) -> SignedRequest:
    """A signed Events API delivery; ``retry`` > 0 marks it as Slack's redelivery."""
    raw = json.dumps(body).encode()
    headers = sign(raw, secret, content_type="application/json")
    if retry:
        headers["X-Slack-Retry-Num"] = str(retry)
        headers["X-Slack-Retry-Reason"] = "http_timeout"
    return SignedRequest(raw, headers)


class FakeSocketMode(AsyncFake):
    """Slack's Socket Mode end on 127.0.0.1: sends envelopes, expects acks by envelope id.

    Like Slack, it keeps sending an envelope that was not acked: on every new connection,
    with ``retry_attempt`` counting up. ``drop()`` closes the connection, as Slack does
    when it refreshes one; the client must open a new one.
    """

    name = "fake Socket Mode"

    def __init__(self) -> None:
        super().__init__()
        self.acks: dict[str, dict[str, Any]] = {}
        self.connections = 0
        self._pending: dict[str, dict[str, Any]] = {}
        self._socket: Any = None
        self._changed = threading.Condition()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/link/"

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/link/", self._session)

    async def closing(self) -> None:
        if self._socket is not None and not self._socket.closed:
            await self._socket.close()

    async def _session(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True, heartbeat=None)
        await socket.prepare(request)
        with self._changed:
            self.connections += 1
            self._socket = socket
            resend = list(self._pending.values())
            self._changed.notify_all()
        hello = {
            "type": "hello",
            "num_connections": 1,
            "debug_info": {"host": "fake-socket-mode", "approximate_connection_time": 3600},
            "connection_info": {"app_id": APP_ID},
        }
        await socket.send_json(hello)
        for envelope in resend:
            envelope["retry_attempt"] = int(envelope.get("retry_attempt", 0)) + 1
            envelope["retry_reason"] = "timeout"
            await socket.send_json(envelope)
        async for message in socket:
            if message.type != WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            envelope_id = str(data.get("envelope_id") or "")
            with self._changed:
                if envelope_id and self._pending.pop(envelope_id, None) is not None:
                    self.acks[envelope_id] = data
                    self._changed.notify_all()
        with self._changed:
            if self._socket is socket:
                self._socket = None
            self._changed.notify_all()
        return socket

    def send(self, kind: str, payload: dict[str, Any]) -> str:
        """Send an envelope (now, or on the next connection); returns its id."""
        envelope_id = str(uuid.uuid4())
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "accepts_response_payload": kind != "events_api",
            "payload": payload,
            "retry_attempt": 0,
            "retry_reason": "",
        }
        with self._changed:
            self._pending[envelope_id] = envelope
            socket = self._socket
        if socket is not None:
            self.on_loop(socket.send_json(envelope))
        return envelope_id

    def drop(self) -> None:
        """Close the connection the way Slack does before it rotates one."""
        with self._changed:
            socket = self._socket
        if socket is not None:
            self.on_loop(socket.send_json({"type": "disconnect", "reason": "refresh_requested"}))
            self.on_loop(socket.close())

    def wait_connected(self, count: int = 1, timeout: float = 30) -> None:
        """Wait until ``count`` connections were made in all and one is open."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.connections < count or self._socket is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.connections} Socket Mode connections, not {count}")
                self._changed.wait(left)

    def wait_ack(self, envelope_id: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while envelope_id not in self.acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"envelope {envelope_id} was not acked")
                self._changed.wait(left)
            return self.acks[envelope_id]


def command_payload(text: str, *, user_id: str = "U0ANA", user_name: str = "ana") -> dict[str, Any]:
    """A slash command as Socket Mode carries it (the HTTP form's fields, as JSON)."""
    body = slash_command(text, user_id=user_id, user_name=user_name).body.decode()
    return dict(parse_qsl(body))


def action_payload(
    action_id: str, value: str, *, user_id: str = "U0ANA", user_name: str = "ana"
) -> dict[str, Any]:
    """A button click as Socket Mode carries it."""
    body = block_action(action_id, value, user_id=user_id, user_name=user_name).body.decode()
    return dict(json.loads(dict(parse_qsl(body))["payload"]))


def event_callback(event: dict[str, Any], *, event_id: str = "") -> dict[str, Any]:
    """An Events API ``event_callback`` body, as HTTP or Socket Mode carries it."""
    return {
        "token": "legacy-verification-token",
        "team_id": TEAM_ID,
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": int(time.time()),
        "authorizations": [
            {
                "team_id": TEAM_ID,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
    }
