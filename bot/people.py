"""People in messages: a principal (``<platform>:<id>``, as the audit and MOLT_*_USERS write
it) named the way its own platform names a person.

``slack:U1ALICE`` is named ``<@U1ALICE>`` in Slack, ``github:octocat`` is ``@octocat`` on
GitHub and ``console:bob`` is ``bob`` in the console: each front end declares how (its
``Naming``, which its ``Platform`` in bot/platforms.py carries), and an id it would not
accept stays a principal.

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
from dataclasses import dataclass
from typing import Any

__all__ = ["Naming", "address", "mark", "name", "unmarked", "vouched"]

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


@dataclass(frozen=True)
class Naming:
    """How a platform names its own people (each front end declares one; its ``Platform``
    carries it): the prefix of its principals, and the person as named from the id after
    it, or None for an id it would not accept, which then stays a principal."""

    platform: str
    person: Callable[[str], str | None]


def name(principal: str, naming: Naming) -> str:
    """``principal`` as ``naming``'s platform names that person; as it is when it is not of
    that platform."""
    home, _, user = principal.partition(":")
    return (naming.person(user) if home == naming.platform else None) or principal


def mark(principal: str, shown: str = "") -> str:
    """``principal`` framed for an adapter to name; ``shown`` where nobody names it."""
    extra = f"{SHOWN}{shown}" if shown and shown != principal else ""
    return f"{OPEN}{principal}{extra}{CLOSE}"


def unmarked(text: str) -> str:
    """``text`` with each person as the context gave them (a requester by display name), for
    plain text and surfaces without mentions."""
    return _strip(_MARKED.sub(lambda found: found["shown"] or found["who"], text))


def address(text: str, naming: Naming) -> str:
    """``text`` with each marked principal named as ``naming`` says, and no marks left."""
    return _strip(_MARKED.sub(lambda found: name(found["who"], naming), text))


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
