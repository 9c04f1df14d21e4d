"""Who may ask, who may approve, who may operate. Decided from configuration
only: nothing a requester writes can change it."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import Settings


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


ALLOWED = Decision(True)


def may_request(settings: Settings, principal: str) -> Decision:
    if principal in settings.authorised_users:
        return ALLOWED
    return Decision(False, f"{principal} is not in MOLT_AUTHORISED_USERS")


def may_approve(settings: Settings, principal: str, requester: str, risk: str) -> Decision:
    if principal not in settings.approvers:
        return Decision(False, "only approvers may approve or reject a plan")
    if risk == "high" and principal == requester:
        return Decision(False, "a high-risk plan needs an approver other than its requester")
    return ALLOWED


def may_operate(settings: Settings, principal: str) -> Decision:
    if principal in settings.operators:
        return ALLOWED
    return Decision(False, "only operators may do that")
