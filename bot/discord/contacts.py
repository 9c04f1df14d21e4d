"""Who reached Molt how, lately: where a private answer can go.

An interaction's token lives 15 minutes, so an answer follows up the person's interaction
while it lasts (a deferred slash command first, which shows "thinking" until then), else
replies to their last message command. Kept on the client's loop only, for the last
``USERS_KEPT`` people, eight contacts each.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import discord

from pipeline.requests.store import Request

#: Interaction tokens live 15 min; follow-ups stop trying a little before.
TOKEN_LIFETIME = 14 * 60
USERS_KEPT = 1000


@dataclass(eq=False)
class Contact:
    """The last ways a person reached Molt: where a private answer can go."""

    channel_id: int | None
    interaction: discord.Interaction | None = None
    message: discord.Message | None = None
    #: A deferred slash command still shows "thinking" until its first follow-up.
    thinking: bool = False
    #: The command makes a request, whose status is posted in the channel.
    request: bool = False
    at: float = 0.0
    wall: float = 0.0

    def __post_init__(self) -> None:
        self.at = self.at or time.monotonic()
        self.wall = self.wall or time.time()

    @property
    def recent(self) -> bool:
        return time.monotonic() - self.at < TOKEN_LIFETIME

    @property
    def usable(self) -> bool:
        """A message can always be replied to; an interaction's token expires."""
        return self.interaction is None or self.recent


class Contacts:
    """Each person's latest contacts, oldest first."""

    def __init__(self) -> None:
        self._by_user: OrderedDict[str, deque[Contact]] = OrderedDict()

    def note(self, user: str, contact: Contact) -> None:
        contacts = self._by_user.setdefault(user, deque(maxlen=8))
        contacts.append(contact)
        self._by_user.move_to_end(user)
        while len(self._by_user) > USERS_KEPT:
            self._by_user.popitem(last=False)

    def _usable(self, user: str) -> list[Contact]:
        return [c for c in self._by_user.get(user, ()) if c.usable]

    def waiting(self, user: str, channel_id: int | None = None) -> Contact | None:
        """The oldest slash command of ``user`` still waiting for its first answer."""
        for contact in self._usable(user):
            if contact.thinking and (channel_id is None or contact.channel_id == channel_id):
                return contact
        return None

    def asked_for(self, request: Request, channel_id: int) -> Contact | None:
        """The waiting slash command that ``request`` came from, as far as can be told."""
        for contact in self._usable(request.origin.user):
            if (
                contact.thinking
                and contact.request
                and contact.channel_id == channel_id
                and contact.wall <= request.created_at + 1
            ):
                return contact
        return None

    def followable(self, user: str) -> list[Contact]:
        """Interactions a private answer can follow up: a waiting slash command first,
        else the person's latest contact if it was an interaction."""
        usable = self._usable(user)
        first = [c for c in usable if c.thinking]
        if not first and usable and usable[-1].interaction is not None:
            first = [usable[-1]]
        return first

    def said(self, user: str) -> Contact | None:
        """The person's latest message command."""
        for contact in reversed(self._by_user.get(user, ())):
            if contact.message is not None:
                return contact
        return None

    def answered(self, contact: Contact) -> None:
        contact.thinking = False

    def forget(self, user: str, contact: Contact) -> None:
        contacts = self._by_user.get(user)
        if contacts is not None and contact in contacts:
            contacts.remove(contact)
