"""Group entries of the user lists: a malformed one stops start-up naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import groups
from pipeline.config import load_settings
from tests.desk import molt


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
