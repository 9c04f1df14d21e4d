"""The Discord front end: ``!molt`` messages, the ``/molt`` slash command and buttons in;
embeds with persistent buttons out.

discord.py runs on a thread of its own with its own event loop, beside Slack and the HTTP
server in ``molt run``. What comes in is acknowledged first (an interaction is deferred well
within Discord's 3 s) and handed to the desk, which returns at once. The notifier's
deliveries are scheduled onto the client's loop and waited for, so a failure leaves the
event in the stream to be delivered again.

Buttons carry their action and request id in the custom_id (``molt:approve:r1a2b3c4d``)
and are registered as dynamic items at every start, so a plan posted before Molt restarted
can still be approved after. Who may press what is decided by pipeline/ on every click,
never here.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import discord
import structlog
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from bot.base import Adapter, MessageRefs
from bot.commands import parse
from bot.messages import Message
from bot.notifier import TRANSIENT
from pipeline.config import Settings
from pipeline.exceptions import ConfigError
from pipeline.requests import Origin, Request, RequestStore

if TYPE_CHECKING:
    from bot.base import Front

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: The buttons Molt puts on messages. ``revise`` is Request changes: it opens a modal.
ACTIONS = ("approve", "reject", "retry", "revise")
#: A button's custom_id: ``molt:<action>:<request id>``.
BUTTON_ID = re.compile(r"molt:(?P<action>approve|reject|retry|revise):(?P<request_id>[\w-]{1,64})")
#: The Request changes modal's custom_id, and the id of its one text input.
REVISION_ID = re.compile(r"molt:revision:(?P<request_id>[\w-]{1,64})")
NOTE_INPUT = "note"
SLASH_COMMAND = "molt"
#: Commands that make a request (its status is posted in the channel, not answered privately).
REQUEST_VERBS = frozenset({"deploy", "change", "rollback"})

# Discord's limits (https://discord.com/developers/docs/resources/message#embed-object-embed-limits).
EMBED_LIMIT = 6000
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
FIELDS_LIMIT = 25
FIELD_NAME_LIMIT = 256
FIELD_VALUE_LIMIT = 1024
FOOTER_LIMIT = 2048
CUSTOM_ID_LIMIT = 100
LABEL_LIMIT = 80
NOTE_LIMIT = 1000

#: Interaction tokens live 15 min; follow-ups stop trying a little before.
TOKEN_LIFETIME = 14 * 60
#: One status message is edited at most this often; a progress edit arriving sooner waits,
#: and is replaced by any newer one, so a busy update stays inside the rate limits.
EDIT_INTERVAL = 1.0
#: How long the notifier waits for the client to be logged in before leaving the event.
LOGIN_WAIT = 5.0
#: A 429 asking for a longer wait than this fails the delivery (the notifier retries it).
RATE_LIMIT_CAP = 30.0
CALL_TIMEOUT = RATE_LIMIT_CAP + 10
STOP_TIMEOUT = 10.0
#: Gateway close codes after which connecting again cannot help.
FATAL_CLOSE_CODES = frozenset({4004, 4010, 4011, 4012, 4013, 4014})

GREEN, AMBER, RED, GREY, BLURPLE = 0x2ECC71, 0xF1A90A, 0xE74C3C, 0x95A5A6, 0x5865F2
RISK_COLOURS = {"low": GREEN, "medium": AMBER, "high": RED}
OUTCOME_COLOURS = {
    "success": GREEN,
    "failure": RED,
    "blocked": RED,
    "refused": RED,
    "not_allowed": RED,
    "rejected": GREY,
    "expired": GREY,
    "cancelled": GREY,
}

MISSING_INTENT = (
    "Discord refused the connection because the Message Content intent is off for this bot. "
    "Turn on Developer Portal > Applications > (your app) > Bot > Privileged Gateway Intents > "
    "MESSAGE CONTENT INTENT, then restart Molt. Discord stays off until then; everything else "
    "keeps running."
)

_NO_MENTIONS = discord.AllowedMentions.none()
_CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.DOTALL)
_SINGLE_BOLD = re.compile(r"(?<![*\w])\*(?![\s*])([^*\n]+?)(?<![\s*])\*(?![*\w])")
_SEEN_KEPT = 2000
_REFS_KEPT = 1000
_USERS_KEPT = 1000


class Discord(Adapter):
    platform = "discord"

    def __init__(self, settings: Settings, store: RequestStore) -> None:
        token = settings.discord_token.get_secret_value() if settings.discord_token else ""
        if not token.strip():
            raise ConfigError("DISCORD_TOKEN is needed for Discord")
        self.settings = settings
        self.store = store
        self.desk: Front | None = None
        self.prefix = settings.discord_prefix
        self.channels = frozenset(int(c) for c in settings.discord_channels)
        self._token = token.strip()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: _Client | None = None
        self._wake: asyncio.Event | None = None
        self._closing: asyncio.Future[None] | None = None
        self._logged_in = threading.Event()
        self._stopping = threading.Event()
        #: Why Discord stays off (a refused token or intent), so deliveries fail at once.
        self._off = ""
        self._refs = MessageRefs()
        # Only touched on the client's loop:
        self._contacts = _Contacts()
        self._gates: OrderedDict[int, _EditGate] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()

    # -- life cycle --------------------------------------------------------

    def start(self) -> None:
        """Connect in the background, so a slow Discord does not hold up start-up."""
        discord.http.Route.BASE = self.settings.discord_api_url.rstrip("/")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="molt-discord", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the gateway and the HTTP session; undelivered events stay in the stream."""
        self._stopping.set()
        loop, thread = self._loop, self._thread
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(self._begin_closing)
        if thread is not None:
            thread.join(timeout=STOP_TIMEOUT)
            if thread.is_alive():
                log.warning("the discord client did not stop in time")

    @property
    def logged_in(self) -> bool:
        return self._logged_in.is_set()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except Exception:
            log.exception("discord client stopped")
        finally:
            self._logged_in.clear()
            try:
                tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                self._loop = None
                loop.close()

    async def _serve(self) -> None:
        """Log in and stay connected; start over after a failure, except one no retry fixes."""
        self._wake = asyncio.Event()
        delay = 1.0
        while not self._stopping.is_set():
            client = _Client(self)
            self._client = client
            try:
                async with client:
                    if not self._stopping.is_set():
                        await client.start(self._token)
                return
            except discord.PrivilegedIntentsRequired:
                self._off = "the Message Content intent is off"
                log.error(MISSING_INTENT)
                print(f"molt: {MISSING_INTENT}", file=sys.stderr, flush=True)
                return
            except discord.LoginFailure:
                self._off = "DISCORD_TOKEN was refused"
                log.error("DISCORD_TOKEN was refused by Discord; Discord stays off")
                return
            except discord.ConnectionClosed as exc:
                if exc.code in FATAL_CLOSE_CODES:
                    self._off = f"the gateway closed with {exc.code}"
                    log.error("discord closed the gateway; Discord stays off", code=exc.code)
                    return
                log.warning("discord gateway closed; connecting again", code=exc.code)
            except Exception as exc:
                if self._stopping.is_set():
                    return
                log.warning("discord unreachable; connecting again", error=repr(exc), delay=delay)
            finally:
                if self._logged_in.is_set():
                    delay = 1.0  # it worked for a while: start again quickly
                self._logged_in.clear()
                await client.close()  # after a failed start too: its HTTP session
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            delay = min(delay * 2, 60.0)

    def _begin_closing(self) -> None:
        if self._wake is not None:
            self._wake.set()
        client = self._client
        if client is not None and not client.is_closed():
            self._closing = asyncio.ensure_future(self._close(client))

    async def _close(self, client: _Client) -> None:
        await _flush_all(self._gates.values(), timeout=2.0)
        await client.close()

    # -- incoming (on the client's loop) -----------------------------------

    def _hand_over(self, what: str, act: Callable[[Front], object]) -> None:
        desk = self.desk
        if desk is None:
            log.warning("discord input before the desk was ready", what=what)
            return
        try:
            act(desk)
        except RuntimeError as exc:  # the desk is shutting down
            log.warning("discord input not taken", what=what, error=str(exc))

    def _first_time(self, key: str) -> bool:
        """A replayed gateway event (after a resume) is acted on once."""
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > _SEEN_KEPT:
            self._seen.popitem(last=False)
        return True

    def listens_in(self, channel_id: int | None) -> bool:
        return not self.channels or channel_id in self.channels

    async def on_message(self, message: discord.Message) -> None:
        client = self._client
        if message.author.bot or message.webhook_id is not None or client is None:
            return
        me = client.user.id if client.user else None
        text = command_text(message.content, self.prefix, me)
        if text is None or not self.listens_in(message.channel.id):
            return
        if not self._first_time(f"message:{message.id}"):
            return
        origin = _origin(message.author, message.channel.id)
        self._contacts.note(origin.user, _Contact(channel_id=message.channel.id, message=message))
        self._hand_over("message", lambda desk: desk.say(origin, text))

    async def on_slash(self, interaction: discord.Interaction, command: str) -> None:
        if not self.listens_in(interaction.channel_id):
            where = ", ".join(f"<#{c}>" for c in sorted(self.channels))
            await interaction.response.send_message(
                f"Molt takes commands in {where}.", ephemeral=True, allowed_mentions=_NO_MENTIONS
            )
            return
        if not self._first_time(f"interaction:{interaction.id}"):
            return
        if not await _acknowledge(interaction, thinking=True):
            return
        origin = _origin(interaction.user, interaction.channel_id)
        contact = _Contact(
            channel_id=interaction.channel_id,
            interaction=interaction,
            thinking=True,
            request=parse(command).verb in REQUEST_VERBS,
        )
        self._contacts.note(origin.user, contact)
        self._hand_over("slash command", lambda desk: desk.say(origin, command.strip()))

    async def on_click(
        self, interaction: discord.Interaction, action: str, request_id: str
    ) -> None:
        if not self._first_time(f"interaction:{interaction.id}"):
            return
        if action == "revise":
            await interaction.response.send_modal(revision_modal(request_id))
            return
        if not await _acknowledge(interaction):
            return
        origin = _origin(interaction.user, interaction.channel_id)
        self._contacts.note(
            origin.user, _Contact(channel_id=interaction.channel_id, interaction=interaction)
        )
        self._hand_over("button", lambda desk: desk.press(origin, action, request_id))

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """Request changes submitted: handled here, the same whichever process opened it."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        found = REVISION_ID.fullmatch(str(data.get("custom_id") or ""))
        if found is None or not self._first_time(f"interaction:{interaction.id}"):
            return
        if not await _acknowledge(interaction):
            return
        note = submitted_value(data.get("components") or [], NOTE_INPUT)
        origin = _origin(interaction.user, interaction.channel_id)
        self._contacts.note(
            origin.user, _Contact(channel_id=interaction.channel_id, interaction=interaction)
        )
        request_id = found["request_id"]
        self._hand_over("request changes", lambda desk: desk.revise(origin, request_id, note))

    # -- outgoing (from the notifier's thread) -------------------------------

    def deliver(self, request: Request, message: Message) -> None:
        new_ref = self._call(lambda: self._deliver(request, message))
        if new_ref is not None:
            self._refs.remember(request.id, new_ref)
            self.store.update(request.id, message_ref=new_ref)

    def reply(self, origin: Origin, message: Message) -> None:
        self._call(lambda: self._private(origin, message, None))

    def _call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine on the client's loop and wait for it; raise if it cannot be done."""
        if self._off:
            raise ConnectionError(f"discord is off: {self._off}")
        if not self._logged_in.wait(LOGIN_WAIT):
            raise ConnectionError("discord: not logged in")
        loop = self._loop
        if loop is None or loop.is_closed():
            raise ConnectionError("discord: the client is not running")
        coroutine = make()
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:
            coroutine.close()
            raise ConnectionError("discord: the client stopped") from None
        try:
            return future.result(timeout=CALL_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"discord did not answer within {CALL_TIMEOUT:.0f} s") from None

    async def _deliver(self, request: Request, message: Message) -> dict[str, str] | None:
        if message.private:
            await self._private(request.origin, message, request)
            return None
        client = self._connected()
        embed = to_embed(message, colour_for(message, request))
        buttons = to_buttons(message)
        ref = request.message_ref or self._refs.get(request.id)
        if ref and str(ref.get("channel", "")).isdigit() and str(ref.get("message", "")).isdigit():
            channel_id, message_id = int(ref["channel"]), int(ref["message"])
            gate = self._gate(message_id)

            async def edit() -> None:
                target = client.get_partial_messageable(channel_id).get_partial_message(message_id)
                await target.edit(embed=embed, view=_view(buttons), allowed_mentions=_NO_MENTIONS)

            try:
                await gate.run(edit, coalesce=message.template in TRANSIENT)
                return None
            except discord.NotFound:
                log.info("status message gone; posting a new one", request_id=request.id)
        posted = await self._post(request.origin, embed, buttons)
        self._gate(posted.id).touched()
        await self._point_to(request, posted)
        return {"channel": str(posted.channel.id), "message": str(posted.id)}

    async def _post(
        self, origin: Origin, embed: discord.Embed, buttons: list[ButtonSpec]
    ) -> discord.Message:
        """Post in the request's channel; where the bot may not write, to the requester."""
        client = self._connected()
        if origin.channel.isdigit():
            channel = client.get_partial_messageable(int(origin.channel))
            try:
                return await channel.send(
                    embed=embed, allowed_mentions=_NO_MENTIONS, **_with(buttons)
                )
            except (discord.Forbidden, discord.NotFound) as exc:
                log.info("cannot post in the channel; writing to the requester", error=str(exc))
        direct = await client.create_dm(discord.Object(int(origin.user)))
        return await direct.send(embed=embed, allowed_mentions=_NO_MENTIONS, **_with(buttons))

    async def _point_to(self, request: Request, posted: discord.Message) -> None:
        """The slash command that made ``request``, still "thinking", is answered with where
        the request's status is now."""
        contact = self._contacts.asked_for(request, posted.channel.id)
        if contact is None or contact.interaction is None:
            return
        interaction = contact.interaction
        place = interaction.guild_id or "@me"
        link = f"https://discord.com/channels/{place}/{posted.channel.id}/{posted.id}"
        try:
            await interaction.followup.send(
                f"On it: the status is posted in this channel and updated there. {link}",
                ephemeral=True,
                allowed_mentions=_NO_MENTIONS,
            )
        except discord.HTTPException as exc:
            log.info("could not answer the slash command", error=str(exc))
        self._contacts.answered(contact)

    async def _private(self, origin: Origin, message: Message, request: Request | None) -> None:
        """To one person: an ephemeral follow-up while their interaction lasts, else a reply
        that mentions them, else a direct message."""
        client = self._connected()
        if not origin.user.isdigit():
            log.warning("no discord user to answer", user=origin.user)
            return
        embed = to_embed(message, colour_for(message, request))
        buttons = to_buttons(message)
        for contact in self._contacts.followable(origin.user):
            assert contact.interaction is not None
            try:
                await contact.interaction.followup.send(
                    embed=embed, ephemeral=True, allowed_mentions=_NO_MENTIONS, **_with(buttons)
                )
            except discord.HTTPException as exc:
                log.info("interaction token no longer usable", error=str(exc))
                self._contacts.forget(origin.user, contact)
                continue
            self._contacts.answered(contact)
            return
        said = self._contacts.said(origin.user)
        channel_id = int(origin.channel) if origin.channel.isdigit() else None
        if channel_id is None and said is not None:
            channel_id = said.channel_id
        mention = discord.AllowedMentions(
            everyone=False, roles=False, users=[discord.Object(int(origin.user))]
        )
        if channel_id is not None:
            reference: Any = None
            if said and said.message and said.channel_id == channel_id and said.recent:
                reference = said.message.to_reference(fail_if_not_exists=False)
            channel = client.get_partial_messageable(channel_id)
            try:
                await channel.send(
                    f"<@{origin.user}>",
                    embed=embed,
                    reference=reference,
                    allowed_mentions=mention,
                    **_with(buttons),
                )
                return
            except (discord.Forbidden, discord.NotFound) as exc:
                log.info("cannot reply in the channel; writing directly", error=str(exc))
        direct = await client.create_dm(discord.Object(int(origin.user)))
        await direct.send(embed=embed, allowed_mentions=_NO_MENTIONS, **_with(buttons))

    def _connected(self) -> _Client:
        client = self._client
        if client is None or client.is_closed():
            raise ConnectionError("discord: the client is not running")
        return client

    def _gate(self, message_id: int) -> _EditGate:
        gate = self._gates.get(message_id)
        if gate is None:
            gate = self._gates[message_id] = _EditGate()
            while len(self._gates) > _REFS_KEPT:
                self._gates.popitem(last=False)
        self._gates.move_to_end(message_id)
        return gate


# -- the discord.py client ----------------------------------------------------


class _Client(discord.Client):
    """discord.py's client with Molt's intents, slash command and dynamic buttons."""

    def __init__(self, molt: Discord) -> None:
        # Molt has no voice: no warnings about the libraries voice would need.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        intents = discord.Intents.default()
        intents.message_content = True  # privileged: without it, prefix commands read empty
        super().__init__(
            intents=intents,
            allowed_mentions=_NO_MENTIONS,
            max_ratelimit_timeout=RATE_LIMIT_CAP,
            max_messages=None,
            chunk_guilds_at_startup=False,
        )
        self.molt = molt
        self.tree = app_commands.CommandTree(self)
        self.tree.add_command(_slash_command(molt))

    async def setup_hook(self) -> None:
        self.add_dynamic_items(MoltButton)
        # A plain Client goes to the default gateway; ask the API (a test server, say) where.
        _, url, _ = await self.http.get_bot_gateway()
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
        await self._register_commands()
        self.molt._logged_in.set()

    async def _register_commands(self) -> None:
        """Register /molt, unless Discord already has it as it is (restarts stay cheap)."""
        if self.application_id is None:
            return
        wanted = [command.to_dict(self.tree) for command in self.tree.get_commands()]
        try:
            current = await self.http.get_global_commands(self.application_id)
            if command_signature(current) != command_signature(wanted):
                await self.tree.sync()
                log.info("registered the discord slash command", command=f"/{SLASH_COMMAND}")
        except discord.HTTPException as exc:
            log.warning(
                "could not register the discord slash command; message commands still work",
                status=exc.status,
                error=exc.text,
            )

    async def on_ready(self) -> None:
        log.info("discord connected", user=str(self.user), guilds=len(self.guilds))

    async def on_resumed(self) -> None:
        log.info("discord session resumed")

    async def on_message(self, message: discord.Message) -> None:
        await self.molt.on_message(message)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        await self.molt.on_interaction(interaction)


def _slash_command(molt: Discord) -> app_commands.Command[Any, ..., None]:
    @app_commands.describe(command="deploy <ref>, status, help… or a change in plain words")
    async def molt_command(interaction: discord.Interaction, command: str = "") -> None:
        await molt.on_slash(interaction, command)

    return app_commands.Command(
        name=SLASH_COMMAND,
        description="Ask Molt for an update, or how things stand",
        callback=molt_command,
    )


class MoltButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=BUTTON_ID.pattern):
    """A button whose custom_id carries its action and request: it works after a restart."""

    def __init__(
        self,
        action: str,
        request_id: str,
        *,
        label: str = "",
        style: discord.ButtonStyle = discord.ButtonStyle.secondary,
    ) -> None:
        super().__init__(
            discord.ui.Button(
                label=_clip(label or action.title(), LABEL_LIMIT),
                style=style,
                custom_id=f"molt:{action}:{request_id}",
            )
        )
        self.action = action
        self.request_id = request_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> MoltButton:
        label = getattr(item, "label", "") or ""
        style = getattr(item, "style", discord.ButtonStyle.secondary)
        return cls(match["action"], match["request_id"], label=label, style=style)

    async def callback(self, interaction: discord.Interaction) -> None:
        client = interaction.client
        if isinstance(client, _Client):
            await client.molt.on_click(interaction, self.action, self.request_id)


def revision_modal(request_id: str) -> discord.ui.Modal:
    """Request changes: what should change. Its submission is handled by ``on_interaction``
    (not the view store), so it works the same if Molt restarted meanwhile."""
    modal = discord.ui.Modal(title="Request changes", custom_id=f"molt:revision:{request_id}")
    modal.add_item(
        discord.ui.TextInput(
            label="What should change?",
            custom_id=NOTE_INPUT,
            style=discord.TextStyle.paragraph,
            placeholder="e.g. deploy v1.4.1 instead",
            max_length=NOTE_LIMIT,
        )
    )
    modal.stop()
    return modal


async def _acknowledge(interaction: discord.Interaction, *, thinking: bool = False) -> bool:
    """Defer at once (Discord wants an answer within 3 s); false if that failed."""
    try:
        await interaction.response.defer(ephemeral=True, thinking=thinking)
    except discord.HTTPException as exc:
        log.warning("could not acknowledge a discord interaction", status=exc.status)
        return False
    return True


# -- who and what --------------------------------------------------------------


def _origin(user: discord.User | discord.Member, channel_id: int | None) -> Origin:
    return Origin("discord", str(user.id), str(channel_id or ""), user.name, roles=_role_ids(user))


def _role_ids(user: discord.User | discord.Member) -> tuple[str, ...]:
    """The role ids Discord sent with the message or interaction.

    ``Member.roles`` lists only roles already in the guild cache, which may still be filling
    after a (re)connect; the ids in the payload are what Discord says the person has.
    """
    raw: Iterable[int] = getattr(user, "_roles", ()) or ()
    ids = [str(r) for r in raw]
    if not ids and isinstance(user, discord.Member):
        ids = [str(r.id) for r in user.roles if not r.is_default()]
    return tuple(ids)


def command_text(content: str, prefix: str, bot_id: int | None) -> str | None:
    """The command after ``prefix`` (or a mention of the bot); None if it is not for Molt."""
    text = content.strip()
    if bot_id is not None:
        for mention in (f"<@{bot_id}>", f"<@!{bot_id}>"):
            if text.startswith(mention):
                return text[len(mention) :].strip()
    head, rest = text[: len(prefix)], text[len(prefix) :]
    if head.lower() != prefix.lower() or (rest and not rest[0].isspace()):
        return None
    return rest.strip()


def submitted_value(components: list[Any], custom_id: str) -> str:
    """A text input's value in a modal submission (in an action row, or a label)."""
    stack = list(components)
    while stack:
        component = stack.pop(0)
        if not isinstance(component, dict):
            continue
        if component.get("custom_id") == custom_id and "value" in component:
            return str(component.get("value") or "")
        stack.extend(component.get("components") or [])
        if isinstance(component.get("component"), dict):
            stack.append(component["component"])
    return ""


def command_signature(commands: list[Any]) -> list[tuple[Any, ...]]:
    """What matters of registered commands, to tell whether they need registering again."""

    def options(command: dict[str, Any]) -> tuple[tuple[Any, ...], ...]:
        return tuple(
            (o.get("name"), o.get("type"), bool(o.get("required")), o.get("description", ""))
            for o in command.get("options") or []
        )

    return sorted(
        (c.get("name"), c.get("type", 1), c.get("description", ""), options(c))
        for c in commands
        if isinstance(c, dict)
    )


# -- embeds and buttons ------------------------------------------------------------


@dataclass(frozen=True)
class ButtonSpec:
    action: str
    request_id: str
    label: str
    style: discord.ButtonStyle

    @property
    def custom_id(self) -> str:
        return f"molt:{self.action}:{self.request_id}"


def colour_for(message: Message, request: Request | None) -> int:
    """Outcomes by their nature; otherwise the plan's risk: low green, medium amber, high red."""
    if message.template in OUTCOME_COLOURS:
        return OUTCOME_COLOURS[message.template]
    plan = (request.plan if request else None) or {}
    risk = plan.get("risk") if isinstance(plan, dict) else None
    level = str(risk.get("level") or "") if isinstance(risk, dict) else ""
    return RISK_COLOURS.get(level.lower(), BLURPLE)


def discord_markdown(text: str) -> str:
    """Templates write Slack's ``*bold*``, which Discord shows in italics: make it ``**bold**``
    (code spans are left as they are)."""
    pieces = _CODE.split(text)
    return "".join(p if i % 2 else _SINGLE_BOLD.sub(r"**\1**", p) for i, p in enumerate(pieces))


def to_embed(message: Message, colour: int = BLURPLE) -> discord.Embed:
    """``message`` as an embed within Discord's limits (6000 in all, 25 fields, 1024 a value)."""
    title = _clip(" ".join(message.title.split()), TITLE_LIMIT)
    footer = _footer(message)
    fields: list[tuple[str, str]] = []
    for field in message.fields:
        value = _clip(discord_markdown(field.value).strip(), FIELD_VALUE_LIMIT)
        if value:
            name = _clip(" ".join(field.name.split()), FIELD_NAME_LIMIT) or "\u200b"
            fields.append((name, value))
    note_room = 40  # for "· N more fields not shown" in the footer
    budget = EMBED_LIMIT - _units(title) - _units(footer) - note_room
    wanted = sum(_units(n) + _units(v) for n, v in fields[:FIELDS_LIMIT])
    text = discord_markdown(message.text).strip()
    description = ""
    if text:
        room = min(DESCRIPTION_LIMIT, budget - min(wanted, budget // 2))
        description = _clip(text, room)
        budget -= _units(description)
    embed = discord.Embed(title=title or None, description=description or None, colour=colour)
    shown = 0
    for name, value in fields[:FIELDS_LIMIT]:
        cost = _units(name) + _units(value)
        if cost > budget:
            room = budget - _units(name)
            if room < 20:
                break
            value = _clip(value, room)
            cost = _units(name) + _units(value)
        embed.add_field(name=name, value=value, inline=len(value) <= 40 and "\n" not in value)
        budget -= cost
        shown += 1
    left_out = len(fields) - shown
    if left_out:
        footer += f" · {left_out} more field{'s' if left_out != 1 else ''} not shown"
    if not (title or description or shown):
        fallback = message.plain().strip() or message.template or "Molt"
        embed.description = _clip(fallback, min(DESCRIPTION_LIMIT, budget))
    embed.set_footer(text=footer)
    return embed


def _footer(message: Message) -> str:
    """Which request and which step: for people quoting it, and for tools reading it."""
    parts = ["Molt", message.request_id, message.template]
    return _clip(" · ".join(p for p in parts if p), FOOTER_LIMIT // 2)


def to_buttons(message: Message) -> list[ButtonSpec]:
    """The message's buttons; a plan always offers Request changes beside Approve and Reject."""
    specs: list[ButtonSpec] = []
    for button in message.buttons:
        request_id = button.value or message.request_id
        label = " ".join(button.label.split())
        spec = ButtonSpec(button.action, request_id, label, _style(button.action, button.style))
        if not label or button.action not in ACTIONS or not _valid_id(spec.custom_id):
            continue
        if all(s.custom_id != spec.custom_id for s in specs):
            specs.append(spec)
    approve = next((s for s in specs if s.action == "approve"), None)
    if approve is not None and all(s.action != "revise" for s in specs):
        specs.append(
            ButtonSpec("revise", approve.request_id, "Request changes", _style("revise", ""))
        )
    return specs[:25]


def _style(action: str, style: str) -> discord.ButtonStyle:
    if action == "approve":
        return discord.ButtonStyle.success
    if style == "danger" or action == "reject":
        return discord.ButtonStyle.danger
    if style == "primary" or action == "retry":
        return discord.ButtonStyle.primary
    return discord.ButtonStyle.secondary


def _valid_id(custom_id: str) -> bool:
    return len(custom_id) <= CUSTOM_ID_LIMIT and BUTTON_ID.fullmatch(custom_id) is not None


def _view(buttons: list[ButtonSpec]) -> discord.ui.View | None:
    """A persistent view (no timeout) of dynamic buttons; None clears a message's buttons.

    Built on the client's loop: a view needs a running one.
    """
    if not buttons:
        return None
    view = discord.ui.View(timeout=None)
    for spec in buttons:
        view.add_item(MoltButton(spec.action, spec.request_id, label=spec.label, style=spec.style))
    return view


def _with(buttons: list[ButtonSpec]) -> dict[str, Any]:
    view = _view(buttons)
    return {"view": view} if view is not None else {}


def _units(text: str) -> int:
    """Length counted in UTF-16 code units, as Discord's clients do: never under the limit."""
    return len(text.encode("utf-16-le")) // 2


def _clip(text: str, limit: int) -> str:
    """``text`` within ``limit`` units, ending in an ellipsis when something was cut."""
    if _units(text) <= limit:
        return text
    if limit <= 1:
        return "…"[: max(limit, 0)]
    head = text[: limit - 1]
    while head and _units(head) > limit - 1:
        head = head[:-1]
    return head.rstrip() + "…"


# -- bookkeeping on the client's loop -------------------------------------------------


@dataclass(eq=False)
class _Contact:
    """The last ways a person reached Molt: where a private answer can go."""

    channel_id: int | None
    interaction: discord.Interaction | None = None
    message: discord.Message | None = None
    #: A deferred slash command still shows "thinking" until its first follow-up.
    thinking: bool = False
    #: The command makes a request, whose status is posted in the channel.
    request: bool = False
    at: float = 0.0
    wall: float = 0.0

    def __post_init__(self) -> None:
        self.at = self.at or time.monotonic()
        self.wall = self.wall or time.time()

    @property
    def recent(self) -> bool:
        return time.monotonic() - self.at < TOKEN_LIFETIME

    @property
    def usable(self) -> bool:
        """A message can always be replied to; an interaction's token expires."""
        return self.interaction is None or self.recent


class _Contacts:
    def __init__(self) -> None:
        self._by_user: OrderedDict[str, deque[_Contact]] = OrderedDict()

    def note(self, user: str, contact: _Contact) -> None:
        contacts = self._by_user.setdefault(user, deque(maxlen=8))
        contacts.append(contact)
        self._by_user.move_to_end(user)
        while len(self._by_user) > _USERS_KEPT:
            self._by_user.popitem(last=False)

    def _usable(self, user: str) -> list[_Contact]:
        return [c for c in self._by_user.get(user, ()) if c.usable]

    def waiting(self, user: str, channel_id: int | None = None) -> _Contact | None:
        """The oldest slash command of ``user`` still waiting for its first answer."""
        for contact in self._usable(user):
            if contact.thinking and (channel_id is None or contact.channel_id == channel_id):
                return contact
        return None

    def asked_for(self, request: Request, channel_id: int) -> _Contact | None:
        """The waiting slash command that ``request`` came from, as far as can be told."""
        for contact in self._usable(request.origin.user):
            if (
                contact.thinking
                and contact.request
                and contact.channel_id == channel_id
                and contact.wall <= request.created_at + 1
            ):
                return contact
        return None

    def followable(self, user: str) -> list[_Contact]:
        """Interactions a private answer can follow up: a waiting slash command first,
        else the person's latest contact if it was an interaction."""
        usable = self._usable(user)
        first = [c for c in usable if c.thinking]
        if not first and usable and usable[-1].interaction is not None:
            first = [usable[-1]]
        return first

    def said(self, user: str) -> _Contact | None:
        """The person's latest message command."""
        for contact in reversed(self._by_user.get(user, ())):
            if contact.message is not None:
                return contact
        return None

    def answered(self, contact: _Contact) -> None:
        contact.thinking = False

    def forget(self, user: str, contact: _Contact) -> None:
        contacts = self._by_user.get(user)
        if contacts is not None and contact in contacts:
            contacts.remove(contact)


class _EditGate:
    """Edits of one status message: a progress edit within ``EDIT_INTERVAL`` of the last
    waits and is replaced by any newer one; every other edit is made at once, in order."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._last = float("-inf")
        self._version = 0
        self._pending: tuple[int, Callable[[], Awaitable[None]]] | None = None
        self._flush: asyncio.Task[None] | None = None

    def touched(self) -> None:
        """The message was just posted: the next progress edit waits its turn too."""
        self._last = asyncio.get_running_loop().time()

    async def run(self, edit: Callable[[], Awaitable[None]], *, coalesce: bool) -> None:
        loop = asyncio.get_running_loop()
        self._version += 1
        version = self._version
        wait = self._last + EDIT_INTERVAL - loop.time()
        if coalesce and wait > 0:
            self._pending = (version, edit)
            if self._flush is None or self._flush.done():
                self._flush = asyncio.ensure_future(self._later(wait))
            return
        async with self._lock:
            if version != self._version:
                return  # a newer edit came meanwhile and is shown instead
            self._pending = None
            await edit()
            self._last = loop.time()

    async def _later(self, wait: float) -> None:
        await asyncio.sleep(wait)
        await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            pending, self._pending = self._pending, None
            if pending is None or pending[0] != self._version:
                return
            try:
                await pending[1]()
            except discord.HTTPException as exc:
                log.info("a coalesced discord edit failed; the next one repeats it", error=str(exc))
            self._last = asyncio.get_running_loop().time()


async def _flush_all(gates: Iterable[_EditGate], timeout: float) -> None:
    """Progress edits still waiting are made before the client closes."""
    waiting = [gate.flush() for gate in list(gates) if gate._pending is not None]
    if not waiting:
        return
    try:
        await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), timeout=timeout)
    except TimeoutError:
        log.info("discord edits still waiting were dropped at shutdown")
