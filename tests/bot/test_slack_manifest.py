"""slack/manifest.yml creates the app Molt's Slack front end expects, with the least scopes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.config import MOLT_HOME, load_settings

MANIFEST = MOLT_HOME / "slack" / "manifest.yml"


def _manifest() -> dict[str, Any]:
    return dict(yaml.safe_load(Path(MANIFEST).read_text()))


def test_the_manifest_declares_the_command_interactivity_home_and_socket_mode() -> None:
    manifest = _manifest()
    assert manifest["_metadata"]["major_version"] == 2
    [command] = manifest["features"]["slash_commands"]
    assert command["command"] == load_settings().slack.command
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
    settings = manifest["settings"]
    assert settings["interactivity"]["is_enabled"] is True
    assert settings["socket_mode_enabled"] is True
    assert set(settings["event_subscriptions"]["bot_events"]) == {
        "app_home_opened",
        "message.channels",
        "message.groups",
    }


def test_the_manifest_asks_for_the_smallest_set_of_scopes() -> None:
    scopes = _manifest()["oauth_config"]["scopes"]
    assert set(scopes) == {"bot"}
    assert set(scopes["bot"]) == {"commands", "chat:write", "channels:history", "groups:history"}
