"""Replay: the diagnoses kept as cases, made again with today's model, prompts and code.

``molt incidents replay [--since 30d] [--target NAME]`` gives each case's materials (what
the model was given then, pipeline/incidents/cases.py) to ``diagnosis.investigate`` and
checks the answer as a live diagnosis is checked. It only reads: nothing is posted,
audited, recorded or changed. Run before and after a prompt change, it shows how the
change moves the score.

A case's reference is the diagnosis it recorded when what was done about the incident held
(its outcome in the incident book is "held"). The new diagnosis agrees with it when both

- point at the same code: they share a file (named, or cited as evidence), or neither
  names one; and
- say the same thing: their causes share at least ``AGREEMENT`` of their words (the
  Jaccard overlap of words of three letters or more, identifiers whole, common words
  left out).

That is strict on where and lenient on wording, as an on-call engineer would compare two
notes. A case without a reference (no diagnosis then, or one that did not hold) shows "—":
it counts for evidence, confidence, tokens and time, not for agreement.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import redis

from pipeline.config import Settings
from pipeline.incidents import cases
from pipeline.incidents.book import IncidentBook, outcome
from pipeline.incidents.diagnosis import HELD, Diagnosis, Materials, investigate

AGREEMENT = 1 / 3
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
# fmt: off
_COMMON = frozenset({
    "the", "and", "for", "with", "when", "are", "was", "were", "that", "this", "from", "into",
    "its", "not", "but", "all", "any", "can", "has", "have", "had", "which", "who", "what",
    "where", "how", "why", "than", "then", "there", "their", "they", "them", "does", "did",
    "because", "while", "only", "also", "more", "most", "some", "such", "each", "other",
})
# fmt: on


def since_seconds(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (a bare number is days) in seconds;
    ValueError for anything else."""
    found = _SINCE.match(text)
    if not found:
        raise ValueError(f"expected an age such as 30d, 12h or 90m, got {text!r}")
    return float(found[1]) * _UNITS[found[2] or "d"]


def words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)} - _COMMON


def _files(found: Diagnosis) -> set[str]:
    return set(found.files) | {c.file for c in found.cited() if c.file}


def agrees(recorded: Diagnosis, new: Diagnosis) -> bool:
    """Whether ``new`` says what ``recorded`` said (see the module docstring)."""
    before, after = _files(recorded), _files(new)
    if (before or after) and not before & after:
        return False
    said, says = words(recorded.cause), words(new.cause)
    if not said or not says:
        return False
    return len(said & says) / len(said | says) >= AGREEMENT


@dataclass(frozen=True)
class Replayed:
    """One case made again."""

    case: str
    outcome: str  # of what was done then: held, did not hold, open…
    agrees: bool | None  # None: no reference to agree with
    checks: bool  # a diagnosis came back and its evidence checked out
    confidence: float | None
    tokens: int
    seconds: float
    note: str  # the new cause, or why there is none


def _outcome(settings: Settings, book: IncidentBook, case: cases.Case, now: float) -> str:
    incident = book.get(case.incident_id)
    if incident is None:
        return case.outcome or "unknown"
    return HELD if incident.outcome == HELD else outcome(settings, incident, now)


def replay(settings: Settings, conn: redis.Redis, since: float) -> list[Replayed]:
    """Every case of the target diagnosed within ``since`` seconds, made again."""
    now = time.time()
    book = IncidentBook(settings, conn)
    rows = []
    for case in cases.since(conn, settings.target_id, now - since):
        result = _outcome(settings, book, case, now)
        found = investigate(settings, Materials.from_dict(case.materials))
        reference = Diagnosis.from_dict(case.diagnosis) if case.diagnosis else None
        new = found.diagnosis
        agreed = None
        if reference is not None and result == HELD:
            agreed = new is not None and agrees(reference, new)
        rows.append(
            Replayed(
                case=case.id,
                outcome=result,
                agrees=agreed,
                checks=new is not None,
                confidence=new.confidence if new else None,
                tokens=found.usage.total,
                seconds=found.seconds,
                note=new.cause if new else f"none: {found.refused}",
            )
        )
    return rows


def _time(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _yes(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "no")


def table(rows: list[Replayed]) -> str:
    """Per case and overall, as ``molt incidents replay`` prints it."""
    if not rows:
        return "no cases to replay"
    head = ("case", "outcome then", "agrees", "evidence", "confidence", "tokens", "time")
    body = [
        (
            r.case,
            r.outcome,
            _yes(r.agrees),
            "checks out" if r.checks else "dropped",
            "—" if r.confidence is None else f"{r.confidence:.2f}",
            f"{r.tokens:,}",
            _time(r.seconds),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in [head, *body]
    ]
    lines = [line.rstrip() for line in lines]
    lines += [f"  {r.case}: {r.note[:160]}" for r in rows]
    judged = [r for r in rows if r.agrees is not None]
    confident = [r.confidence for r in rows if r.confidence is not None]
    tokens = sum(r.tokens for r in rows)
    seconds = sum(r.seconds for r in rows)
    mean = f"{sum(confident) / len(confident):.2f}" if confident else "—"
    lines.append(
        f"{len(rows)} case{'' if len(rows) == 1 else 's'}: "
        f"{sum(1 for r in judged if r.agrees)}/{len(judged)} agree with a cause that held; "
        f"evidence checks out in {sum(1 for r in rows if r.checks)}/{len(rows)}; "
        f"mean confidence {mean}; {tokens:,} tokens ({tokens // len(rows):,} a case); "
        f"{_time(seconds)} ({_time(seconds / len(rows))} a case)"
    )
    return "\n".join(lines)
