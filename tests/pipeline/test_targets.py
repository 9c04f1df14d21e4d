"""A fleet's targets in molt.toml: each table over the global settings, names checked,
and a bad table stopping start-up naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import MOLT_HOME, load_settings
from pipeline.exceptions import ConfigError
from pipeline.keyspace import TargetKeys

FLEET = """
MOLT_PHASE_TIMEOUT = 100
MOLT_AUTHORISED_USERS = "console:alice"
MOLT_OPERATORS = "console:olga"

[targets.api]
dir = "{api}"
test_command = "make test"
operators = ["console:ada"]
channels = ["C1API"]

[targets.web]
dir = "{web}"
phase_timeout = 5
"""


def _configure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    config = tmp_path / "molt.toml"
    config.write_text(text.format(api=tmp_path / "api", web=tmp_path / "web"))
    monkeypatch.setenv("MOLT_CONFIG", str(config))


def test_each_target_sees_its_own_keys_over_the_global_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _configure(monkeypatch, tmp_path, FLEET)
    settings = load_settings()
    assert settings.fleet and settings.target_names() == ["api", "web"]
    api, web = settings.for_target("api"), settings.for_target("web")
    assert (api.target_dir, api.test_command, api.phase_timeout) == (
        tmp_path / "api",
        "make test",
        100.0,
    )
    assert (web.target_dir, web.phase_timeout, web.test_command) == (
        tmp_path / "web",
        5.0,
        "python -m pytest -q",  # derived again for its own directory
    )
    assert api.operators == ["console:ada"] and web.operators == ["console:olga"]
    assert api.channels == ["C1API"] and web.channels == []
    assert (api.target_id, TargetKeys(web.target_id).lock) == ("api", "molt:lock:web")
    assert api.for_target("web") is web


def test_without_targets_there_is_one_named_after_its_directory() -> None:
    settings = load_settings()
    assert not settings.fleet
    assert settings.target_names() == [MOLT_HOME.name]
    assert settings.for_target("anything") is settings
    assert settings.target_id.startswith(f"{MOLT_HOME.name}-")


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ("[targets.api]\nphase_timeout = -1\n", "targets.api.phase_timeout"),
        ("[targets.api]\ncolour = 'red'\n", "targets.api.colour"),
        ("[targets.api]\nautonomy = 'yolo'\n", "targets.api.autonomy"),
        ("[targets.api]\napprovers = ['bob']\n", "targets.api.approvers"),
        ("[targets.API]\ndir = '/tmp'\n", "targets.API"),
        ("[targets.a_b]\ndir = '/tmp'\n", "targets.a_b"),
    ],
)
def test_a_bad_target_table_stops_start_up_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, table: str, named: str
) -> None:
    _configure(monkeypatch, tmp_path, table)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert named in str(caught.value)


def test_an_unknown_target_is_named_with_the_known_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _configure(monkeypatch, tmp_path, FLEET)
    with pytest.raises(ConfigError, match="no target 'db': known are api, web"):
        load_settings().for_target("db")
