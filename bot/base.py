"""The small interface every chat front end implements.

An adapter parses platform input, acks it at once, and hands the text or the
button press to the ``Desk`` (bot/desk.py), which calls pipeline/ off the
platform's thread. Messages come back through ``deliver`` (a request's
conversation, from the notifier) and ``reply`` (an answer to one person that
belongs to no request: help, status, a refused click).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any

from bot.messages import Message
from pipeline.requests.store import Origin, Request


class MessageRefs:
    """Where each request's status message is, kept beside Redis too, so a redelivery
    after a failed store write edits the message rather than posting it again."""

    def __init__(self, kept: int = 1000) -> None:
        self._kept = kept
        self._refs: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, request_id: str, ref: dict[str, str]) -> None:
        with self._lock:
            self._refs[request_id] = ref
            self._refs.move_to_end(request_id)
            while len(self._refs) > self._kept:
                self._refs.popitem(last=False)

    def get(self, request_id: str) -> dict[str, str] | None:
        with self._lock:
            return self._refs.get(request_id)


class Front(ABC):
    """Where adapters hand what people say and press: the desk, or the inbox in front of it.

    Both return at once; the future completes when the work is done.
    """

    @abstractmethod
    def say(self, origin: Origin, text: str) -> Future[Any]: ...

    @abstractmethod
    def press(self, origin: Origin, action: str, request_id: str) -> Future[Any]: ...

    @abstractmethod
    def revise(self, origin: Origin, request_id: str, note: str) -> Future[Any]:
        """Request changes: plan ``request_id`` again with ``note``."""

    @abstractmethod
    def answer(self, origin: Origin, request_id: str, text: str) -> Future[Any]:
        """Answers to the planner's questions on ``request_id``."""

    @abstractmethod
    def home(self, origin: Origin) -> Future[Any]:
        """Show ``origin``'s home view (Slack's App Home): current update, queue, history."""


class Adapter(ABC):
    #: The platform prefix of principals and origins: console, slack, discord, github.
    platform: str = ""
    #: What ``help`` lists besides the grammar: the platform's own ways of doing things.
    help_lines: tuple[str, ...] = ()

    def start(self) -> None:  # noqa: B027 - an optional hook
        """Connect; called once by ``molt run`` before the notifier starts."""

    def stop(self) -> None:  # noqa: B027 - an optional hook
        """Disconnect; pending deliveries stay in the event stream."""

    @abstractmethod
    def deliver(self, request: Request, message: Message) -> None:
        """Show ``message`` in the request's conversation.

        The first message of a request is posted; later ones update it in place
        where the platform allows (the adapter keeps its handle with
        ``RequestStore.update(request.id, message_ref=...)``). A private message
        goes to the requester only. Raising leaves the event unacknowledged, so
        it is delivered again.
        """

    @abstractmethod
    def reply(self, origin: Origin, message: Message) -> None:
        """Answer one person, outside any request's conversation."""

    def act_on(self, request: Request, template: str) -> bool:
        """Work on the platform that an event of ``request`` asks for besides showing it,
        whatever platform the request came from (GitHub opens the pull request of a proposed
        change); true if it changed the request. Raising leaves the event to be tried again."""
        return False

    def announce(self, channel: str, message: Message, thread: str = "") -> None:
        """Post ``message`` in ``channel`` for everyone there (an incident, from
        MOLT_INCIDENT_CHANNEL; ``thread`` is the incident's id); where a platform has no such
        post, an answer there."""
        self.reply(Origin(self.platform, "", channel), message)

    def show_home(self, origin: Origin, message: Message) -> None:  # noqa: B027 - optional
        """A home view, where the platform has one (Slack's App Home); else nothing."""
