"""Settings: defaults that follow from each other, molt.toml, and readable errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field, SecretStr

from bot import cli
from pipeline.config import (
    MOLT_HOME,
    SECRET_VARIABLES,
    PlatformSettings,
    Settings,
    load_settings,
)
from pipeline.exceptions import ConfigError
from pipeline.redaction import MASK, redact


def test_defaults_manage_molt_itself_and_let_the_console_user_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MOLT_CONSOLE_USER", "alice")
    settings = load_settings()
    assert settings.target_dir == MOLT_HOME and settings.manages_itself
    assert settings.authorised_users == ["console:alice"]
    assert settings.approvers == ["console:alice"]
    assert settings.operators == ["console:alice"]
    assert (
        settings.test_command == "python -m pytest -q -n 4 --dist worksteal"
    )  # its suite, as scripts/test runs it
    assert settings.data_dir == (Path.cwd() / ".molt").resolve()


def test_flaky_tests_fail_a_phase_and_progress_refreshes_every_15_s_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings()
    assert settings.flaky == "fail"
    assert settings.progress_interval == 15
    monkeypatch.setenv("MOLT_FLAKY", " Pass ")
    assert load_settings().flaky == "pass"


def test_lists_are_comma_separated_and_approvers_default_to_the_authorised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MOLT_AUTHORISED_USERS", " slack:U1 , console:bob,")
    settings = load_settings()
    assert settings.authorised_users == ["slack:U1", "console:bob"]
    assert settings.approvers == ["slack:U1", "console:bob"]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MOLT_PHASE_TIMEOUT", "soon", "MOLT_PHASE_TIMEOUT"),
        ("MOLT_PHASE_TIMEOUT", "-5", "greater than 0"),
        ("MOLT_QUEUE_MAX", "many", "MOLT_QUEUE_MAX"),
        ("MOLT_HTTP_PORT", "70000", "MOLT_HTTP_PORT"),
        ("MOLT_AUTHORISED_USERS", "alice", "expected platform:id entries"),
        ("MOLT_REFUSAL_THEME", "pirate", "expected one of"),
        ("MOLT_SLACK_COMMAND", "molt", "MOLT_SLACK_COMMAND"),
        ("MOLT_FLAKY", "retry", "expected one of fail, pass"),
        ("MOLT_PROGRESS_INTERVAL", "0.5", "greater than or equal to 2"),
        # A pattern holds to the end of the value: a line break after it is not let through.
        ("MOLT_SLACK_COMMAND", "/molt\n", "MOLT_SLACK_COMMAND"),
        ("GITHUB_APP_ID", "12345\n", "GITHUB_APP_ID"),
        ("MOLT_CONSOLE_USER", "alice\nbob", "MOLT_CONSOLE_USER"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_it_expected(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert expected in str(caught.value)
    assert variable in str(caught.value)


def test_molt_toml_sets_the_same_keys_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "molt.toml"
    config.write_text('MOLT_QUEUE_MAX = 3\nMOLT_TEST_COMMAND = "make test"\n')
    monkeypatch.setenv("MOLT_CONFIG", str(config))
    monkeypatch.setenv("MOLT_TEST_COMMAND", "tox")
    settings = load_settings()
    assert settings.queue_max == 3
    assert settings.test_command == "tox"


def test_secrets_never_appear_in_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1234567890-secret")
    monkeypatch.setenv("SLACK_API_URL", "ftp://nowhere")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "SLACK_API_URL" in str(caught.value)
    assert "xoxb-1234567890-secret" not in str(caught.value)


def test_the_cli_stops_with_the_message_on_a_bad_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MOLT_PLAN_TTL", "forever")
    with pytest.raises(SystemExit) as caught:
        cli.main(["status"])
    assert "MOLT_PLAN_TTL" in str(caught.value.code)


def test_each_platform_reads_its_keys_by_their_own_variables_from_both_places(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "molt.toml"
    config.write_text(
        'SLACK_BOT_TOKEN = "xoxb-from-the-file"\nSLACK_SIGNING_SECRET = "signing-file"\n'
        'MOLT_GITHUB_REPOS = ["acme/api"]\ngithub_token = "ghp_from_the_file"\n'
    )
    monkeypatch.setenv("MOLT_CONFIG", str(config))
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-from-the-environment")
    monkeypatch.setenv("MOLT_DISCORD_CHANNELS", "1300, 1301")
    settings = load_settings()
    assert settings.slack.bot_token == SecretStr("xoxb-from-the-environment")
    assert settings.slack.signing_secret == SecretStr("signing-file")
    assert settings.slack.enabled
    assert settings.github.repos == ["acme/api"] and settings.github.enabled
    assert settings.discord.channels == ["1300", "1301"] and not settings.discord.enabled
    with pytest.raises(ConfigError) as caught:
        load_settings(discord_channels="general")
    assert "MOLT_DISCORD_CHANNELS: expected comma-separated numeric channel ids" in str(
        caught.value
    )


def test_every_configured_credential_is_redacted_the_redis_password_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://molt:hunter2-redis@127.0.0.1:6399/0")
    monkeypatch.setenv("DISCORD_TOKEN", "discord-token-1234")
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", "webhook-secret-1234")
    monkeypatch.setenv("MOLT_UI_TOKEN", "ui-token-1234")
    said = redact(
        "redis hunter2-redis, discord-token-1234, webhook-secret-1234, ui-token-1234",
        load_settings().secrets(),
    )
    for secret in ("hunter2-redis", "discord-token-1234", "webhook-secret-1234", "ui-token"):
        assert secret not in said
    assert {"REDIS_URL", "DISCORD_TOKEN", "GITHUB_WEBHOOK_SECRET"} <= SECRET_VARIABLES


class _EchoSettings(PlatformSettings):
    """A platform's settings as a new front end would add them."""

    channel = r"echo:\w+"
    key: SecretStr | None = Field(None, validation_alias="ECHO_KEY")


class _Grown(Settings):
    """Settings that grew a token and a platform, listed nowhere else."""

    pager_token: SecretStr | None = Field(None, validation_alias="MOLT_PAGER_TOKEN")
    echo: _EchoSettings = Field(default_factory=lambda: _EchoSettings())


def test_a_new_secret_typed_setting_is_redacted_without_being_listed_anywhere() -> None:
    grown = _Grown(
        MOLT_PAGER_TOKEN="pager-token-5678", echo=_EchoSettings(ECHO_KEY="echo-key-5678")
    )
    assert redact("paged with pager-token-5678 and echo-key-5678", grown.secrets()) == (
        f"paged with {MASK} and {MASK}"
    )


ROLLOUT_TARGETS = """
[targets.web-staging]
dir = "/srv/web"
[targets.web-1]
dir = "/srv/web"
[targets.web-2]
dir = "/srv/web"
"""


def test_a_rollout_table_is_read_with_its_durations_and_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "molt.toml"
    config.write_text(
        ROLLOUT_TARGETS
        + '[rollouts.web]\nfrom = "web-staging"\nsoak = "10m"\nsteps = ["web-1", "web-2"]\n'
        + 'approvers = ["slack:U123", "github:alice"]\n'
        + '[rollouts.quick]\nsteps = ["web-2"]\non_failure = "stop"\n'
    )
    monkeypatch.setenv("MOLT_CONFIG", str(config))
    settings = load_settings()
    web = settings.rollout("web")
    assert (web.source, web.soak, web.steps, web.on_failure) == (
        "web-staging",
        600.0,
        ("web-1", "web-2"),
        "rollback-all",
    )
    assert web.approvers == ("slack:U123", "github:alice")
    quick = settings.rollout("quick")
    assert (quick.source, quick.soak, quick.on_failure) == ("", 0.0, "stop")
    assert settings.rollout_names() == ["quick", "web"]


@pytest.mark.parametrize(
    ("table", "named", "expected"),
    [
        (
            'steps = ["web-1"]\nsoak = "10 minutes"\nfrom = "web-staging"',
            "rollouts.web.soak",
            "a duration",
        ),
        ('steps = ["web-3"]', "rollouts.web.steps", "no target 'web-3'"),
        ("steps = []", "rollouts.web.steps", "a list of target names"),
        ('steps = ["web-1"]\nfrom = "db"', "rollouts.web.from", "expected a target"),
        ('steps = ["web-1"]\non_failure = "retry"', "rollouts.web.on_failure", "'rollback-all'"),
        ('steps = ["web-1"]\nsoak = "5m"', "rollouts.web.soak", "needs `from`"),
        ('steps = ["web-1"]\ncanary = "web-1"', "rollouts.web.canary", "not a rollout setting"),
    ],
)
def test_a_bad_rollout_table_stops_start_up_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, table: str, named: str, expected: str
) -> None:
    config = tmp_path / "molt.toml"
    config.write_text(ROLLOUT_TARGETS + f"[rollouts.web]\n{table}\n")
    monkeypatch.setenv("MOLT_CONFIG", str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert named in str(caught.value) and expected in str(caught.value)


def test_a_rollout_cannot_have_a_targets_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "molt.toml"
    config.write_text(ROLLOUT_TARGETS + '[rollouts.web-1]\nsteps = ["web-2"]\n')
    monkeypatch.setenv("MOLT_CONFIG", str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "rollouts.web-1: a rollout cannot have the name of a target" in str(caught.value)
