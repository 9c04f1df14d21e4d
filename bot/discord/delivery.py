"""Molt's messages into Discord, on the client's loop.

A request's status is one message with its buttons, posted once and edited in place
(``message_ref`` on the request: channel and message ids), progress edits coalesced; where
the bot may not post, it writes to the requester directly. A private answer follows up the
person's interaction while its token lasts, else replies with a mention, else is a direct
message. The slash command that made a request is answered with where its status is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import discord
import structlog

from bot.base import MessageRefs
from bot.discord.contacts import Contacts
from bot.discord.edits import EditGates
from bot.discord.embeds import NO_MENTIONS, colour_for, to_embed
from bot.discord.views import ButtonSpec, to_buttons, view, with_view
from bot.messages import Message
from bot.notifier import TRANSIENT
from pipeline.requests.store import Origin, Request

log = structlog.get_logger(__name__)


class Delivery:
    """Posts, edits and private answers; ``connected`` gives the running client or raises."""

    def __init__(self, connected: Callable[[], discord.Client], contacts: Contacts) -> None:
        self.connected = connected
        self.contacts = contacts
        self.refs = MessageRefs()
        self.gates = EditGates()

    async def deliver(self, request: Request, message: Message) -> dict[str, str] | None:
        """Show ``message`` in the request's conversation; returns the status message's new
        place when it was posted (rather than edited)."""
        if message.private:
            await self.private(request.origin, message, request)
            return None
        client = self.connected()
        embed = to_embed(message, colour_for(message, request))
        buttons = to_buttons(message)
        ref = request.message_ref or self.refs.get(request.id)
        if ref and str(ref.get("channel", "")).isdigit() and str(ref.get("message", "")).isdigit():
            channel_id, message_id = int(ref["channel"]), int(ref["message"])

            async def edit() -> None:
                target = client.get_partial_messageable(channel_id).get_partial_message(message_id)
                await target.edit(embed=embed, view=view(buttons), allowed_mentions=NO_MENTIONS)

            try:
                await self.gates.of(message_id).run(edit, coalesce=message.template in TRANSIENT)
                return None
            except discord.NotFound:
                log.info("status message gone; posting a new one", request_id=request.id)
        posted = await self._post(request.origin, embed, buttons)
        self.gates.of(posted.id).touched()
        await self._point_to(request, posted)
        return {"channel": str(posted.channel.id), "message": str(posted.id)}

    async def _post(
        self, origin: Origin, embed: discord.Embed, buttons: list[ButtonSpec]
    ) -> discord.Message:
        """Post in the request's channel; where the bot may not write, to the requester."""
        client = self.connected()
        if origin.channel.isdigit():
            channel = client.get_partial_messageable(int(origin.channel))
            try:
                return await channel.send(
                    embed=embed, allowed_mentions=NO_MENTIONS, **with_view(buttons)
                )
            except (discord.Forbidden, discord.NotFound) as exc:
                log.info("cannot post in the channel; writing to the requester", error=str(exc))
        direct = await client.create_dm(discord.Object(int(origin.user)))
        return await direct.send(embed=embed, allowed_mentions=NO_MENTIONS, **with_view(buttons))

    async def _point_to(self, request: Request, posted: discord.Message) -> None:
        """The slash command that made ``request``, still "thinking", is answered with where
        the request's status is now."""
        contact = self.contacts.asked_for(request, posted.channel.id)
        if contact is None or contact.interaction is None:
            return
        interaction = contact.interaction
        place = interaction.guild_id or "@me"
        link = f"https://discord.com/channels/{place}/{posted.channel.id}/{posted.id}"
        try:
            await interaction.followup.send(
                f"On it: the status is posted in this channel and updated there. {link}",
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
        except discord.HTTPException as exc:
            log.info("could not answer the slash command", error=str(exc))
        self.contacts.answered(contact)

    async def announce(self, channel: str, message: Message) -> None:
        """A message for everyone in ``channel`` (an incident), outside any request."""
        target = self.connected().get_partial_messageable(int(channel))
        embed = to_embed(message, colour_for(message, None))
        await target.send(
            embed=embed, allowed_mentions=NO_MENTIONS, **with_view(to_buttons(message))
        )

    async def private(self, origin: Origin, message: Message, request: Request | None) -> None:
        """To one person: an ephemeral follow-up while their interaction lasts, else a reply
        that mentions them, else a direct message."""
        client = self.connected()
        if not origin.user.isdigit():
            log.warning("no discord user to answer", user=origin.user)
            return
        embed = to_embed(message, colour_for(message, request))
        buttons = to_buttons(message)
        if await self._follow_up(origin, embed, buttons):
            return
        if await self._mention(client, origin, embed, buttons):
            return
        direct = await client.create_dm(discord.Object(int(origin.user)))
        await direct.send(embed=embed, allowed_mentions=NO_MENTIONS, **with_view(buttons))

    async def _follow_up(
        self, origin: Origin, embed: discord.Embed, buttons: list[ButtonSpec]
    ) -> bool:
        """An ephemeral follow-up of the person's interaction; false if none could take it."""
        for contact in self.contacts.followable(origin.user):
            assert contact.interaction is not None
            try:
                await contact.interaction.followup.send(
                    embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS, **with_view(buttons)
                )
            except discord.HTTPException as exc:
                log.info("interaction token no longer usable", error=str(exc))
                self.contacts.forget(origin.user, contact)
                continue
            self.contacts.answered(contact)
            return True
        return False

    async def _mention(
        self,
        client: discord.Client,
        origin: Origin,
        embed: discord.Embed,
        buttons: list[ButtonSpec],
    ) -> bool:
        """A message in the channel that mentions the person (a reply to their command if it
        was recent); false if there is no channel or the bot may not write there."""
        said = self.contacts.said(origin.user)
        channel_id = int(origin.channel) if origin.channel.isdigit() else None
        if channel_id is None and said is not None:
            channel_id = said.channel_id
        if channel_id is None:
            return False
        mention = discord.AllowedMentions(
            everyone=False, roles=False, users=[discord.Object(int(origin.user))]
        )
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
                **with_view(buttons),
            )
        except (discord.Forbidden, discord.NotFound) as exc:
            log.info("cannot reply in the channel; writing directly", error=str(exc))
            return False
        return True
