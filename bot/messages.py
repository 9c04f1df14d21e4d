"""One platform-neutral message, rendered from a template; each adapter turns
it into Block Kit, a Discord embed, a GitHub comment or console text."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Button:
    label: str
    action: str  # approve | reject | retry
    value: str  # the request id
    style: str = ""  # primary | danger | ""


@dataclass(frozen=True)
class MessageField:
    name: str
    value: str


@dataclass(frozen=True)
class Message:
    template: str
    title: str
    text: str = ""
    fields: tuple[MessageField, ...] = ()
    buttons: tuple[Button, ...] = ()
    request_id: str = ""
    codename: str = ""
    #: Shown only to one person (refusals, a refused click) rather than posted.
    private: bool = False

    def plain(self) -> str:
        """The message as plain text (console, notification fallbacks)."""
        lines = [self.title]
        if self.text:
            lines.append(self.text)
        lines.extend(f"{f.name}: {f.value}" for f in self.fields)
        return "\n".join(lines)
