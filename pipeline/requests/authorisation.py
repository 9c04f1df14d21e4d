"""Who may ask, who may approve, who may operate. Decided from configuration: nothing a
requester writes can change it.

An entry of a user list is a person (``slack:U1ALICE``), a role the platform reports with
the input (``discord-role:42``), or a group (``<platform>:@…``: ``slack:@oncall``,
``github:@acme/ops``, ``discord:@&42``) whose members only the platform knows. A group is
asked of the ``Membership`` the bot registers at start (``ask_groups_with``), on every check,
as people are; when it cannot be asked, the check refuses with the reason (fail closed).
Nothing here knows a platform: only that a group entry's id begins with ``@``.
"""

from __future__ import annotations

from typing import Protocol

from pipeline.config import Settings
from pipeline.exceptions import MembershipUnknown
from pipeline.requests.decisions import ALLOWED, Decision
from pipeline.requests.store import Origin

CHECK = "authorisation"
#: The requester of a rollback Molt raised for an incident (pipeline/incidents/oncall.py). No
#: platform's user id holds a colon, so nobody who writes to Molt can be this.
RECOVERY_USER = "molt:incident"
#: What begins the id of an entry naming a group rather than a person.
GROUP_MARK = "@"


class Membership(Protocol):
    def __call__(self, who: Origin, group: str) -> bool:
        """Whether ``who`` is in ``group`` (an entry as the list spells it); raises
        ``MembershipUnknown`` when the platform cannot say."""
        ...


_membership: Membership | None = None


def ask_groups_with(membership: Membership | None) -> None:
    """How this process checks group entries (the bot's ``bot.groups.Groups``); None: it
    cannot, and a group entry refuses whoever it would have to vouch for."""
    global _membership
    _membership = membership


def is_group(entry: str) -> bool:
    return entry.partition(":")[2].startswith(GROUP_MARK)


def _on_list(who: Origin, entries: list[str]) -> Decision:
    """Allowed when ``who`` is listed, by themselves, a role or a group of their platform; a
    refusal with no reason when not; with the reason when a group could not be asked."""
    if not who.identities.isdisjoint(entries):
        return ALLOWED
    groups = [e for e in entries if is_group(e) and e.partition(":")[0] == who.platform]
    unknown: MembershipUnknown | None = None
    for group in groups:
        try:
            if _membership is None:
                raise MembershipUnknown(group, "no platform can be asked from here")
            if _membership(who, group):
                return ALLOWED
        except MembershipUnknown as exc:
            unknown = unknown or exc
    if unknown is not None:
        reason = f"could not check whether {who.principal} is in {unknown.group}: {unknown.reason}"
        return Decision(False, reason, CHECK)
    return Decision(False, "", CHECK)


def _refused(listed: Decision, reason: str) -> Decision:
    return Decision(False, listed.reason or reason, CHECK)


def may_request(settings: Settings, who: Origin) -> Decision:
    listed = _on_list(who, settings.authorised_users)
    if listed:
        return ALLOWED
    return _refused(listed, f"{who.principal} is not in MOLT_AUTHORISED_USERS")


def may_approve(settings: Settings, who: Origin, requester: str, risk: str) -> Decision:
    listed = _on_list(who, settings.approvers)
    if not listed:
        return _refused(listed, "only approvers may approve or reject a plan")
    if risk == "high" and who.principal == requester:
        return Decision(False, "a high-risk plan needs an approver other than its requester", CHECK)
    return ALLOWED


def may_operate(settings: Settings, who: Origin) -> Decision:
    listed = _on_list(who, settings.operators)
    if listed:
        return ALLOWED
    return _refused(listed, "only operators may do that")


def raised_by_molt(who: Origin) -> bool:
    """Whether Molt itself raised the request, for an incident (never a person)."""
    return who.user == RECOVERY_USER
