"""Every front end Molt has, in one list: the core (bot/app.py, bot/server.py,
bot/people.py, bot/cli.py) loops over it and names no platform.

A list rather than registration on import: what is registered is what is read here,
whatever was imported before, and a declaration imports no platform library (each
``build`` and ``serve`` imports its adapter only when the platform is configured).
"""

from __future__ import annotations

from bot import console
from bot.base import Platform
from bot.discord import platform as discord
from bot.github import platform as github
from bot.slack import platform as slack

PLATFORMS: tuple[Platform, ...] = (
    console.PLATFORM,
    slack.PLATFORM,
    github.PLATFORM,
    discord.PLATFORM,
)

BY_NAME = {platform.name: platform for platform in PLATFORMS}
