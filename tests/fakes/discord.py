"""A Discord on loopback that a real discord.py client connects to, and the people in it.

REST on ``fake.api_url`` (point ``discord.http.Route.BASE`` at it): the login calls, the
gateway URL, application commands, channel messages, direct messages, interaction callbacks
and follow-ups, each answered the way Discord documents it (``Authorization: Bot`` tokens,
error bodies with codes, 429 with ``retry_after``), every call recorded.

The gateway on ``fake.gateway_url`` speaks v10 JSON: HELLO, IDENTIFY → READY (with
``session_id`` and ``resume_gateway_url``) and GUILD_CREATE, HEARTBEAT → HEARTBEAT_ACK,
RESUME → the events missed meanwhile and RESUMED (or INVALID_SESSION), close 4004 for a bad
token and 4014 for a privileged intent the application may not use. Events dispatched
while the client is disconnected wait in its session, as Discord keeps them for a resume.

People speak through ``say`` (MESSAGE_CREATE), ``slash`` (an application command),
``click`` (a button on a message the bot posted) and ``submit`` (a modal), with
INTERACTION_CREATE payloads shaped like Discord's documentation.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, TypeVar

from aiohttp import WSMsgType, web

from tests.fakes.loopback import AsyncFake

TOKEN = "molt-test-discord-bot-token"
APPLICATION_ID = "1300000000000000001"
BOT_USER_ID = "1300000000000000002"
GUILD_ID = "1300000000000000010"
CHANNEL_ID = "1300000000000000020"  # #deploys
OTHER_CHANNEL_ID = "1300000000000000021"  # #random
OWNER_ID = "1300000000000000030"
ROLE_DEPLOYERS = "1300000000000000040"
ROLE_APPROVERS = "1300000000000000041"
ROLE_VISITORS = "1300000000000000042"
#: Discord's epoch for snowflakes (2015-01-01).
EPOCH_MS = 1_420_070_400_000
MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | MESSAGE_CONTENT
HEARTBEAT_MS = 41_250
#: Permissions of people in the test guild (view, send, read history, use commands...).
MEMBER_PERMISSIONS = "2248473465835073"
EPHEMERAL = 1 << 6
T = TypeVar("T")


@dataclass(frozen=True)
class Person:
    """Someone in the test guild: a user id, a name and role ids."""

    id: str
    name: str
    roles: tuple[str, ...] = ()

    def user(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.name,
            "discriminator": "0",
            "global_name": self.name.title(),
            "avatar": None,
            "public_flags": 0,
        }

    def member(self, *, with_user: bool) -> dict[str, Any]:
        member: dict[str, Any] = {
            "roles": list(self.roles),
            "joined_at": _iso(time.time() - 86400),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
            "avatar": None,
            "premium_since": None,
            "pending": False,
        }
        if with_user:
            member["user"] = self.user()
            member["permissions"] = MEMBER_PERMISSIONS
        return member


@dataclass(frozen=True)
class Call:
    """One REST request the fake answered."""

    method: str
    path: str  # after the API base, e.g. /channels/123/messages
    route: str  # the path with ids as placeholders, e.g. POST /channels/{channel}/messages
    body: Any
    query: dict[str, str]
    status: int
    response: Any
    at: float = field(default_factory=time.time)


@dataclass
class Interaction:
    """An interaction the fake dispatched, and how the bot answered it."""

    id: str
    token: str
    type: int
    user: str
    channel: str
    callback: dict[str, Any] | None = None  # the body of the first callback
    original: dict[str, Any] | None = None  # the response message, once there is one
    followups: list[dict[str, Any]] = field(default_factory=list)


class _Session:
    def __init__(self, session_id: str) -> None:
        self.id = session_id
        self.seq = 0
        self.events: list[dict[str, Any]] = []
        self.socket: web.WebSocketResponse | None = None


class FakeDiscord(AsyncFake):
    """Discord's REST API and gateway on 127.0.0.1, port 0; a context manager."""

    name = "fake Discord"

    def __init__(
        self,
        token: str = TOKEN,
        *,
        privileged_intents: bool = True,
        channels: tuple[str, ...] = (CHANNEL_ID, OTHER_CHANNEL_ID),
    ) -> None:
        super().__init__()
        self.token = token
        self.privileged_intents = privileged_intents
        self.channels = channels
        self.forbidden_channels: set[str] = set()
        self._direct: dict[str, str] = {}  # DM channel id -> the person's user id
        self._members: dict[str, Person] = {}  # the guild's members by user id
        self._changed = threading.Condition()
        self._calls: list[Call] = []
        self._messages: dict[str, dict[str, Any]] = {}
        self._interactions: dict[str, Interaction] = {}
        self._commands: list[dict[str, Any]] = []
        self._gateway: list[dict[str, Any]] = []  # what the gateway received and sent
        self._sessions: dict[str, _Session] = {}
        self._session: _Session | None = None
        self._held = False
        self._refused = False  # a connection was refused since the gateway was held
        self._closing = False
        self._limits: list[tuple[Callable[[str], bool], float]] = []
        self._failures: list[tuple[str, int]] = []  # (route, status) to answer next
        self._ids = itertools.count(1)

    # -- life cycle --------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/gateway", self._gateway_socket)
        app.router.add_get("/gateway-resume", self._gateway_socket)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)

    async def closing(self) -> None:
        self._closing = True
        for session in self._sessions.values():
            if session.socket is not None and not session.socket.closed:
                await session.socket.close(code=1001)

    @property
    def api_url(self) -> str:
        """What ``discord.http.Route.BASE`` (DISCORD_API_URL) points at."""
        return f"http://127.0.0.1:{self._port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/gateway"

    # -- what tests look at --------------------------------------------------

    def calls(self, route: str | None = None) -> list[Call]:
        with self._changed:
            return [c for c in self._calls if route is None or c.route == route]

    def wait_for(self, predicate: Callable[[Call], bool], timeout: float = 30) -> Call:
        """The first recorded call matching ``predicate``, waiting up to ``timeout`` s."""
        found = self._wait(lambda: next((c for c in self._calls if predicate(c)), None), timeout)
        if found is None:
            routes = ", ".join(c.route for c in self.calls()) or "none"
            raise TimeoutError(f"no matching Discord call within {timeout} s (calls: {routes})")
        return found

    def message(self, message_id: str) -> dict[str, Any]:
        """A message as it stands now (after edits)."""
        with self._changed:
            return copy.deepcopy(self._messages[message_id])

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        with self._changed:
            return [
                copy.deepcopy(m)
                for m in self._messages.values()
                if channel is None or m["channel_id"] == channel
            ]

    def interaction(self, interaction_id: str) -> Interaction:
        with self._changed:
            return copy.deepcopy(self._interactions[interaction_id])

    def wait_interaction(
        self, interaction_id: str, predicate: Callable[[Interaction], bool], timeout: float = 30
    ) -> Interaction:
        def check() -> Interaction | None:
            found = self._interactions[interaction_id]
            return copy.deepcopy(found) if predicate(found) else None

        result = self._wait(check, timeout)
        if result is None:
            raise TimeoutError(f"interaction {interaction_id} not answered as expected")
        return result

    def commands(self) -> list[dict[str, Any]]:
        """The application's registered global commands."""
        with self._changed:
            return copy.deepcopy(self._commands)

    def gateway_log(self, op: int | None = None) -> list[dict[str, Any]]:
        """Gateway payloads: ``{"dir": "in"|"out", "op", "t", "d", "path"}``."""
        with self._changed:
            return [copy.deepcopy(g) for g in self._gateway if op is None or g["op"] == op]

    def wait_gateway(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict[str, Any]:
        found = self._wait(lambda: next((g for g in self._gateway if predicate(g)), None), timeout)
        if found is None:
            raise TimeoutError("no matching gateway payload")
        return copy.deepcopy(found)

    def wait_connected(self, timeout: float = 30) -> None:
        """Until a client is identified (or resumed) on a live connection."""
        if self._wait(lambda: self._live() or None, timeout) is None:
            raise TimeoutError("no Discord client connected to the gateway")

    def _live(self) -> bool:
        session = self._session
        return session is not None and session.socket is not None and not session.socket.closed

    def _wait(self, check: Callable[[], T | None], timeout: float) -> T | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = check()
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, 0.5))

    # -- what tests arrange ----------------------------------------------------

    def rate_limit(
        self, count: int, retry_after: float = 0.5, where: Callable[[str], bool] | None = None
    ) -> None:
        """Answer the next ``count`` REST calls whose route ``where`` accepts with a 429."""
        with self._changed:
            for _ in range(count):
                self._limits.append((where or (lambda _route: True), retry_after))

    def fail_next(self, route: str, status: int = 503, count: int = 1) -> None:
        """Answer the next ``count`` calls of ``route`` (``GET /guilds/{id}/members/{id}``)
        with ``status``, as Discord does when it has trouble of its own."""
        with self._changed:
            self._failures.extend([(route, status)] * count)

    def drop_gateway(self, *, hold: bool = False) -> None:
        """Close the client's gateway connection (code 4000): it resumes. ``hold`` refuses
        the next connection and keeps those after it waiting until ``release_gateway``, as
        an outage would: the client's try that meets its end gets through at once, not a
        random backoff later."""

        async def drop() -> None:
            with self._changed:
                self._held = hold
                self._refused = False
            session = self._session
            if session is not None and session.socket is not None:
                await session.socket.close(code=4000, message=b"fake outage")

        self.on_loop(drop())

    def forget_sessions(self) -> None:
        """Sessions can no longer be resumed: a RESUME gets INVALID_SESSION."""
        with self._changed:
            self._sessions.clear()

    def delete_message(self, message_id: str) -> None:
        """Someone deleted a message."""
        with self._changed:
            del self._messages[message_id]

    def direct_channel(self, user_id: str) -> str | None:
        """The DM channel the bot opened with ``user_id``, if any."""
        with self._changed:
            return next((c for c, u in self._direct.items() if u == user_id), None)

    def release_gateway(self) -> None:
        with self._changed:
            self._held = False
            self._changed.notify_all()

    # -- people ----------------------------------------------------------------

    def join(self, who: Person) -> None:
        """``who`` is in the guild with their roles as they are now (what GET
        /guilds/{guild}/members/{user} answers); whoever writes or clicks has joined."""
        with self._changed:
            self._members[who.id] = who

    def say(self, who: Person, content: str, channel: str = CHANNEL_ID) -> str:
        """``who`` writes ``content`` in ``channel``; returns the message id."""
        message = self._message_payload(
            channel,
            who.user(),
            content=content,
        )
        message["guild_id"] = GUILD_ID
        message["member"] = who.member(with_user=False)
        self.join(who)
        self.on_loop(self._store_and_dispatch("MESSAGE_CREATE", message))
        return str(message["id"])

    def slash(self, who: Person, text: str = "", channel: str = CHANNEL_ID) -> str:
        """``who`` runs ``/molt text``; returns the interaction id."""
        command = next((c for c in self.commands() if c["name"] == "molt"), None)
        if command is None:
            raise AssertionError("the bot has not registered /molt")
        options = [{"name": "command", "type": 3, "value": text}] if text else []
        data = {"id": command["id"], "name": "molt", "type": 1, "options": options}
        return self._interact(2, who, channel, data)

    def click(self, who: Person, message_id: str, custom_id: str) -> str:
        """``who`` presses the button ``custom_id`` on a message the bot posted."""
        message = self.message(message_id)
        ids = [
            c.get("custom_id")
            for row in message.get("components") or []
            for c in row.get("components") or []
        ]
        if custom_id not in ids:
            raise AssertionError(f"no button {custom_id!r} on message {message_id} (has {ids})")
        data = {"custom_id": custom_id, "component_type": 2}
        return self._interact(3, who, message["channel_id"], data, message=message)

    def submit(
        self, who: Person, custom_id: str, values: dict[str, str], message_id: str | None = None
    ) -> str:
        """``who`` submits the modal ``custom_id`` with text inputs ``values``."""
        rows = [
            {"type": 1, "components": [{"type": 4, "custom_id": key, "value": value}]}
            for key, value in values.items()
        ]
        data = {"custom_id": custom_id, "components": rows}
        message = self.message(message_id) if message_id else None
        channel = message["channel_id"] if message else CHANNEL_ID
        return self._interact(5, who, channel, data, message=message)

    def _interact(
        self,
        kind: int,
        who: Person,
        channel: str,
        data: dict[str, Any],
        message: dict[str, Any] | None = None,
    ) -> str:
        self.join(who)
        interaction_id = self._snowflake()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)
        payload: dict[str, Any] = {
            "id": interaction_id,
            "application_id": APPLICATION_ID,
            "type": kind,
            "data": data,
            "guild_id": GUILD_ID,
            "guild": {"id": GUILD_ID, "locale": "en-US", "features": []},
            "channel_id": channel,
            "channel": self._channel(channel),
            "member": who.member(with_user=True),
            "token": token,
            "version": 1,
            "app_permissions": MEMBER_PERMISSIONS,
            "locale": "en-GB",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": GUILD_ID},
            "context": 0,
            "attachment_size_limit": 26_214_400,
        }
        if message is not None:
            payload["message"] = message
        with self._changed:
            self._interactions[interaction_id] = Interaction(
                interaction_id, token, kind, who.id, channel
            )
        self.on_loop(self._dispatch("INTERACTION_CREATE", payload))
        return interaction_id

    # -- REST ------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        query = dict(request.query)
        route = f"{request.method} {_template(path)}"
        with self._changed:
            status, answer, headers = self._answer(request, path, route, body, query)
            self._calls.append(Call(request.method, path, route, body, query, status, answer))
            self._changed.notify_all()
        if status == 204:
            return web.Response(status=204, headers=headers)
        # Exactly this content type, as Discord sends it: discord.py compares it verbatim.
        return web.Response(
            body=json.dumps(answer).encode(),
            status=status,
            headers={**headers, "Content-Type": "application/json"},
        )

    def _answer(
        self, request: web.Request, path: str, route: str, body: Any, query: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        for index, (where, retry_after) in enumerate(self._limits):
            if where(route):
                del self._limits[index]
                headers = {
                    "Retry-After": str(max(1, round(retry_after))),
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                    "X-RateLimit-Bucket": "fake-bucket",
                    "X-RateLimit-Scope": "user",
                    "Via": "1.1 google",
                }
                answer = {
                    "message": "You are being rate limited.",
                    "retry_after": retry_after,
                    "global": False,
                }
                return 429, answer, headers
        for index, (failing, status) in enumerate(self._failures):
            if failing == route:
                del self._failures[index]
                return status, {"message": HTTPStatus(status).phrase, "code": 0}, {}
        webhook = path.startswith(("/interactions/", "/webhooks/"))
        if not webhook and request.headers.get("Authorization") != f"Bot {self.token}":
            return 401, {"message": "401: Unauthorized", "code": 0}, {}
        parts = path.strip("/").split("/")
        handlers: dict[str, Callable[..., tuple[int, Any]]] = {
            "GET /gateway/bot": self._gateway_bot,
            "GET /gateway": self._gateway_bot,
            "GET /users/@me": lambda *_: (200, self._bot_user()),
            "GET /oauth2/applications/@me": lambda *_: (200, self._application()),
            "GET /applications/{id}/commands": lambda *_: (200, self._commands),
            "PUT /applications/{id}/commands": self._put_commands,
            "POST /channels/{id}/messages": self._create_message,
            "PATCH /channels/{id}/messages/{id}": self._edit_message,
            "GET /channels/{id}/messages/{id}": self._get_message,
            "GET /channels/{id}": self._get_channel,
            "GET /guilds/{id}/members/{id}": self._get_member,
            "POST /users/@me/channels": self._open_dm,
            "POST /interactions/{id}/{token}/callback": self._callback,
            "POST /webhooks/{id}/{token}": self._followup,
            "PATCH /webhooks/{id}/{token}/messages/@original": self._edit_original,
            "PATCH /webhooks/{id}/{token}/messages/{id}": self._edit_followup,
        }
        handler = handlers.get(route)
        if handler is None:
            return 404, {"message": "404: Not Found", "code": 0}, {}
        status, answer = handler(parts, body, query)
        return status, answer, {}

    def _get_channel(self, parts: list[str], *_: Any) -> tuple[int, Any]:
        """A guild channel (with its ``guild_id``) or a direct message (without one)."""
        channel = parts[1]
        if channel in self._direct:
            return 200, {"id": channel, "type": 1, "last_message_id": None, "flags": 0}
        if channel not in self.channels:
            return 404, {"message": "Unknown Channel", "code": 10003}
        return 200, self._channel(channel)

    def _get_member(self, parts: list[str], *_: Any) -> tuple[int, Any]:
        """A member of the guild, with the role ids they hold now; 404 for anyone else."""
        person = self._members.get(parts[3]) if parts[1] == GUILD_ID else None
        if person is None:
            return 404, {"message": "Unknown Member", "code": 10007}
        return 200, person.member(with_user=True)

    def _gateway_bot(self, *_: Any) -> tuple[int, Any]:
        return 200, {
            "url": self.gateway_url,
            "shards": 1,
            "session_start_limit": {
                "total": 1000,
                "remaining": 999,
                "reset_after": 14_400_000,
                "max_concurrency": 1,
            },
        }

    def _put_commands(self, parts: list[str], body: Any, _: Any) -> tuple[int, Any]:
        if parts[1] != APPLICATION_ID or not isinstance(body, list):
            return 400, {"message": "Invalid Form Body", "code": 50035}
        commands = []
        for command in body:
            known = next((c for c in self._commands if c["name"] == command.get("name")), None)
            commands.append(
                {
                    "id": known["id"] if known else self._snowflake(),
                    "application_id": APPLICATION_ID,
                    "version": self._snowflake(),
                    "type": 1,
                    "default_member_permissions": None,
                    "nsfw": False,
                    **command,
                }
            )
        self._commands = commands
        return 200, commands

    def _create_message(self, parts: list[str], body: Any, _: Any) -> tuple[int, Any]:
        channel = parts[1]
        if channel in self.forbidden_channels:
            return 403, {"message": "Missing Permissions", "code": 50013}
        if channel not in self.channels and channel not in self._direct:
            return 404, {"message": "Unknown Channel", "code": 10003}
        problem = _invalid_message(body)
        if problem:
            return 400, {"message": "Invalid Form Body", "code": 50035, "errors": problem}
        message = self._message_payload(
            channel,
            self._bot_user(),
            content=body.get("content") or "",
            embeds=body.get("embeds") or [],
            components=body.get("components") or [],
            flags=int(body.get("flags") or 0),
        )
        reference = body.get("message_reference")
        if reference:
            message["message_reference"] = reference
            message["type"] = 19
        message["allowed_mentions"] = body.get("allowed_mentions")
        self._messages[message["id"]] = message
        return 200, _public(message)

    def _edit_message(self, parts: list[str], body: Any, _: Any) -> tuple[int, Any]:
        channel, message_id = parts[1], parts[3]
        stored = self._messages.get(message_id)
        if stored is None or stored["channel_id"] != channel:
            return 404, {"message": "Unknown Message", "code": 10008}
        problem = _invalid_message(body, editing=True)
        if problem:
            return 400, {"message": "Invalid Form Body", "code": 50035, "errors": problem}
        _apply_edit(stored, body)
        return 200, _public(stored)

    def _get_message(self, parts: list[str], *_: Any) -> tuple[int, Any]:
        stored = self._messages.get(parts[3])
        if stored is None or stored["channel_id"] != parts[1]:
            return 404, {"message": "Unknown Message", "code": 10008}
        return 200, _public(stored)

    def _open_dm(self, parts: list[str], body: Any, _: Any) -> tuple[int, Any]:
        recipient = str((body or {}).get("recipient_id") or "")
        if not recipient:
            return 400, {"message": "Invalid Form Body", "code": 50035}
        person = Person(recipient, f"user{recipient[-4:]}")
        channel = next((c for c, u in self._direct.items() if u == recipient), None)
        if channel is None:
            channel = self._snowflake()
            self._direct[channel] = recipient
        return 200, {
            "id": channel,
            "type": 1,
            "last_message_id": None,
            "flags": 0,
            "recipients": [person.user()],
        }

    def _callback(self, parts: list[str], body: Any, query: dict[str, str]) -> tuple[int, Any]:
        interaction = self._interactions.get(parts[1])
        if interaction is None or interaction.token != parts[2]:
            return 404, {"message": "Unknown interaction", "code": 10062}
        if interaction.callback is not None:
            return 400, {"message": "Interaction has already been acknowledged.", "code": 40060}
        kind = int((body or {}).get("type") or 0)
        allowed = {2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 5: {4, 5, 6, 7}}.get(interaction.type, set())
        if kind not in allowed:
            return 400, {"message": "Invalid interaction response type", "code": 50035}
        interaction.callback = body
        data = (body or {}).get("data") or {}
        flags = int(data.get("flags") or 0) if kind in (4, 5) else 0
        resource: dict[str, Any] = {"type": kind}
        if kind == 4:
            message = self._message_payload(
                interaction.channel,
                self._bot_user(),
                content=data.get("content") or "",
                embeds=data.get("embeds") or [],
                components=data.get("components") or [],
                flags=flags,
            )
            interaction.original = message
            resource["message"] = _public(message)
        answer = {
            "interaction": {
                "id": interaction.id,
                "type": interaction.type,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(flags & EPHEMERAL),
            },
            "resource": resource,
        }
        if query.get("with_response") not in ("1", "true", "True"):
            return 204, None
        return 200, answer

    def _by_token(self, parts: list[str]) -> Interaction | None:
        if parts[1] != APPLICATION_ID:
            return None
        return next((i for i in self._interactions.values() if i.token == parts[2]), None)

    def _followup(self, parts: list[str], body: Any, query: dict[str, str]) -> tuple[int, Any]:
        interaction = self._by_token(parts)
        if interaction is None:
            return 404, {"message": "Unknown Webhook", "code": 10015}
        if interaction.callback is None:
            return 400, {"message": "The interaction has not been acknowledged", "code": 40060}
        problem = _invalid_message(body)
        if problem:
            return 400, {"message": "Invalid Form Body", "code": 50035, "errors": problem}
        message = self._message_payload(
            interaction.channel,
            self._bot_user(),
            content=body.get("content") or "",
            embeds=body.get("embeds") or [],
            components=body.get("components") or [],
            flags=int(body.get("flags") or 0),
        )
        message["webhook_id"] = APPLICATION_ID
        loading = interaction.callback.get("type") == 5 and interaction.original is None
        if loading:
            # The first follow-up of a deferred answer replaces its "thinking" message,
            # which keeps the ephemeral flag of the deferral.
            deferred = int(((interaction.callback.get("data") or {}).get("flags")) or 0)
            message["flags"] = (message["flags"] & ~EPHEMERAL) | (deferred & EPHEMERAL)
            interaction.original = message
        interaction.followups.append(message)
        if query.get("wait") in ("true", "1", "True"):
            return 200, _public(message)
        return 204, None

    def _edit_original(self, parts: list[str], body: Any, _: Any) -> tuple[int, Any]:
        interaction = self._by_token(parts)
        if interaction is None or interaction.callback is None:
            return 404, {"message": "Unknown Webhook", "code": 10015}
        if interaction.original is None:
            interaction.original = self._message_payload(interaction.channel, self._bot_user())
        _apply_edit(interaction.original, body or {})
        return 200, _public(interaction.original)

    def _edit_followup(self, parts: list[str], body: Any, _: Any) -> tuple[int, Any]:
        interaction = self._by_token(parts)
        found = next(
            (m for m in interaction.followups if m["id"] == parts[4]) if interaction else iter(()),
            None,
        )
        if found is None:
            return 404, {"message": "Unknown Message", "code": 10008}
        _apply_edit(found, body or {})
        return 200, _public(found)

    # -- the gateway -----------------------------------------------------------

    async def _gateway_socket(self, request: web.Request) -> web.StreamResponse:
        while not self._closing:
            with self._changed:
                held, refused = self._held, self._refused
                self._refused = refused or held
            if not held:
                break
            if not refused:
                return web.Response(status=503, text="gateway unavailable")
            await asyncio.sleep(0.02)
        if self._closing:
            return web.Response(status=503, text="gateway unavailable")
        if request.query.get("v") != "10" or request.query.get("encoding") != "json":
            return web.Response(status=400, text="expected v=10&encoding=json")
        socket = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await socket.prepare(request)
        await self._send(socket, {"op": 10, "d": {"heartbeat_interval": HEARTBEAT_MS}}, request)
        session: _Session | None = None
        try:
            async for frame in socket:
                if frame.type is not WSMsgType.TEXT:
                    continue
                payload = json.loads(frame.data)
                op, data = payload.get("op"), payload.get("d")
                self._log("in", payload, request.path)
                if op == 1:
                    await self._send(socket, {"op": 11}, request)
                elif op == 2:
                    session = await self._identify(socket, data, request)
                elif op == 6:
                    session = await self._resume(socket, data, request)
        finally:
            if session is not None and session.socket is socket:
                session.socket = None
            with self._changed:
                self._changed.notify_all()
        return socket

    async def _identify(
        self, socket: web.WebSocketResponse, data: dict[str, Any], request: web.Request
    ) -> _Session | None:
        if data.get("token") != self.token:
            await socket.close(code=4004, message=b"Authentication failed.")
            return None
        intents = int(data.get("intents") or 0)
        if intents & PRIVILEGED_INTENTS and not self.privileged_intents:
            await socket.close(code=4014, message=b"Disallowed intent(s).")
            return None
        session = _Session(secrets.token_hex(16))
        with self._changed:
            self._sessions[session.id] = session
            self._session = session
        session.socket = socket
        resume_url = f"ws://127.0.0.1:{self._port}/gateway-resume"
        ready = {
            "v": 10,
            "user": self._bot_user(),
            "guilds": [{"id": GUILD_ID, "unavailable": True}],
            "session_id": session.id,
            "resume_gateway_url": resume_url,
            "shard": [0, 1],
            "application": {"id": APPLICATION_ID, "flags": 1 << 19},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "geo_ordered_rtc_regions": ["rotterdam"],
            "guild_join_requests": [],
            "session_type": "normal",
            "auth_session_id_hash": "",
            "_trace": ['["fake-gateway",{"micros":0}]'],
        }
        await self._dispatch("READY", ready, session)
        await self._dispatch("GUILD_CREATE", self._guild(), session)
        with self._changed:
            self._changed.notify_all()
        return session

    async def _resume(
        self, socket: web.WebSocketResponse, data: dict[str, Any], request: web.Request
    ) -> _Session | None:
        session = self._sessions.get(str(data.get("session_id")))
        if session is None or data.get("token") != self.token:
            await self._send(socket, {"op": 9, "d": False}, request)
            return None
        seq = int(data.get("seq") or 0)
        session.socket = socket
        with self._changed:
            self._session = session
        for event in session.events:
            if event["s"] > seq:
                await self._send(socket, event, request)
        await self._dispatch("RESUMED", {"_trace": ['["fake-gateway",{"micros":0}]']}, session)
        with self._changed:
            self._changed.notify_all()
        return session

    async def _dispatch(self, kind: str, data: Any, session: _Session | None = None) -> None:
        """Send a dispatch on the session, or keep it there for a resume."""
        session = session or self._session
        if session is None:
            session = await self._wait_session()
        session.seq += 1
        event = {"op": 0, "t": kind, "s": session.seq, "d": data}
        session.events.append(event)
        del session.events[:-1000]
        socket = session.socket
        if socket is not None and not socket.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._send(socket, event, None)
                return
        self._log("kept", event, "")

    async def _wait_session(self) -> _Session:
        for _ in range(600):
            if self._session is not None:
                return self._session
            await asyncio.sleep(0.05)
        raise TimeoutError("no client ever identified")

    async def _store_and_dispatch(self, kind: str, message: dict[str, Any]) -> None:
        with self._changed:
            self._messages[message["id"]] = message
        await self._dispatch(kind, message)

    async def _send(
        self, socket: web.WebSocketResponse, payload: dict[str, Any], request: web.Request | None
    ) -> None:
        await socket.send_str(json.dumps(payload))
        self._log("out", payload, request.path if request else "")

    def _log(self, direction: str, payload: dict[str, Any], path: str) -> None:
        with self._changed:
            self._gateway.append(
                {
                    "dir": direction,
                    "op": payload.get("op"),
                    "t": payload.get("t"),
                    "s": payload.get("s"),
                    "d": payload.get("d"),
                    "path": path,
                }
            )
            self._changed.notify_all()

    # -- payloads ----------------------------------------------------------------

    def _snowflake(self) -> str:
        now = int(time.time() * 1000) - EPOCH_MS
        return str((now << 22) | (next(self._ids) & 0x3FFFFF))

    def _bot_user(self) -> dict[str, Any]:
        return {
            "id": BOT_USER_ID,
            "username": "molt",
            "discriminator": "0",
            "global_name": "Molt",
            "avatar": None,
            "bot": True,
            "verified": True,
            "mfa_enabled": False,
            "flags": 0,
            "public_flags": 0,
            "email": None,
        }

    def _application(self) -> dict[str, Any]:
        owner = Person(OWNER_ID, "owner")
        return {
            "id": APPLICATION_ID,
            "name": "Molt",
            "icon": None,
            "description": "",
            "summary": "",
            "rpc_origins": [],
            "bot_public": False,
            "bot_require_code_grant": False,
            "owner": owner.user(),
            "team": None,
            "verify_key": "0" * 64,
            "flags": 1 << 19,
            "interactions_endpoint_url": None,
            "redirect_uris": [],
            "bot": self._bot_user(),
        }

    def _channel(self, channel: str) -> dict[str, Any]:
        names = {CHANNEL_ID: "deploys", OTHER_CHANNEL_ID: "random"}
        return {
            "id": channel,
            "type": 0,
            "guild_id": GUILD_ID,
            "name": names.get(channel, f"channel-{channel[-4:]}"),
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }

    def _guild(self) -> dict[str, Any]:
        roles = [
            _role(GUILD_ID, "@everyone", 0, MEMBER_PERMISSIONS),
            _role(ROLE_DEPLOYERS, "deployers", 1),
            _role(ROLE_APPROVERS, "approvers", 2),
            _role(ROLE_VISITORS, "visitors", 3),
        ]
        bot = Person(BOT_USER_ID, "molt")
        member = bot.member(with_user=False) | {"user": self._bot_user()}
        return {
            "id": GUILD_ID,
            "name": "Molt Test",
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": OWNER_ID,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": roles,
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "joined_at": _iso(time.time() - 86400),
            "large": False,
            "unavailable": False,
            "member_count": 4,
            "voice_states": [],
            "members": [member],
            "channels": [self._channel(c) for c in self.channels],
            "threads": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def _message_payload(
        self,
        channel: str,
        author: dict[str, Any],
        *,
        content: str = "",
        embeds: list[Any] | None = None,
        components: list[Any] | None = None,
        flags: int = 0,
    ) -> dict[str, Any]:
        return {
            "id": self._snowflake(),
            "type": 0,
            "channel_id": channel,
            "author": author,
            "content": content,
            "timestamp": _iso(time.time()),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": embeds or [],
            "pinned": False,
            "flags": flags,
            "components": components or [],
            "edits": 0,
        }


def _role(role_id: str, name: str, position: int, permissions: str = "0") -> dict[str, Any]:
    return {
        "id": role_id,
        "name": name,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": position,
        "permissions": permissions,
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).isoformat()


def _template(path: str) -> str:
    """A path with its ids and tokens as placeholders: /channels/{id}/messages."""
    parts = path.strip("/").split("/")
    out = []
    for index, part in enumerate(parts):
        if part.isdigit():
            out.append("{id}")
        elif index == 2 and parts[0] in ("interactions", "webhooks"):
            out.append("{token}")
        else:
            out.append(part)
    return "/" + "/".join(out)


def _public(message: dict[str, Any]) -> dict[str, Any]:
    """A stored message as Discord returns it (without the fake's bookkeeping)."""
    return {k: v for k, v in message.items() if k not in ("edits", "allowed_mentions")}


def _apply_edit(stored: dict[str, Any], body: dict[str, Any]) -> None:
    for name in ("content", "embeds", "components", "flags"):
        if name in body:  # left out: Discord keeps what was there
            stored[name] = (
                body[name] if body[name] is not None else ([] if name != "content" else "")
            )
    stored["edited_timestamp"] = _iso(time.time())
    stored["edits"] = int(stored.get("edits", 0)) + 1


def _invalid_message(body: Any, *, editing: bool = False) -> dict[str, Any] | None:
    """Discord's checks on a message body: something to show, and the embed limits."""
    if not isinstance(body, dict):
        return {"_errors": [{"code": "BASE_TYPE_REQUIRED", "message": "expected an object"}]}
    embeds = body.get("embeds") or []
    if not editing and not (body.get("content") or embeds or body.get("components")):
        return {"_errors": [{"code": "MESSAGE_EMPTY", "message": "Cannot send an empty message"}]}
    if len(body.get("content") or "") > 2000:
        return {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}}
    total = 0
    for embed in embeds:
        title, description = embed.get("title") or "", embed.get("description") or ""
        footer = (embed.get("footer") or {}).get("text") or ""
        fields = embed.get("fields") or []
        if len(title) > 256 or len(description) > 4096 or len(footer) > 2048 or len(fields) > 25:
            return {"embeds": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}}
        for item in fields:
            name, value = item.get("name") or "", item.get("value") or ""
            if not name or not value or len(name) > 256 or len(value) > 1024:
                return {"embeds": {"fields": {"_errors": [{"code": "BASE_TYPE_BAD_LENGTH"}]}}}
            total += len(name) + len(value)
        total += len(title) + len(description) + len(footer)
    if total > 6000:
        return {"embeds": {"_errors": [{"code": "MAX_EMBED_SIZE_EXCEEDED"}]}}
    for row in body.get("components") or []:
        buttons = row.get("components") or []
        if row.get("type") != 1 or not 1 <= len(buttons) <= 5:
            return {"components": {"_errors": [{"code": "COMPONENT_LAYOUT_WIDTH_EXCEEDED"}]}}
        for button in buttons:
            if len(button.get("custom_id") or "") > 100 or len(button.get("label") or "") > 80:
                return {"components": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}}
    return None
