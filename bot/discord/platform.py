"""How Molt builds the Discord front end (bot/platforms.py lists it): a gateway client in the
bot's process; nothing in the HTTP process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.base import Platform, Wiring
from bot.discord import NAMING

if TYPE_CHECKING:
    from bot.discord.adapter import Discord


def _build(wiring: Wiring) -> Discord | None:
    """In the bot's process (not the HTTP one): a gateway client on a thread of its own."""
    if not wiring.settings.discord.enabled:
        return None
    from bot.discord.adapter import Discord

    discord_adapter = Discord(wiring.settings, wiring.store)
    discord_adapter.desk = wiring.desk
    return discord_adapter


PLATFORM = Platform(naming=NAMING, build=_build)
