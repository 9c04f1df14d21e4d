"""Who may ask, approve and operate: decided by configuration, and by the platforms for the
groups it names."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.config import load_settings
from pipeline.exceptions import MembershipUnknown
from pipeline.requests.authorisation import ask_groups_with, may_approve, may_operate, may_request
from pipeline.requests.store import Origin


def test_users_and_roles_both_grant_access() -> None:
    settings = load_settings(
        authorised_users=["slack:U1", "discord-role:42"],
        approvers=["discord:7"],
        operators=["discord-role:99"],
    )
    assert may_request(settings, Origin("slack", "U1"))
    assert not may_request(settings, Origin("slack", "U2"))
    assert may_request(settings, Origin("discord", "5", roles=("41", "42")))
    assert not may_request(settings, Origin("discord", "5", roles=("41",)))
    # A role id from one platform never matches another platform's role entry.
    assert not may_request(settings, Origin("slack", "U3", roles=("42",)))
    assert may_approve(settings, Origin("discord", "7"), "discord:5", "low")
    assert may_operate(settings, Origin("discord", "8", roles=("99",)))
    assert not may_operate(settings, Origin("discord", "7"))


def test_high_risk_needs_a_second_person() -> None:
    settings = load_settings(authorised_users=["slack:U1"], approvers=["slack:U1", "slack:U2"])
    decision = may_approve(settings, Origin("slack", "U1"), "slack:U1", "high")
    assert not decision and "other than its requester" in decision.reason
    assert may_approve(settings, Origin("slack", "U2"), "slack:U1", "high")
    assert may_approve(settings, Origin("slack", "U1"), "slack:U1", "medium")


class Teams:
    """A membership as the bot registers it, asked of a platform that knows ``members``
    (group → user ids), or that cannot be reached (``down``)."""

    def __init__(self, members: dict[str, set[str]], down: bool = False) -> None:
        self.members = members
        self.down = down
        self.asked: list[tuple[str, str]] = []

    def __call__(self, who: Origin, group: str) -> bool:
        self.asked.append((who.principal, group))
        if self.down:
            raise MembershipUnknown(group, "the platform answered 503")
        return who.user in self.members.get(group, set())


@pytest.fixture
def teams() -> Iterator[Teams]:
    teams = Teams({"slack:@deployers": {"U2"}, "github:@acme/ops": {"octocat"}})
    ask_groups_with(teams)
    yield teams
    ask_groups_with(None)


def test_a_group_entry_admits_its_members_of_its_own_platform_only(teams: Teams) -> None:
    settings = load_settings(
        authorised_users=["slack:U1", "slack:@deployers", "github:@acme/ops"],
        approvers=["slack:@deployers"],
        operators=["github:@acme/ops"],
    )
    assert may_request(settings, Origin("slack", "U2"))
    assert may_approve(settings, Origin("slack", "U2"), "slack:U1", "high")
    assert may_operate(settings, Origin("github", "octocat"))
    refused = may_approve(settings, Origin("slack", "U3"), "slack:U1", "low")
    assert not refused and refused.reason == "only approvers may approve or reject a plan"
    assert not may_operate(settings, Origin("slack", "U2"))
    # A listed person is allowed without asking; a Slack user is never asked about a team.
    teams.asked.clear()
    assert may_request(settings, Origin("slack", "U1"))
    assert not may_operate(settings, Origin("slack", "octocat"))
    assert teams.asked == []


def test_a_group_that_cannot_be_asked_refuses_with_the_reason(teams: Teams) -> None:
    settings = load_settings(authorised_users=["slack:U1"], approvers=["slack:@deployers"])
    teams.down = True
    refused = may_approve(settings, Origin("slack", "U2"), "slack:U1", "low")
    assert not refused
    assert refused.reason == (
        "could not check whether slack:U2 is in slack:@deployers: the platform answered 503"
    )


def test_without_a_membership_to_ask_a_group_entry_admits_nobody() -> None:
    settings = load_settings(authorised_users=["slack:@deployers"])
    refused = may_request(settings, Origin("slack", "U2"))
    assert not refused and "no platform can be asked" in refused.reason
