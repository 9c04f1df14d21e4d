"""The front ends as the core sees them (bot/platforms.py): each builds nothing and serves
nothing unless its settings configure it, and names its own people."""

from __future__ import annotations

import pytest
import redis
from pydantic import SecretStr

from bot.base import Wiring
from bot.console import SINCE_ENV
from bot.inbox import Inbox
from bot.platforms import BY_NAME, PLATFORMS
from bot.server import http_server
from pipeline.config import Settings
from pipeline.requests.store import RequestStore


def test_an_unconfigured_platform_builds_nothing_and_mounts_nothing(
    settings: Settings, conn: redis.Redis
) -> None:
    wiring = Wiring(settings, RequestStore(conn), Inbox(conn))
    for platform in PLATFORMS:
        assert platform.build(wiring) is None, platform.name
        assert platform.serve(settings, conn) is None, platform.name
    server, served = http_server(settings, conn, "test")
    assert served == []
    assert {route.path for route in server.app.routes} == {
        "/healthz",
        "/metrics",
        "/alerts/alertmanager",
        "/alerts/sentry",
        "/alerts/webhook",
    }


def test_a_configured_platform_mounts_its_route(settings: Settings, conn: redis.Redis) -> None:
    github = settings.github.model_copy(
        update={
            "repos": ["acme/api"],
            "token": SecretStr("ghp_test"),
            "webhook_secret": SecretStr("It's a Secret to Everybody"),
        }
    )
    configured = settings.model_copy(update={"github": github})
    assert [p for p in configured.platforms() if p.enabled] == [github]
    server, served = http_server(configured, conn, "test")
    assert "/github/webhook" in {route.path for route in server.app.routes}
    assert [route.front for each in served for route in each.routes] == ["github"]


def test_the_console_is_built_only_for_a_terminal(
    settings: Settings, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SINCE_ENV, "0")  # the console notes when it began there
    console = BY_NAME["console"]
    terminal = Wiring(settings, RequestStore(conn), Inbox(conn), terminal=True)
    built = console.build(terminal)
    assert built is not None and built.platform == "console"


def test_each_platform_is_listed_once_and_names_its_own_people() -> None:
    assert len(BY_NAME) == len(PLATFORMS)
    assert BY_NAME["slack"].naming.person("U1ALICE") == "<@U1ALICE>"
    assert BY_NAME["github"].naming.person("-bad-") is None
