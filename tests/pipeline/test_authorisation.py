"""Who may ask, approve and operate: decided by configuration alone."""

from __future__ import annotations

from pipeline.config import load_settings
from pipeline.requests.authorisation import may_approve, may_operate, may_request
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
