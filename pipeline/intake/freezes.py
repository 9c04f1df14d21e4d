"""Freeze windows: when a target takes no deploy and no change, and until when.

A ``[[freeze]]`` table of molt.toml (pipeline/config.py ``Freeze``) is weekly or one-off. A
weekly one is in force from ``from`` on the first day of each run of consecutive listed
days until ``to`` on its last day, or on the day after when ``to`` is not later than
``from`` (it crosses midnight): fri, sat, sun from 16:00 to 09:00 is Friday 16:00 to Monday
09:00; a single day from 22:00 to 06:00 is that night. Times are the wall clock of the
table's ``timezone``, daylight-saving changes included (zoneinfo). Windows that touch or
overlap are one freeze: "frozen until" is the end of the last.

A frozen target refuses a deploy or a change in words at plan time (``gate``; the request
ends blocked, check "freeze") and again when the approved update starts, before its
snapshot (pipeline/update/jobs.py). Rollbacks, an incident's recovery among them, are never
held. An operator of the target may break glass (``deploy <ref> --break-glass <reason>``):
the plan shows the freeze and the reason, and only a second operator's approval runs it
(``may_approve``); the request and the approval are both audited. A rollout is held by a
freeze on any of its steps' targets, and breaks glass for all of them at once
(pipeline/update/rollouts.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pipeline.config import WEEKDAYS, Freeze, Settings
from pipeline.requests import authorisation
from pipeline.requests.decisions import ALLOWED, Decision
from pipeline.requests.store import Origin, Request

CHECK = "freeze"
#: Windows chained end to end, at most, when working out "frozen until".
_CHAIN = 64
#: Until this far ahead a time is named by its weekday alone ("Mon 09:00").
_THIS_WEEK = timedelta(days=6)


@dataclass(frozen=True)
class Frozen:
    """A target in a freeze: until when (UTC), why, and the zone the time is told in."""

    target: str
    until: datetime
    reason: str
    timezone: str

    def when(self, now: datetime) -> str:
        return _told(self.until, self.timezone, now)

    def message(self, now: datetime) -> str:
        return f"{self.target} is frozen until {self.when(now)}: {self.reason}"


def _runs(days: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    """Each run of consecutive weekdays (Sunday runs into Monday): its first day and length."""
    for day in days:
        if (day - 1) % 7 not in days:
            length = 1
            while (day + length) % 7 in days:
                length += 1
            yield day, length


def holding(freeze: Freeze, at: datetime) -> datetime | None:
    """The end (UTC) of ``freeze``'s window that holds the instant ``at``, or None."""
    at = at.astimezone(UTC)
    if not freeze.weekly:
        assert freeze.start is not None and freeze.end is not None
        return freeze.end if freeze.start <= at < freeze.end else None
    assert freeze.opens is not None and freeze.closes is not None
    zone = ZoneInfo(freeze.timezone)
    today = at.astimezone(zone).date()
    crosses = freeze.closes <= freeze.opens
    for first, length in _runs(freeze.days):
        back = (today.weekday() - first) % 7
        for opened in (today - timedelta(days=back), today - timedelta(days=back + 7)):
            closed = opened + timedelta(days=length - 1 + crosses)
            opens = datetime.combine(opened, freeze.opens, zone).astimezone(UTC)
            closes = datetime.combine(closed, freeze.closes, zone).astimezone(UTC)
            if opens <= at < closes:
                return closes
    return None


def applies(freeze: Freeze, target: str) -> bool:
    return not freeze.targets or target in freeze.targets


def frozen(settings: Settings, now: datetime | None = None) -> Frozen | None:
    """Whether the target ``settings`` are the view of is frozen at ``now``, and until when:
    the end of the window in force that lasts longest, and of each one in force then."""
    now = now or datetime.now(UTC)
    target = settings.target_name
    mine = [f for f in settings.freeze if applies(f, target)]
    held = [(end, f) for f in mine if (end := holding(f, now)) is not None]
    if not held:
        return None
    until, first = max(held, key=lambda pair: (pair[0], -pair[1].number))
    last = first
    for _ in range(_CHAIN):
        later = [(end, f) for f in mine if (end := holding(f, until)) is not None]
        if not later:
            break
        until, last = max(later, key=lambda pair: (pair[0], -pair[1].number))
    return Frozen(target, until, first.reason, last.timezone)


def _told(instant: datetime, zone: str, now: datetime) -> str:
    """A time as people read it in ``zone``: "Mon 09:00 Europe/London", with the date
    when it is more than six days away."""
    local = instant.astimezone(ZoneInfo(zone))
    day = f"{local:%a}" if instant - now <= _THIS_WEEK else f"{local:%a} {local.day} {local:%b %Y}"
    return f"{day} {local:%H:%M} {zone}"


#: How the sentence saying how to break glass begins.
_HINT = "To deploy anyway"


def break_glass_hint(settings: Settings) -> str:
    """How to deploy into a freeze anyway, as the refusals say it."""
    named = f"{settings.target_name} " if settings.fleet else ""
    return (
        f"{_HINT}, an operator may break glass: `deploy {named}<ref> --break-glass "
        "<reason>`, which a second operator approves"
    )


def without_hint(reason: str) -> str:
    """A freeze's refusal without how to break glass (a rollout's step: its rollout says how)."""
    return reason.split(f". {_HINT}", 1)[0]


def gate(settings: Settings, request: Request, now: datetime | None = None) -> Decision:
    """At plan time and when the approved update starts: a frozen target refuses a deploy or
    a change, saying until when and how to break glass. A rollback is never held, and a
    break-glass deploy was (or will be) approved by a second operator."""
    if request.command == "rollback" or request.break_glass:
        return ALLOWED
    now = now or datetime.now(UTC)
    found = frozen(settings, now)
    if found is None:
        return ALLOWED
    return Decision(False, f"{found.message(now)}. {break_glass_hint(settings)}", CHECK)


def may_break_glass(settings: Settings, request: Request) -> Decision:
    """Only an operator of the target may ask to deploy into a freeze."""
    if not request.break_glass or authorisation.may_operate(settings, request.origin):
        return ALLOWED
    where = settings.target_name if settings.fleet else "this target"
    return Decision(
        False, f"only an operator of {where} may break glass (MOLT_OPERATORS)", authorisation.CHECK
    )


def may_approve(settings: Settings, who: Origin, request: Request) -> Decision:
    """A break-glass plan is approved by an operator who is not its requester."""
    if not request.break_glass:
        return ALLOWED
    if who.principal == request.requester:
        return Decision(
            False,
            "breaking glass needs a second operator's approval: the requester cannot approve "
            "their own",
            authorisation.CHECK,
        )
    if not authorisation.may_operate(settings, who):
        return Decision(
            False,
            "breaking glass needs a second operator's approval (MOLT_OPERATORS)",
            authorisation.CHECK,
        )
    return ALLOWED


def glass(settings: Settings, request: Request, now: datetime | None = None) -> dict[str, Any]:
    """What a break-glass plan shows and the audit keeps: why, by whom, and the freeze it
    breaks ("" if none is in force now)."""
    now = now or datetime.now(UTC)
    found = frozen(settings, now)
    return {
        "reason": request.break_glass,
        "by": request.requester,
        "freeze": found.message(now) if found else "",
    }


def describe(freeze: Freeze) -> str:
    """When a window is in force, spelt out so that what the table means is plain: "weekly,
    fri 16:00 to mon 09:00 Europe/London"."""
    if not freeze.weekly:
        assert freeze.start is not None and freeze.end is not None
        zone = ZoneInfo(freeze.timezone)
        start, end = (
            t.astimezone(zone).strftime("%Y-%m-%d %H:%M") for t in (freeze.start, freeze.end)
        )
        return f"{start} to {end} {freeze.timezone}"
    assert freeze.opens is not None and freeze.closes is not None
    crosses = freeze.closes <= freeze.opens
    spans = []
    for first, length in _runs(freeze.days):
        opens, closes = WEEKDAYS[first], WEEKDAYS[(first + length - 1 + crosses) % 7]
        closing = f"{freeze.closes:%H:%M}" if closes == opens else f"{closes} {freeze.closes:%H:%M}"
        spans.append(f"{opens} {freeze.opens:%H:%M} to {closing}")
    return f"weekly, {', '.join(spans)} {freeze.timezone}"


def listing(settings: Settings, now: datetime | None = None) -> dict[str, Any]:
    """Every window (of the target, for a target's view in a fleet), and which are in force:
    what ``freezes`` shows."""
    now = now or datetime.now(UTC)
    whole = settings.fleet and settings.target_name not in settings.targets  # every target
    windows = []
    for freeze in settings.freeze:
        if not whole and not applies(freeze, settings.target_name):
            continue
        end = holding(freeze, now)
        windows.append(
            {
                "number": freeze.number,
                "reason": freeze.reason,
                "targets": list(freeze.targets),
                "when": describe(freeze),
                "in_force": end is not None,
                "until": _told(end, freeze.timezone, now) if end is not None else "",
            }
        )
    found = None if whole else frozen(settings, now)
    return {
        "windows": windows,
        "target_name": settings.target_name if settings.fleet and not whole else "",
        "frozen": found.message(now) if found else "",
    }
