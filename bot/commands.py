"""The command grammar, the same after `/molt`, `!molt`, a GitHub comment or the console:

deploy <ref> [--break-glass <reason>] · rollback [codename] · status · queue · history ·
review · incidents · freezes · pause · resume · stop · help · answer <text> · anything
else: a change request in plain words (a sentence: one or two words that are not a command
are an unknown command, answered with the nearest one)

With more than one target (a fleet), the target's name comes first: after the verb
(``deploy api v1.4``, ``rollback web``, ``status api``) or, for a change in words, before
a colon (``api: add a /ping route``). A rollout's name stands where a target's does
(``deploy web v1.4``, ``stop web``; bot/desk.py sends it to pipeline/update/rollouts.py).
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass, replace

MAX_LENGTH = 2000
OPERATOR_VERBS = frozenset(
    {
        "status",
        "queue",
        "history",
        "review",
        "incidents",
        "freezes",
        "pause",
        "resume",
        "stop",
        "rollback",
    }
)
#: What follows a deploy's ref to deploy into a freeze window, with the reason after it.
BREAK_GLASS = "--break-glass"
VERBS = frozenset({"deploy", "help", "answer"}) | OPERATOR_VERBS
#: Verbs that may name a target of a fleet after them.
TARGETED_VERBS = frozenset({"deploy"}) | OPERATOR_VERBS

HELP = (
    "deploy <ref> — plan deploying a branch, tag or commit; Approve to run it",
    "deploy <ref> --break-glass <reason> — deploy into a freeze window (operators; a second "
    "operator approves)",
    "rollback [codename] — return to the release before that update (default: the last one)",
    "status — what is running, what waits, which version is live",
    "queue — approved requests waiting their turn",
    "history — the last updates and how they ended",
    "review — plans waiting for approval and questions waiting for answers",
    "incidents — open and recent incidents, what Molt did and whether it held",
    "freezes — the freeze windows, and which are in force",
    "pause / resume — hold or release the start of new updates",
    "stop — emergency: roll back the running update and clear the queue",
    "answer <text> — answer the planner's questions on your newest request that asks",
    "help — this list",
    "anything else — a change described in words, planned for you to approve",
)


@dataclass(frozen=True)
class Command:
    verb: str  # one of VERBS, "change" for free text, "invalid" with ``error``
    argument: str = ""
    text: str = ""
    error: str = ""
    target: str = ""  # the target it names, in a fleet ("" if it names none)
    break_glass: str = ""  # a deploy's reason to go into a freeze window (--break-glass)


def _clean(text: str) -> str:
    """Drop control and format characters (zero-width tricks), fold whitespace."""
    kept = "".join(ch if ch in "\n\t" or unicodedata.category(ch)[0] != "C" else " " for ch in text)
    return re.sub(r"[ \t]+", " ", kept).strip()


def parse(text: str, targets: Collection[str] = ()) -> Command:
    """The command ``text`` asks for; with ``targets`` (a fleet), also the one it names."""
    if not targets or len(text) > MAX_LENGTH:
        return _parse(text)
    clean = _clean(text)
    named, colon, rest = clean.partition(":")
    if colon and named.strip().lower() in targets:
        return replace(_parse(rest), target=named.strip().lower(), text=clean)
    verb, _, rest = clean.partition(" ")
    named, _, rest = rest.strip().partition(" ")
    if verb.lower() in TARGETED_VERBS and named.lower() in targets:
        return replace(_parse(f"{verb} {rest}"), target=named.lower(), text=clean)
    return _parse(clean)


def _parse(text: str) -> Command:
    if len(text) > MAX_LENGTH:
        return Command(
            "invalid", text=text[:200], error=f"that request is over {MAX_LENGTH} characters"
        )
    clean = _clean(text)
    if not clean:
        return Command("help", text=clean)
    head, _, rest = clean.partition(" ")
    verb = head.lower()
    rest = rest.strip()
    if verb == "deploy":
        ref, glass, reason = f" {rest} ".partition(f" {BREAK_GLASS} ")
        ref, reason = ref.strip(), " ".join(reason.split())
        if glass and (not reason or not ref or " " in ref):
            return Command(
                "invalid", text=clean, error=f"usage: deploy <ref> {BREAK_GLASS} <reason>"
            )
        if not ref or " " in ref:
            return Command(
                "invalid", text=clean, error="usage: deploy <ref> (one branch, tag or commit)"
            )
        return Command("deploy", ref, clean, break_glass=reason)
    if verb == "answer":
        if not rest:
            return Command(
                "invalid", text=clean, error="usage: answer <your answers to the questions>"
            )
        return Command("answer", rest, clean)
    if verb == "rollback":
        if " " in rest:
            return Command("invalid", text=clean, error="usage: rollback [codename]")
        return Command("rollback", rest, clean)
    if verb in VERBS and not rest:
        return Command(verb, "", clean)
    if len(clean.split()) <= 2:
        return Command("invalid", text=clean, error=_unknown(clean, verb))
    return Command("change", clean, clean)


def _unknown(text: str, verb: str) -> str:
    """A stray word or two: most likely a command mistyped, never a change to plan."""
    near = difflib.get_close_matches(verb, sorted(VERBS), n=1, cutoff=0.6)
    said = f"unknown command `{text}`"
    if near:
        return f"{said}; did you mean `{near[0]}`?"
    return f"{said}. A change described in words is a sentence."
