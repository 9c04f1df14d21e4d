"""Messages as Discord embeds: coloured by outcome or risk, in Discord's Markdown, within
its limits, with a footer naming the request and the step (``Molt · r1a2b3c4d · queued``).

The people Molt names (bot/people.py) become mentions, ``<@1300…>``, in the description and
field values, where Discord shows them by name; embeds never ping anyone. Titles, field
names and footers show no mentions, so there people stay as the context gave them.
"""

from __future__ import annotations

import re

import discord

from bot import people
from bot.discord import NAMING
from bot.fitting import clip, double_bold, units
from bot.messages import Message
from pipeline.requests.store import Request

# Discord's limits (https://discord.com/developers/docs/resources/message#embed-object-embed-limits).
EMBED_LIMIT = 6000
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
FIELDS_LIMIT = 25
FIELD_NAME_LIMIT = 256
FIELD_VALUE_LIMIT = 1024
FOOTER_LIMIT = 2048

GREEN, AMBER, RED, GREY, BLURPLE = 0x2ECC71, 0xF1A90A, 0xE74C3C, 0x95A5A6, 0x5865F2
RISK_COLOURS = {"low": GREEN, "medium": AMBER, "high": RED}
OUTCOME_COLOURS = {
    "success": GREEN,
    "failure": RED,
    "blocked": RED,
    "refused": RED,
    "not_allowed": RED,
    "not_done": RED,
    "rejected": GREY,
    "expired": GREY,
    "cancelled": GREY,
}

#: Nothing Molt posts pings anyone, whatever the request text says.
NO_MENTIONS = discord.AllowedMentions.none()

#: What a cut may leave of a mention (``<@1300``): Discord would show it as it is.
_TORN = re.compile(r"<(?:@!?\d*)?$")


def colour_for(message: Message, request: Request | None) -> int:
    """Outcomes by their nature; otherwise the plan's risk: low green, medium amber, high red."""
    if message.template in OUTCOME_COLOURS:
        return OUTCOME_COLOURS[message.template]
    plan = (request.plan if request else None) or {}
    risk = plan.get("risk") if isinstance(plan, dict) else None
    level = str(risk.get("level") or "") if isinstance(risk, dict) else ""
    return RISK_COLOURS.get(level.lower(), BLURPLE)


def to_embed(message: Message, colour: int = BLURPLE) -> discord.Embed:
    """``message`` as an embed within Discord's limits (6000 in all, 25 fields, 1024 a value)."""
    title = clip(" ".join(people.unmarked(message.title).split()), TITLE_LIMIT)
    footer = _footer(message)
    fields = _fields(message)
    note_room = 40  # for "· N more fields not shown" in the footer
    budget = EMBED_LIMIT - units(title) - units(footer) - note_room
    wanted = sum(units(n) + units(v) for n, v in fields[:FIELDS_LIMIT])
    text = _named(double_bold(message.text)).strip()
    description = ""
    if text:
        room = min(DESCRIPTION_LIMIT, budget - min(wanted, budget // 2))
        description = clip(text, room, torn=_TORN)
        budget -= units(description)
    embed = discord.Embed(title=title or None, description=description or None, colour=colour)
    shown = 0
    for name, value in fields[:FIELDS_LIMIT]:
        cost = units(name) + units(value)
        if cost > budget:
            room = budget - units(name)
            if room < 20:
                break
            value = clip(value, room, torn=_TORN)
            cost = units(name) + units(value)
        embed.add_field(name=name, value=value, inline=len(value) <= 40 and "\n" not in value)
        budget -= cost
        shown += 1
    left_out = len(fields) - shown
    if left_out:
        footer += f" · {left_out} more field{'s' if left_out != 1 else ''} not shown"
    if not (title or description or shown):
        fallback = _named(message.marked()).strip() or message.template or "Molt"
        embed.description = clip(fallback, min(DESCRIPTION_LIMIT, budget), torn=_TORN)
    embed.set_footer(text=footer)
    return embed


def _fields(message: Message) -> list[tuple[str, str]]:
    """The fields with something to show, each name and value within its own limit."""
    fields: list[tuple[str, str]] = []
    for field in message.fields:
        value = clip(_named(double_bold(field.value)).strip(), FIELD_VALUE_LIMIT, torn=_TORN)
        if value:
            name = people.unmarked(" ".join(field.name.split()))
            name = clip(name, FIELD_NAME_LIMIT) or "\u200b"
            fields.append((name, value))
    return fields


def _named(text: str) -> str:
    return people.address(text, NAMING)


def _footer(message: Message) -> str:
    """Which request and which step: for people quoting it, and for tools reading it."""
    parts = ["Molt", message.target, message.request_id, message.template]
    return clip(" · ".join(p for p in parts if p), FOOTER_LIMIT // 2)
