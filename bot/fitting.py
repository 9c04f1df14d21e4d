"""Fitting text into a platform's limits, as the platforms count length.

Slack and Discord both count UTF-16 code units (an emoji may count twice) and refuse a
message that is too long rather than cut it, so every adapter cuts here, the same way.
A platform whose text carries escapes (Slack's ``&lt;``) names what a cut may leave torn
at the end, and that goes too.
"""

from __future__ import annotations

import re

ELLIPSIS = "…"
_CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.DOTALL)
_SINGLE_BOLD = re.compile(r"(?<![*\w])\*(?![\s*])([^*\n]+?)(?<![\s*])\*(?![*\w])")


def units(text: str) -> int:
    """Length as the platforms count it: UTF-16 code units, never under their count."""
    return len(text.encode("utf-16-le")) // 2


def fit(text: str, limit: int, *, torn: re.Pattern[str] | None = None) -> str:
    """The longest start of ``text`` within ``limit`` units, less what ``torn`` matches
    at its end (an escape cut in half)."""
    if units(text) <= limit:
        return text
    head = text[: max(limit, 0)]
    excess = units(head) - limit
    while excess > 0 and head:
        excess -= units(head[-1])
        head = head[:-1]
    return torn.sub("", head) if torn is not None else head


def clip(text: str, limit: int, *, torn: re.Pattern[str] | None = None) -> str:
    """``text`` within ``limit`` units, ending in an ellipsis when something was cut."""
    if units(text) <= limit:
        return text
    if limit <= 1:
        return ELLIPSIS[: max(limit, 0)]
    return fit(text, limit - 1, torn=torn).rstrip() + ELLIPSIS


def pieces(text: str, limit: int, *, torn: re.Pattern[str] | None = None) -> list[str]:
    """``text`` in pieces of at most ``limit`` units, cut at line ends where possible."""
    found: list[str] = []
    rest = text
    while rest:
        if units(rest) <= limit:
            head = rest
        else:
            head = fit(rest, limit, torn=torn)
            newline = head.rfind("\n")
            if newline > len(head) // 2:
                head = head[:newline]
            if not head:  # cannot happen with sane limits; never loop forever
                head = rest[:1]
        if head.strip():
            found.append(head.rstrip())
        rest = rest[len(head) :].lstrip("\n")
    return found


def double_bold(text: str) -> str:
    """Templates write Slack's ``*bold*``, which Discord and GitHub show in italics: make it
    ``**bold**`` (code spans are left as they are)."""
    parts = _CODE.split(text)
    return "".join(p if i % 2 else _SINGLE_BOLD.sub(r"**\1**", p) for i, p in enumerate(parts))
