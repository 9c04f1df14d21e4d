"""The small interface every chat front end implements.

An adapter parses platform input, acks it at once, and hands the text or the
button press to the ``Desk`` (bot/desk.py), which calls pipeline/ off the
platform's thread. Messages come back through ``deliver`` (a request's
conversation, from the notifier) and ``reply`` (an answer to one person that
belongs to no request: help, status, a refused click).

Each front end declares itself with a ``Platform`` (bot/platforms.py lists them): how it is
built from the settings, what it mounts on the HTTP server, and how it names a person.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.messages import Message
from bot.people import Naming
from pipeline.config import Settings
from pipeline.requests.store import Origin, Request, RequestStore

if TYPE_CHECKING:
    import redis
    from starlette.requests import Request as HttpRequest
    from starlette.responses import Response


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


@dataclass(frozen=True)
class Wiring:
    """What a front end is built from in the bot's process."""

    settings: Settings
    store: RequestStore
    #: Where its input goes.
    desk: Front
    #: The terminal is a chat of its own (``molt run`` with the console).
    terminal: bool = False


@dataclass(frozen=True)
class HttpRoute:
    """A POST route a front end mounts on the HTTP server; its ack time is measured as
    ``molt_ack_seconds{front=...}``, and no body over ``body_limit`` bytes is read."""

    front: str
    path: str
    endpoint: Callable[[HttpRequest], Awaitable[Response]]
    body_limit: int


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Served:
    """What a front end runs in the HTTP process: its routes, and how to stop what it
    started for them (a Socket Mode connection)."""

    routes: list[HttpRoute] = field(default_factory=list)
    stop: Callable[[], None] = _nothing


def _serves_nothing(settings: Settings, conn: redis.Redis) -> Served | None:
    return None


@dataclass(frozen=True)
class Platform:
    """One front end, as the core sees it. The adapter's own modules are imported only by
    ``build`` and ``serve``, so that an unconfigured platform costs no import."""

    #: Its name, the prefix of its principals and origins (``slack:U1ALICE``), and how it
    #: names one of its people (``<@U1ALICE>``).
    naming: Naming
    #: Its adapter in the bot's process; None when it is not configured.
    build: Callable[[Wiring], Adapter | None]
    #: What it serves in the HTTP process; None when nothing.
    serve: Callable[[Settings, redis.Redis], Served | None] = _serves_nothing

    @property
    def name(self) -> str:
        return self.naming.platform
