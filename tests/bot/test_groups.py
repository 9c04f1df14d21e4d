"""Group entries of the user lists: a malformed one stops start-up naming its key; answers
are kept in Redis for MOLT_GROUP_TTL; a worker asks no platform."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import groups
from pipeline import keyspace, store
from pipeline.config import Settings, load_settings
from pipeline.exceptions import MembershipUnknown
from pipeline.requests.store import Origin
from tests.desk import molt
from tests.fakes.discord import CHANNEL_ID, ROLE_APPROVERS, FakeDiscord, Person
from tests.fakes.discord import TOKEN as DISCORD_TOKEN
from tests.fakes.slack import BOT_TOKEN, FakeSlack


@pytest.mark.parametrize(
    ("variable", "entry", "said"),
    [
        ("MOLT_APPROVERS", "github:@acme", "expected github:@<org>/<team slug>"),
        ("MOLT_OPERATORS", "discord:@&ops", "expected discord:@&<role id>"),
        ("MOLT_AUTHORISED_USERS", "slack:@On Call", "expected slack:@<user group handle>"),
        ("MOLT_APPROVERS", "console:@admins", "console does not have"),
    ],
)
def test_a_malformed_group_entry_stops_start_up_naming_its_key(
    variable: str, entry: str, said: str
) -> None:
    refused = molt("status", env={variable: f"slack:U1ALICE,{entry}"})
    assert refused.returncode == 1
    assert f"invalid configuration: {variable}: " in refused.stderr
    assert said in refused.stderr and repr(entry) in refused.stderr


def test_a_malformed_group_in_a_target_table_is_named_by_its_table_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "molt.toml"
    config.write_text(
        f'[targets.api]\ndir = "{tmp_path / "api"}"\napprovers = ["slack:@oncall"]\n'
        f'[targets.web]\ndir = "{tmp_path / "web"}"\noperators = ["github:@acme/"]\n'
    )
    monkeypatch.setenv("MOLT_CONFIG", str(config))
    refused = molt("status")
    assert refused.returncode == 1
    assert (
        "invalid configuration: targets.web.operators: expected github:@<org>/<team slug>, "
        "got 'github:@acme/'" in refused.stderr
    )


def test_well_formed_groups_pass() -> None:
    groups.check(
        load_settings(
            authorised_users=["slack:@oncall", "github:@acme-corp/site-reliability"],
            approvers=["discord:@&1300000000000000041", "slack:U1ALICE"],
        )
    )


def _slack_settings(slack: FakeSlack, **values: object) -> Settings:
    return load_settings(
        approvers=["slack:@deployers"],
        slack_bot_token=BOT_TOKEN,
        slack_api_url=slack.url,
        **values,
    )


def _asked(slack: FakeSlack) -> int:
    return len(slack.calls("usergroups.list")) + len(slack.calls("usergroups.users.list"))


def test_an_answer_is_kept_for_the_ttl_yes_and_no_and_a_ttl_of_0_keeps_none() -> None:
    with FakeSlack() as slack:
        slack.add_usergroup("deployers", ["U2BOB"])
        settings = _slack_settings(slack)
        conn = store.connect(settings)
        members = groups.Groups(settings, conn)
        bob, mallory = Origin("slack", "U2BOB"), Origin("slack", "U9MALLORY")
        assert members(bob, "slack:@deployers") and not members(mallory, "slack:@deployers")
        asked = _asked(slack)
        assert members(bob, "slack:@deployers") and not members(mallory, "slack:@deployers")
        assert _asked(slack) == asked == 4
        kept = keyspace.group_answer("slack:@deployers", "slack:U2BOB")
        assert conn.get(kept) == "1" and 0 < conn.pttl(kept) <= 300_000

        conn.flushdb()
        uncached = groups.Groups(_slack_settings(slack, group_ttl=0), conn)
        assert uncached(bob, "slack:@deployers") and uncached(bob, "slack:@deployers")
        assert _asked(slack) == asked + 4
        assert conn.get(kept) is None


def test_a_worker_asks_no_platform_and_counts_a_group_as_the_bot_last_kept_it() -> None:
    with FakeSlack() as slack:
        slack.add_usergroup("deployers", ["U2BOB"])
        settings = _slack_settings(slack)
        conn = store.connect(settings)
        worker = groups.Groups(settings, conn, resolvers={})
        bob = Origin("slack", "U2BOB")
        with pytest.raises(MembershipUnknown, match="Slack is not asked from this process"):
            worker(bob, "slack:@deployers")
        assert groups.Groups(settings, conn)(bob, "slack:@deployers")  # the bot asks
        assert worker(bob, "slack:@deployers")
        assert _asked(slack) == 2


def test_a_discord_role_is_not_held_in_a_direct_message_and_no_answer_is_kept() -> None:
    bob = Person("1300000000000000103", "bob", (ROLE_APPROVERS,))
    with FakeDiscord() as discord:
        discord.join(bob)
        settings = load_settings(
            approvers=[f"discord:@&{ROLE_APPROVERS}"],
            discord_token=DISCORD_TOKEN,
            discord_api_url=discord.api_url,
        )
        conn = store.connect(settings)
        members = groups.Groups(settings, conn)
        group = f"discord:@&{ROLE_APPROVERS}"
        with pytest.raises(MembershipUnknown, match="this is not in one"):
            members(Origin("discord", bob.id, ""), group)
        assert conn.get(keyspace.group_answer(group, f"discord:{bob.id}")) is None
        assert members(Origin("discord", bob.id, CHANNEL_ID), group)
        assert not members(Origin("discord", "1300000000000000109", CHANNEL_ID), group)
