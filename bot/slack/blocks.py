"""Messages as Block Kit: header, text, fields and buttons within Slack's limits, the
Request changes modal, and mrkdwn that request text cannot turn into a mention or a link.

The people Molt names (bot/people.py) become mentions, ``<@U1ALICE>``, which Slack shows by
name and which notify that person; they are written in after the text is escaped.

Every message Molt posts carries metadata of ``event_type`` ``molt_update`` with its
request id, template and codename, for tools that read the channel.
"""

from __future__ import annotations

import json
import re
from typing import Any

from bot import fitting, people
from bot.fitting import units
from bot.messages import Button, Message
from bot.slack import NAMING

#: The buttons Molt puts on messages; the action id is ``molt_<action>``.
ACTIONS = ("approve", "reject", "retry", "fix")
#: Request changes opens this modal; submitting it re-plans.
REVISION_VIEW = "molt_revise"
#: ``event_type`` of the metadata on every message Molt posts.
EVENT_TYPE = "molt_update"

# Block Kit limits (https://docs.slack.dev/reference/block-kit/blocks).
MAX_BLOCKS = 50
HEADER_LIMIT = 150
SECTION_LIMIT = 3000
FIELD_LIMIT = 2000
FIELDS_PER_SECTION = 10
BUTTONS_PER_BLOCK = 25
BUTTON_LABEL_LIMIT = 75
BUTTON_VALUE_LIMIT = 2000
FALLBACK_LIMIT = 3000
#: Slack refuses a message whose blocks hold much more than ~12,000 characters in all
#: (``msg_blocks_too_long``), a limit it does not document; stay well under it.
BLOCKS_TEXT_BUDGET = 11_000
#: Body text beyond this is cut, so the fields (risk, target, commits) still fit.
TEXT_BUDGET = 6000

_DOUBLE_BOLD = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")
#: What a cut may leave of an escape (``&lt;``) or a mention (``<@U1AL``): Slack would
#: show it as it is. Escaped text has no ``<`` but the mentions written in after.
_TORN = re.compile(r"&[a-z]{0,3}$|<[^<>]*$")


def to_blocks(message: Message) -> list[dict[str, Any]]:
    """``message`` as Block Kit: header, text, fields, buttons, within Slack's limits."""
    blocks: list[dict[str, Any]] = []
    budget = BLOCKS_TEXT_BUDGET
    title = " ".join(people.unmarked(message.title).split())
    if title:
        title = _clip(title, HEADER_LIMIT)
        blocks.append(
            {"type": "header", "text": {"type": "plain_text", "text": title, "emoji": True}}
        )
        budget -= units(title)
    actions = _actions(message)
    room = MAX_BLOCKS - len(blocks) - len(actions) - 1  # one spare for a "more" note

    text = mrkdwn(message.text).strip()
    if text:
        allowance = min(TEXT_BUDGET, budget)
        cut = _clip(text, allowance)
        pieces = fitting.pieces(cut, SECTION_LIMIT, torn=_TORN)[:room]
        for piece in pieces:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": piece}})
            budget -= units(piece)
        room -= len(pieces)

    blocks.extend(_field_blocks(message, budget, room))
    blocks.extend(actions)
    if not blocks:
        fallback = mrkdwn(message.marked()).strip() or message.template or "Molt"
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip(fallback, SECTION_LIMIT)}}
        )
    return blocks[:MAX_BLOCKS]


def _field_blocks(message: Message, budget: int, room: int) -> list[dict[str, Any]]:
    """The fields, ten to a section, within what is left of the budget and the blocks; a
    note says how many did not fit."""
    shown: list[str] = []
    for field in message.fields:
        if budget < 100:
            break
        name = mrkdwn(" ".join(field.name.split()))
        value = mrkdwn(field.value).strip()
        entry = f"*{name}*\n{value}" if name else value
        if not entry.strip("* \n"):
            continue
        entry = _clip(entry, min(FIELD_LIMIT, budget))
        shown.append(entry)
        budget -= units(entry)
    sections = [shown[i : i + FIELDS_PER_SECTION] for i in range(0, len(shown), FIELDS_PER_SECTION)]
    kept = sections[: max(room, 0)]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "fields": [{"type": "mrkdwn", "text": t} for t in group]}
        for group in kept
    ]
    left_out = len(message.fields) - sum(len(g) for g in kept)
    if left_out > 0:
        note = f"…and {left_out} more field{'s' if left_out != 1 else ''} not shown"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": note}]})
    return blocks


def _actions(message: Message) -> list[dict[str, Any]]:
    elements = [_button(b, message) for b in message.buttons if b.label.strip() and b.action]
    return [
        {"type": "actions", "elements": elements[i : i + BUTTONS_PER_BLOCK]}
        for i in range(0, min(len(elements), BUTTONS_PER_BLOCK * 2), BUTTONS_PER_BLOCK)
    ]


def _button(button: Button, message: Message) -> dict[str, Any]:
    label = _clip(" ".join(button.label.split()), BUTTON_LABEL_LIMIT)
    element: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": label, "emoji": True},
        "action_id": f"molt_{button.action}",
        "value": (button.value or message.request_id)[:BUTTON_VALUE_LIMIT],
    }
    if button.style in ("primary", "danger"):
        element["style"] = button.style
    if button.action == "reject" or button.style == "danger":
        element["confirm"] = _confirm(button, message)
    return element


def _confirm(button: Button, message: Message) -> dict[str, Any]:
    """A second question before a click that cannot be taken back."""
    name = message.codename or button.value or message.request_id or "this request"
    if button.action == "reject":
        title = "Reject this plan?"
        text = f"{name} will not be applied and the request ends here."
        yes = "Reject"
    else:
        title = f"{' '.join(button.label.split())}?"
        text = f"This cannot be undone for {name}."
        yes = " ".join(button.label.split())
    return {
        "title": {"type": "plain_text", "text": _clip(title, 100)},
        "text": {"type": "plain_text", "text": _clip(text, 300)},
        "confirm": {"type": "plain_text", "text": _clip(yes, 30)},
        "deny": {"type": "plain_text", "text": "Keep it"},
        "style": "danger",
    }


def mrkdwn(text: str) -> str:
    """Light Markdown as Slack mrkdwn: ``*bold*`` stays, ``**bold**`` becomes it, ``& < >``
    are escaped so request text cannot become a mention or a link, and then the people
    Molt names become mentions."""
    return _named(_DOUBLE_BOLD.sub(r"*\1*", _escape(text)))


def _named(escaped: str) -> str:
    return people.address(escaped, NAMING)


def _escape(text: str) -> str:
    """Slack's three control characters, as it wants them in any text it parses."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    """``text`` within ``limit`` units, with an ellipsis, never ending in half an escape
    or half a mention."""
    return fitting.clip(text, limit, torn=_TORN)


def content(message: Message, request_id: str, codename: str) -> dict[str, Any]:
    """What every message Molt sends carries: blocks, a plain fallback, and metadata."""
    payload: dict[str, Any] = {"request_id": request_id, "template": message.template}
    if codename:
        payload["codename"] = codename
    if message.target:
        payload["target"] = message.target
    # The fallback shows in notifications, where <!channel> would still ping.
    fallback = _named(_escape(message.marked().strip() or message.template or "Molt"))
    return {
        "text": _clip(fallback, FALLBACK_LIMIT),
        "blocks": to_blocks(message),
        "metadata": {"event_type": EVENT_TYPE, "event_payload": payload},
    }


def revision_view(request_id: str, channel: str) -> dict[str, Any]:
    """The Request changes modal; the request and channel ride in private_metadata."""
    return {
        "type": "modal",
        "callback_id": REVISION_VIEW,
        "private_metadata": json.dumps({"request_id": request_id, "channel": channel}),
        "title": {"type": "plain_text", "text": "Request changes"},
        "submit": {"type": "plain_text", "text": "Plan again"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": "note",
                "label": {"type": "plain_text", "text": "What should change?"},
                "hint": {
                    "type": "plain_text",
                    "text": "The plan is voided and made again with this. "
                    "For a deploy, `deploy <ref>` picks another ref.",
                },
                "element": {
                    "type": "plain_text_input",
                    "action_id": "note",
                    "multiline": True,
                    "max_length": 2000,
                },
            }
        ],
    }
