"""One platform-neutral message, rendered from a template; each adapter turns
it into Block Kit, a Discord embed, a GitHub comment or console text.

Its title, text and fields carry the people Molt names marked (bot/people.py): an adapter
names them with ``people.address`` after its own escaping; ``plain()`` shows them as the
context gave them."""

from __future__ import annotations

from dataclasses import dataclass

from bot import people


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
    #: The fleet's target the message is about ("" with one target).
    target: str = ""
    #: Shown only to one person (refusals, a refused click) rather than posted.
    private: bool = False

    def plain(self) -> str:
        """The message as plain text, people as the context gave them (the CLI, logs)."""
        return people.unmarked(self.marked())

    def marked(self) -> str:
        """The message as plain text with its people still marked, for an adapter to name
        (notification fallbacks, the console)."""
        lines = [self.title]
        if self.text:
            lines.append(self.text)
        lines.extend(f"{f.name}: {f.value}" for f in self.fields)
        return "\n".join(lines)
