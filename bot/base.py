"""The small interface every chat front end implements.

An adapter parses platform input, acks it at once, and hands the text or the
button press to the ``Desk`` (bot/desk.py), which calls pipeline/ off the
platform's thread. Messages come back through ``deliver`` (a request's
conversation, from the notifier) and ``reply`` (an answer to one person that
belongs to no request: help, status, a refused click).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import Future
from typing import Any

from bot.messages import Message
from pipeline.requests import Origin, Request


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

    def show_home(self, origin: Origin, message: Message) -> None:  # noqa: B027 - optional
        """A home view, where the platform has one (Slack's App Home); else nothing."""
