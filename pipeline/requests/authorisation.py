"""Who may ask, who may approve, who may operate. Decided from configuration
only: nothing a requester writes can change it."""

from __future__ import annotations

from pipeline.config import Settings
from pipeline.requests.decisions import ALLOWED, Decision
from pipeline.requests.store import Origin

CHECK = "authorisation"
#: The requester of a rollback Molt raised for an incident (pipeline/incidents/oncall.py). No
#: platform's user id holds a colon, so nobody who writes to Molt can be this.
RECOVERY_USER = "molt:incident"


def _on_list(who: Origin, entries: list[str]) -> bool:
    return not who.identities.isdisjoint(entries)


def may_request(settings: Settings, who: Origin) -> Decision:
    if _on_list(who, settings.authorised_users):
        return ALLOWED
    return Decision(False, f"{who.principal} is not in MOLT_AUTHORISED_USERS", CHECK)


def may_approve(settings: Settings, who: Origin, requester: str, risk: str) -> Decision:
    if not _on_list(who, settings.approvers):
        return Decision(False, "only approvers may approve or reject a plan", CHECK)
    if risk == "high" and who.principal == requester:
        return Decision(False, "a high-risk plan needs an approver other than its requester", CHECK)
    return ALLOWED


def may_operate(settings: Settings, who: Origin) -> Decision:
    if _on_list(who, settings.operators):
        return ALLOWED
    return Decision(False, "only operators may do that", CHECK)


def raised_by_molt(who: Origin) -> bool:
    """Whether Molt itself raised the request, for an incident (never a person)."""
    return who.user == RECOVERY_USER
