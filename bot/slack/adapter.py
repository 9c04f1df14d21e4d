"""The Slack adapter: a Bolt app and a Web API client, with Molt's listeners and delivery.

Bolt runs with ``process_before_response`` so the listeners' ack is the HTTP response, and
verifies every request's signature. In HTTP mode ``endpoint`` serves POST /slack/events;
in Socket Mode the same listeners get envelopes over a WebSocket.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import TYPE_CHECKING, Any

import structlog
from slack_bolt import App
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import RateLimitErrorRetryHandler, default_retry_handlers
from slack_sdk.web import SlackResponse
from starlette.requests import Request as HttpRequest
from starlette.responses import Response

from bot.base import Adapter
from bot.messages import Message
from bot.slack.delivery import Delivery, error_code
from bot.slack.endpoint import Endpoint
from bot.slack.listeners import Listeners
from pipeline.config import Settings
from pipeline.exceptions import ConfigError
from pipeline.requests.store import Origin, Request, RequestStore

if TYPE_CHECKING:
    from bot.base import Front

log = structlog.get_logger(__name__)


def _web_client(settings: Settings, token: str | None) -> WebClient:
    base_url = settings.slack.api_url
    return WebClient(
        token=token,
        base_url=base_url if base_url.endswith("/") else base_url + "/",
        timeout=15,
        # slack_sdk does not retry a 429 by itself.
        retry_handlers=[*default_retry_handlers(), RateLimitErrorRetryHandler(max_retry_count=3)],
    )


def _not_the_token_warning(record: logging.LogRecord) -> bool:
    """Bolt reads SLACK_BOT_TOKEN from the environment by itself, then warns at every start
    that the client it was given wins; that client carries no token on purpose."""
    return record.getMessage() != warning_client_prioritized_and_token_skipped()


class Slack(Adapter):
    platform = "slack"

    def __init__(self, settings: Settings, store: RequestStore) -> None:
        token = settings.slack.bot_token.get_secret_value() if settings.slack.bot_token else ""
        secret = (
            settings.slack.signing_secret.get_secret_value()
            if settings.slack.signing_secret
            else ""
        )
        if not token or not (secret or settings.slack.app_token):
            raise ConfigError(
                "Slack needs SLACK_BOT_TOKEN, and SLACK_SIGNING_SECRET (HTTP mode) or "
                "SLACK_APP_TOKEN (Socket Mode)"
            )
        self.settings = settings
        self.store = store
        self.client = _web_client(settings, token)
        #: auth.test of the bot token: who Molt is in Slack, asked once (``_identity``).
        self.identity: SlackResponse | None = None
        # Bolt learns who the app is from ``authorize``, so its client carries no token
        # (Bolt warns when both are given); each request's client gets the one ``authorize``
        # returns. Bolt's info lines would dump request bodies, legacy verification token
        # included.
        bolt_logger = logging.getLogger("bot.slack.bolt")
        if bolt_logger.level == logging.NOTSET:
            bolt_logger.setLevel(logging.WARNING)
            bolt_logger.addFilter(_not_the_token_warning)
        self.app = App(
            # Named here, since Bolt otherwise takes the caller's file name from
            # inspect.stack(), which reads the source of every frame on the stack.
            name="molt",
            client=_web_client(settings, None),
            authorize=lambda: self._authorize(),  # Bolt passes what a function names: nothing
            signing_secret=secret or None,
            request_verification_enabled=bool(secret),
            process_before_response=True,
            token_verification_enabled=False,
            logger=bolt_logger,
        )
        self.desk: Front | None = None
        self.socket_mode: Any = None
        self.events = Endpoint(self.app, secret)
        self.listeners = Listeners(
            self.app, self.client, store, settings.slack.command, desk=lambda: self.desk
        )
        self.delivery = Delivery(self.client, store)

    # -- life cycle --------------------------------------------------------

    def start(self) -> None:
        """Check the token in the background, so a slow Slack does not hold up a restart."""
        threading.Thread(target=self._warm_up, name="molt-slack-auth", daemon=True).start()
        self.listeners.start()

    def connect_socket_mode(self) -> None:
        """Socket Mode: envelopes over a WebSocket (no public URL), the same listeners.

        The client asks ``apps.connections.open`` for its URL, acks each envelope by its
        id, and reconnects by itself.
        """
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        token = self.settings.slack.app_token
        assert token is not None
        self.socket_mode = SocketModeHandler(
            self.app, token.get_secret_value(), web_client=self.client, ping_interval=2
        )
        self.socket_mode.connect()
        log.info("slack socket mode connected")

    def stop(self) -> None:
        if self.socket_mode is not None:
            _close_at_once(self.socket_mode.client)
            self.socket_mode = None
        self.listeners.stop()

    def _identity(self) -> SlackResponse:
        if self.identity is None:
            self.identity = self.client.auth_test()
        return self.identity

    def _authorize(self) -> AuthorizeResult:
        """Bolt's ``authorize``: the bot token and who it is, from the one auth.test."""
        identity = self._identity()
        return AuthorizeResult.from_auth_test_response(
            bot_token=self.client.token,
            bot_scopes=identity.headers.get("x-oauth-scopes"),
            auth_test_response=identity,
        )

    def _warm_up(self) -> None:
        """Ask ``auth.test`` at start, or the first command waits on it."""
        try:
            result = self._identity()
        except SlackApiError as exc:
            log.error("SLACK_BOT_TOKEN refused by auth.test", error=error_code(exc))
            return
        except Exception as exc:
            log.warning(
                "auth.test unreachable; Bolt will retry on the first request", error=str(exc)
            )
            return
        self.events.authorised = True
        log.info("slack connected", team=result.get("team"), bot_user=result.get("user_id"))

    # -- in and out --------------------------------------------------------

    async def endpoint(self, request: HttpRequest) -> Response:
        """POST /slack/events (HTTP mode)."""
        return await self.events.serve(request)

    def deliver(self, request: Request, message: Message) -> None:
        self.delivery.deliver(request, message)

    def reply(self, origin: Origin, message: Message) -> None:
        self.delivery.reply(origin, message)

    def announce(self, channel: str, message: Message, thread: str = "") -> None:
        self.delivery.announce(channel, message)

    def show_home(self, origin: Origin, message: Message) -> None:
        self.delivery.show_home(origin, message)


def _close_at_once(client: Any) -> None:
    """Close a Socket Mode client without sitting out its reads: the SDK's ``close`` waits
    for the read under way (up to its 3 s timeout) and for the envelope queue's (1 s), which
    held every stop of the bot up by as much. With the client marked closed, as ``close``
    first does, the socket is shut and the queue woken; ``close`` then still waits for the
    envelopes being handled."""
    client.closed = True
    client.auto_reconnect_enabled = False
    client.current_session_state.terminated = True
    session = client.current_session
    sock = session.sock if session is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    client.message_queue.put(None)
    client.close()
