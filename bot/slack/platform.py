"""How Molt builds the Slack front end (bot/platforms.py lists it): in the bot's process to show
messages, and in the HTTP process to take what people send."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.base import HttpRoute, Platform, Served, Wiring
from bot.slack import NAMING
from pipeline.config import Settings
from pipeline.requests.store import RequestStore

if TYPE_CHECKING:
    import redis

    from bot.slack.adapter import Slack

#: Where Slack's Events API and interactivity requests arrive, and the largest body read.
EVENTS = "/slack/events"
EVENTS_LIMIT = 1_000_000


def _build(wiring: Wiring) -> Slack | None:
    """In the bot's process Slack only shows messages: what people send arrives in the HTTP
    process (``_serve``)."""
    if not wiring.settings.slack.enabled:
        return None
    from bot.slack.adapter import Slack

    slack = Slack(wiring.settings, wiring.store)
    slack.desk = wiring.desk
    return slack


def _serve(settings: Settings, conn: redis.Redis) -> Served | None:
    """An adapter (started) handing what arrives to the inbox: behind /slack/events, or on
    its Socket Mode connection."""
    if not settings.slack.enabled:
        return None
    from bot.inbox import Inbox
    from bot.slack.adapter import Slack

    slack = Slack(settings, RequestStore(conn))
    slack.desk = Inbox(conn)
    slack.start()
    if settings.slack.app_token:
        slack.connect_socket_mode()
        return Served([], slack.stop)
    return Served([HttpRoute("slack", EVENTS, slack.endpoint, EVENTS_LIMIT)], slack.stop)


PLATFORM = Platform(naming=NAMING, build=_build, serve=_serve)
