"""The Discord adapter: the discord.py client on a thread of its own, with its own event
loop, beside Slack and the HTTP server in ``molt run``.

The notifier's deliveries are scheduled onto the client's loop and waited for, so a failure
leaves the event in the stream to be delivered again. The client connects again after a
failure, except one no retry fixes (a refused token, the Message Content intent off):
then Discord stays off, deliveries fail at once, and everything else keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import discord
import structlog

from bot.base import Adapter
from bot.discord.contacts import Contacts
from bot.discord.delivery import Delivery
from bot.discord.gateway import RATE_LIMIT_CAP, Client
from bot.discord.listeners import Listeners
from bot.messages import Message
from pipeline.config import Settings
from pipeline.exceptions import ConfigError
from pipeline.requests.store import Origin, Request, RequestStore

if TYPE_CHECKING:
    from bot.base import Front

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: How long the notifier waits for the client to be logged in before leaving the event.
LOGIN_WAIT = 5.0
CALL_TIMEOUT = RATE_LIMIT_CAP + 10
STOP_TIMEOUT = 10.0
#: Gateway close codes after which connecting again cannot help.
FATAL_CLOSE_CODES = frozenset({4004, 4010, 4011, 4012, 4013, 4014})

MISSING_INTENT = (
    "Discord refused the connection because the Message Content intent is off for this bot. "
    "Turn on Developer Portal > Applications > (your app) > Bot > Privileged Gateway Intents > "
    "MESSAGE CONTENT INTENT, then restart Molt. Discord stays off until then; everything else "
    "keeps running."
)


class Discord(Adapter):
    platform = "discord"

    def __init__(self, settings: Settings, store: RequestStore) -> None:
        token = settings.discord.token.get_secret_value() if settings.discord.token else ""
        if not token.strip():
            raise ConfigError("DISCORD_TOKEN is needed for Discord")
        self.settings = settings
        self.store = store
        self.desk: Front | None = None
        self._token = token.strip()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        self._wake: asyncio.Event | None = None
        self._closing: asyncio.Future[None] | None = None
        self._logged_in = threading.Event()
        self._stopping = threading.Event()
        #: Why Discord stays off (a refused token or intent), so deliveries fail at once.
        self._off = ""
        # Only touched on the client's loop:
        contacts = Contacts()
        channels = frozenset(int(c) for c in settings.discord.channels)
        self.listeners = Listeners(
            settings.discord.prefix, channels, contacts, desk=lambda: self.desk
        )
        self.delivery = Delivery(self._connected, contacts)

    # -- life cycle --------------------------------------------------------

    def start(self) -> None:
        """Connect in the background, so a slow Discord does not hold up start-up."""
        discord.http.Route.BASE = self.settings.discord.api_url.rstrip("/")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="molt-discord", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the gateway and the HTTP session; undelivered events stay in the stream."""
        self._stopping.set()
        loop, thread = self._loop, self._thread
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(self._begin_closing)
        if thread is not None:
            thread.join(timeout=STOP_TIMEOUT)
            if thread.is_alive():
                log.warning("the discord client did not stop in time")

    @property
    def logged_in(self) -> bool:
        return self._logged_in.is_set()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except Exception:
            log.exception("discord client stopped")
        finally:
            self._logged_in.clear()
            try:
                tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                self._loop = None
                loop.close()

    async def _serve(self) -> None:
        """Log in and stay connected; start over after a failure, except one no retry fixes."""
        self._wake = asyncio.Event()
        delay = 1.0
        while not self._stopping.is_set():
            client = Client(self.listeners, self._logged_in)
            self._client = client
            try:
                async with client:
                    if not self._stopping.is_set():
                        await client.start(self._token)
                return
            except discord.PrivilegedIntentsRequired:
                self._off = "the Message Content intent is off"
                log.error(MISSING_INTENT)
                print(f"molt: {MISSING_INTENT}", file=sys.stderr, flush=True)
                return
            except discord.LoginFailure:
                self._off = "DISCORD_TOKEN was refused"
                log.error("DISCORD_TOKEN was refused by Discord; Discord stays off")
                return
            except discord.ConnectionClosed as exc:
                if exc.code in FATAL_CLOSE_CODES:
                    self._off = f"the gateway closed with {exc.code}"
                    log.error("discord closed the gateway; Discord stays off", code=exc.code)
                    return
                log.warning("discord gateway closed; connecting again", code=exc.code)
            except Exception as exc:
                if self._stopping.is_set():
                    return
                log.warning("discord unreachable; connecting again", error=repr(exc), delay=delay)
            finally:
                if self._logged_in.is_set():
                    delay = 1.0  # it worked for a while: start again quickly
                self._logged_in.clear()
                await client.close()  # after a failed start too: its HTTP session
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            delay = min(delay * 2, 60.0)

    def _begin_closing(self) -> None:
        if self._wake is not None:
            self._wake.set()
        client = self._client
        if client is not None and not client.is_closed():
            self._closing = asyncio.ensure_future(self._close(client))

    async def _close(self, client: Client) -> None:
        await self.delivery.gates.flush(timeout=2.0)
        await client.close()

    def _connected(self) -> Client:
        client = self._client
        if client is None or client.is_closed():
            raise ConnectionError("discord: the client is not running")
        return client

    # -- outgoing (from the notifier's thread) -------------------------------

    def deliver(self, request: Request, message: Message) -> None:
        new_ref = self._call(lambda: self.delivery.deliver(request, message))
        if new_ref is not None:
            self.delivery.refs.remember(request.id, new_ref)
            self.store.update(request.id, message_ref=new_ref)

    def reply(self, origin: Origin, message: Message) -> None:
        self._call(lambda: self.delivery.private(origin, message, None))

    def announce(self, channel: str, message: Message, thread: str = "") -> None:
        self._call(lambda: self.delivery.announce(channel, message))

    def _call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine on the client's loop and wait for it; raise if it cannot be done."""
        if self._off:
            raise ConnectionError(f"discord is off: {self._off}")
        if not self._logged_in.wait(LOGIN_WAIT):
            raise ConnectionError("discord: not logged in")
        loop = self._loop
        if loop is None or loop.is_closed():
            raise ConnectionError("discord: the client is not running")
        coroutine = make()
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:
            coroutine.close()
            raise ConnectionError("discord: the client stopped") from None
        try:
            return future.result(timeout=CALL_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"discord did not answer within {CALL_TIMEOUT:.0f} s") from None
