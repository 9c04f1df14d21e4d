"""Buttons and the Request changes modal: persistent views of dynamic items.

A button carries its action and request id in its custom_id (``molt:approve:r1a2b3c4d``)
and ``MoltButton`` is registered as a dynamic item at every start, so a plan posted before
Molt restarted can still be approved after. The modal's custom_id is
``molt:revision:<request id>``. Who may press what is decided by pipeline/ on every click,
never here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import discord

from bot.fitting import clip
from bot.messages import Message

#: The buttons Molt puts on messages. ``revise`` is Request changes: it opens a modal.
ACTIONS = ("approve", "reject", "retry", "revise", "fix")
#: A button's custom_id: ``molt:<action>:<request id>``.
BUTTON_ID = re.compile(
    r"molt:(?P<action>approve|reject|retry|revise|fix):(?P<request_id>[\w-]{1,64})"
)
#: The Request changes modal's custom_id, and the id of its one text input.
REVISION_ID = re.compile(r"molt:revision:(?P<request_id>[\w-]{1,64})")
NOTE_INPUT = "note"

CUSTOM_ID_LIMIT = 100
LABEL_LIMIT = 80
NOTE_LIMIT = 1000


@runtime_checkable
class Pressed(Protocol):
    """The client a click goes to (gateway.py's), named here so views need not import it."""

    async def pressed(
        self, interaction: discord.Interaction, action: str, request_id: str
    ) -> None: ...


@dataclass(frozen=True)
class ButtonSpec:
    action: str
    request_id: str
    label: str
    style: discord.ButtonStyle

    @property
    def custom_id(self) -> str:
        return f"molt:{self.action}:{self.request_id}"


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


def view(buttons: list[ButtonSpec]) -> discord.ui.View | None:
    """A persistent view (no timeout) of dynamic buttons; None clears a message's buttons.

    Built on the client's loop: a view needs a running one.
    """
    if not buttons:
        return None
    made = discord.ui.View(timeout=None)
    for spec in buttons:
        made.add_item(MoltButton(spec.action, spec.request_id, label=spec.label, style=spec.style))
    return made


def with_view(buttons: list[ButtonSpec]) -> dict[str, Any]:
    """``view=`` for a send, or nothing: a send refuses ``view=None``."""
    made = view(buttons)
    return {"view": made} if made is not None else {}


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
                label=clip(label or action.title(), LABEL_LIMIT),
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
        if isinstance(client, Pressed):
            await client.pressed(interaction, self.action, self.request_id)


def revision_modal(request_id: str) -> discord.ui.Modal:
    """Request changes: what should change. Its submission is handled by the listeners'
    ``on_interaction`` (not the view store), so it works the same if Molt restarted meanwhile."""
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
