"""The discord.py client: Molt's intents, the ``/molt`` slash command, the dynamic buttons,
and the gateway's events passed to the listeners.

The client asks the API where its gateway is (so a test server on loopback serves both),
and registers ``/molt`` only when Discord does not already have it as it is.
"""

from __future__ import annotations

import threading
from typing import Any

import discord
import structlog
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from bot.discord.embeds import NO_MENTIONS
from bot.discord.listeners import Listeners
from bot.discord.views import MoltButton

log = structlog.get_logger(__name__)

SLASH_COMMAND = "molt"
#: A 429 asking for a longer wait than this fails the delivery (the notifier retries it).
RATE_LIMIT_CAP = 30.0


class Client(discord.Client):
    """discord.py's client with Molt's intents, slash command and dynamic buttons."""

    def __init__(self, listeners: Listeners, logged_in: threading.Event) -> None:
        # Molt has no voice: no warnings about the libraries voice would need.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        intents = discord.Intents.default()
        intents.message_content = True  # privileged: without it, prefix commands read empty
        super().__init__(
            intents=intents,
            allowed_mentions=NO_MENTIONS,
            max_ratelimit_timeout=RATE_LIMIT_CAP,
            max_messages=None,
            chunk_guilds_at_startup=False,
        )
        self.listeners = listeners
        self._logged_in = logged_in
        self.tree = app_commands.CommandTree(self)
        self.tree.add_command(_slash_command(listeners))

    async def setup_hook(self) -> None:
        self.add_dynamic_items(MoltButton)
        # A plain Client goes to the default gateway; ask the API (a test server, say) where.
        _, url, _ = await self.http.get_bot_gateway()
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
        await self._register_commands()
        self._logged_in.set()

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
        await self.listeners.on_message(message, self.user.id if self.user else None)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        await self.listeners.on_interaction(interaction)

    async def pressed(self, interaction: discord.Interaction, action: str, request_id: str) -> None:
        """A ``MoltButton`` was clicked."""
        await self.listeners.on_click(interaction, action, request_id)


def _slash_command(listeners: Listeners) -> app_commands.Command[Any, ..., None]:
    @app_commands.describe(command="deploy <ref>, status, help… or a change in plain words")
    async def molt_command(interaction: discord.Interaction, command: str = "") -> None:
        await listeners.on_slash(interaction, command)

    return app_commands.Command(
        name=SLASH_COMMAND,
        description="Ask Molt for an update, or how things stand",
        callback=molt_command,
    )


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
