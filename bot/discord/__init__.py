"""The Discord front end: ``!molt`` messages, the ``/molt`` slash command and buttons in;
embeds with persistent buttons out.

- ``platform``: how Molt builds it (bot/platforms.py); this module names its people.
- ``adapter``: the ``Discord`` adapter, its client's thread and loop, and their life cycle.
- ``gateway``: the discord.py client, its intents, the slash command and dynamic buttons.
- ``listeners``: messages and interactions, acknowledged at once and handed to the desk.
- ``contacts``: how each person last reached Molt, for private answers.
- ``delivery``: a request's status as one message, and private answers.
- ``edits``: edits of a status message, coalesced within the rate limits.
- ``views``: buttons that survive a restart (``molt:approve:r1a2b3c4d``) and the modal.
- ``embeds``: messages as embeds within Discord's limits.

Text is cut to Discord's limits by bot/fitting.py, as for every platform. Absolute
imports keep ``import discord`` here the discord.py library, not this package.
"""

from __future__ import annotations

import re

from bot.people import Naming

_ID = re.compile(r"\d{1,20}")


def _person(user: str) -> str | None:
    return f"<@{user}>" if _ID.fullmatch(user) else None


#: People are named by mention (``<@1300…>``); a mention in an embed never pings.
NAMING = Naming("discord", _person)
