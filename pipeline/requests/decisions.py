"""The answer of every check that may refuse: authorisation, pre-flight, autonomy and
limits, approval, release verification, operator controls.

A refusal is not a fault (pipeline/exceptions.py holds those): it is a ``Decision``
whose ``allowed`` is false, whose ``reason`` is the sentence a person reads, and whose
``check`` names what decided, in a form stable enough for the audit and for metrics:
"authorisation", a pre-flight check's name ("clean checkout", "tests"), "switch",
"daily limit", "observe", "queue-full", "late", "expired", "release:downgrade".
Checks that may refuse in several ways are combined with ``and``: the first refusal, or
the last (allowed) answer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""  # what a person reads (also on an allowed check: what it found)
    check: str = ""  # what decided: a short, stable name

    def __bool__(self) -> bool:
        return self.allowed


#: Allowed, with nothing to say.
ALLOWED = Decision(True)
