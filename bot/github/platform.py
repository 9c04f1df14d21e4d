"""How Molt builds the GitHub front end (bot/platforms.py lists it): the adapter and its poller
in the bot's process, the webhook in the HTTP process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.base import HttpRoute, Platform, Served, Wiring
from bot.github import NAMING
from pipeline.config import Settings

if TYPE_CHECKING:
    import redis

    from bot.github.adapter import GitHub

#: Where GitHub's webhook deliveries arrive; GitHub caps a payload at 25 MB.
WEBHOOK = "/github/webhook"
WEBHOOK_LIMIT = 25 * 1024 * 1024


def _build(wiring: Wiring) -> GitHub | None:
    if not wiring.settings.github.enabled:
        return None
    from bot.github.adapter import GitHub

    github = GitHub(wiring.settings, wiring.store)
    github.desk = wiring.desk
    return github


def _serve(settings: Settings, conn: redis.Redis) -> Served | None:
    """The webhook, where a secret signs deliveries; without one GitHub is polled only."""
    secret = settings.github.webhook_secret
    if not (settings.github.enabled and secret and secret.get_secret_value()):
        return None
    from bot.github.webhook import Webhook

    hook = Webhook(conn, secret.get_secret_value(), settings.github.repos)
    return Served([HttpRoute("github", WEBHOOK, hook.serve, WEBHOOK_LIMIT)])


PLATFORM = Platform(naming=NAMING, build=_build, serve=_serve)
