"""People in messages: a principal (``<platform>:<id>``, as the audit and MOLT_*_USERS write
it) named the way its own platform names a person.

=========  ===================  =====================================================
platform   principal            named as
=========  ===================  =====================================================
slack      ``slack:U1ALICE``    ``<@U1ALICE>`` (a mention; Slack shows the name)
discord    ``discord:1300…``    ``<@1300…>`` (a mention; embeds never ping)
github     ``github:octocat``   ``@octocat``
console    ``console:bob``      ``bob``
=========  ===================  =====================================================

Another platform's principal, and Molt's own (``molt:auto``), stay as they are.

Only the principals Molt itself puts in a message are named: rendering marks the people
fields of the context (``requester``, ``approver``, an audit entry's ``actor``) and the one
who acted in the pipeline's own sentences ("approved by slack:U1ALICE", "emergency stop by
console:bob"), and each adapter names what is marked. A principal written in request text,
a note, a plan or test output is never marked, so nobody can be mentioned by what a
requester writes; marks found in the context are removed before any are added.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["address", "mark", "name", "unmarked", "vouched"]

#: Unicode noncharacters, which text from outside never carries (any found is removed):
#: they frame a principal Molt vouches for, from rendering until an adapter names it, and
#: part it from the name shown where nobody names it (a requester's display name).
OPEN, SHOWN, CLOSE = "\ufdd0", "\ufdd1", "\ufdd2"

#: A principal as a whole value: ``platform:id`` (ids as Slack, Discord, GitHub and console
#: users have them; a dot inside, never at the end, for console names like ``ana.lima``).
PRINCIPAL = re.compile(r"[a-z][a-z0-9-]*:[\w@-]+(?:\.[\w@-]+)*")
_PART = f"[^{OPEN}{SHOWN}{CLOSE}]*"
_MARKED = re.compile(f"{OPEN}(?P<who>{_PART})(?:{SHOWN}(?P<shown>{_PART}))?{CLOSE}")
_MARKS = re.compile(f"[{OPEN}{SHOWN}{CLOSE}]")

#: The pipeline's own sentences naming who acted (pipeline/intake/approval.py, intake.py, jobs.py,
#: control.py). Only the principal at the start is theirs; a note after it is not.
_ACTED = re.compile(
    r"^(?P<said>(?:approved|rejected|answered|(?:retry \d+|changes) asked|emergency stop) by "
    r"|this plan was already \w+ by |cleared from the queue by an emergency stop \()"
    rf"(?P<who>{PRINCIPAL.pattern})"
)
#: Context keys whose whole value is a person.
_PEOPLE = ("requester", "requester_id", "approver", "actor")
#: Context keys holding the pipeline's sentences, where ``_ACTED`` is looked for.
_SENTENCES = ("message", "reason")
#: Context keys holding what a requester or a model wrote: nothing in them is vouched for.
_UNVOUCHED = frozenset({"plan", "result", "text", "answers", "questions", "note"})

_SLACK_USER = re.compile(r"[UW][A-Z0-9]+")
_DISCORD_USER = re.compile(r"\d{1,20}")
_GITHUB_LOGIN = re.compile(r"[A-Za-z0-9](?:-?[A-Za-z0-9])*")


def _slack(user: str) -> str | None:
    return f"<@{user}>" if _SLACK_USER.fullmatch(user) else None


def _discord(user: str) -> str | None:
    return f"<@{user}>" if _DISCORD_USER.fullmatch(user) else None


def _github(user: str) -> str | None:
    return f"@{user}" if _GITHUB_LOGIN.fullmatch(user) else None


def _console(user: str) -> str | None:
    return user or None


#: How each platform names one of its own people; an id it would not accept stays a principal.
RULES: dict[str, Callable[[str], str | None]] = {
    "slack": _slack,
    "discord": _discord,
    "github": _github,
    "console": _console,
}


def name(principal: str, platform: str) -> str:
    """``principal`` as ``platform`` names that person; as it is when it is not of ``platform``."""
    home, _, user = principal.partition(":")
    rule = RULES.get(platform) if home == platform else None
    return (rule(user) if rule else None) or principal


def mark(principal: str, shown: str = "") -> str:
    """``principal`` framed for an adapter to name; ``shown`` where nobody names it."""
    extra = f"{SHOWN}{shown}" if shown and shown != principal else ""
    return f"{OPEN}{principal}{extra}{CLOSE}"


def unmarked(text: str) -> str:
    """``text`` with each person as the context gave them (a requester by display name), for
    plain text and surfaces without mentions."""
    return _strip(_MARKED.sub(lambda found: found["shown"] or found["who"], text))


def address(text: str, platform: str) -> str:
    """``text`` with each marked principal named as ``platform`` names it, and no marks left."""
    return _strip(_MARKED.sub(lambda found: name(found["who"], platform), text))


def _strip(text: str) -> str:
    return _MARKS.sub("", text)


def vouched(context: dict[str, Any]) -> dict[str, Any]:
    """A copy of a template's ``context`` with the people Molt itself names in it marked.

    A request's ``requester`` is its display name; where its principal (``requester_id``)
    is known, that is shown instead, for the adapter to name.
    """
    copied: dict[str, Any] = _value("", context, trusted=True)
    return copied


def _value(key: str, value: Any, trusted: bool) -> Any:
    trusted = trusted and key not in _UNVOUCHED
    if isinstance(value, str):
        value = _strip(value)
        if trusted and key in _PEOPLE and PRINCIPAL.fullmatch(value):
            return mark(value)
        if trusted and key in _SENTENCES:
            return _ACTED.sub(lambda found: found["said"] + mark(found["who"]), value, count=1)
        return value
    if isinstance(value, dict):
        copied = {k: _value(str(k), v, trusted) for k, v in value.items()}
        principal = _strip(str(value.get("requester_id") or ""))
        if trusted and PRINCIPAL.fullmatch(principal):
            copied["requester"] = mark(principal, _strip(str(value.get("requester") or "")))
        return copied
    if isinstance(value, list | tuple):
        return [_value(key, item, trusted) for item in value]
    return value
