"""What Discord sends in: ``!molt`` messages (or a mention of the bot), the ``/molt`` slash
command, button clicks and the Request changes modal.

Everything runs on the client's loop. An interaction is deferred at once (Discord wants an
answer within 3 s) and handed to the desk, which returns at once; a gateway event replayed
after a resume is acted on once. Each contact is noted, so private answers can find the
person again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import discord
import structlog

from bot.commands import parse
from bot.discord.contacts import Contact, Contacts
from bot.discord.embeds import NO_MENTIONS
from bot.discord.views import NOTE_INPUT, REVISION_ID, revision_modal, submitted_value
from pipeline.requests.store import Origin

if TYPE_CHECKING:
    from bot.base import Front

log = structlog.get_logger(__name__)

#: Commands that make a request (its status is posted in the channel, not answered privately).
REQUEST_VERBS = frozenset({"deploy", "change", "rollback"})
_SEEN_KEPT = 2000


class Listeners:
    """Molt's handlers of the gateway's messages and interactions."""

    def __init__(
        self,
        prefix: str,
        channels: frozenset[int],
        contacts: Contacts,
        *,
        desk: Callable[[], Front | None],
    ) -> None:
        #: The adapter's desk, once it has one.
        self.desk = desk
        self.prefix = prefix
        self.channels = channels
        self.contacts = contacts
        self._seen: OrderedDict[str, None] = OrderedDict()

    def _hand_over(self, what: str, act: Callable[[Front], object]) -> None:
        desk = self.desk()
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

    async def on_message(self, message: discord.Message, me: int | None) -> None:
        """A message in a channel Molt listens in; ``me`` is the bot's user id."""
        if message.author.bot or message.webhook_id is not None:
            return
        text = command_text(message.content, self.prefix, me)
        if text is None or not self.listens_in(message.channel.id):
            return
        if not self._first_time(f"message:{message.id}"):
            return
        origin = _origin(message.author, message.channel.id)
        self.contacts.note(origin.user, Contact(channel_id=message.channel.id, message=message))
        self._hand_over("message", lambda desk: desk.say(origin, text))

    async def on_slash(self, interaction: discord.Interaction, command: str) -> None:
        if not self.listens_in(interaction.channel_id):
            where = ", ".join(f"<#{c}>" for c in sorted(self.channels))
            await interaction.response.send_message(
                f"Molt takes commands in {where}.", ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        if not self._first_time(f"interaction:{interaction.id}"):
            return
        if not await _acknowledge(interaction, thinking=True):
            return
        origin = _origin(interaction.user, interaction.channel_id)
        contact = Contact(
            channel_id=interaction.channel_id,
            interaction=interaction,
            thinking=True,
            request=parse(command).verb in REQUEST_VERBS,
        )
        self.contacts.note(origin.user, contact)
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
        origin = self._interacted(interaction)
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
        origin = self._interacted(interaction)
        request_id = found["request_id"]
        self._hand_over("request changes", lambda desk: desk.revise(origin, request_id, note))

    def _interacted(self, interaction: discord.Interaction) -> Origin:
        """Who sent ``interaction``, noted as their latest contact."""
        origin = _origin(interaction.user, interaction.channel_id)
        self.contacts.note(
            origin.user, Contact(channel_id=interaction.channel_id, interaction=interaction)
        )
        return origin


async def _acknowledge(interaction: discord.Interaction, *, thinking: bool = False) -> bool:
    """Defer at once (Discord wants an answer within 3 s); false if that failed."""
    try:
        await interaction.response.defer(ephemeral=True, thinking=thinking)
    except discord.HTTPException as exc:
        log.warning("could not acknowledge a discord interaction", status=exc.status)
        return False
    return True


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
