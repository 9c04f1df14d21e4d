"""An update's timeline, read back from its audit trail: when each phase began and ended,
how it ended, and which step failed and why (the status page draws it, bot/ui.py).

Every phase an update enters is a transition (pipeline/requests/store.py), so it is an audit
entry with its phase and time; a phase lasts until the next transition. Only the last
attempt of a request that was retried is drawn.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.requests.states import TERMINAL, UNDER_WAY
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Request

#: The phases of an update in their order (``implement`` only for a change in words,
#: ``reproduce`` only for a Fix it, ``propose`` only for one delivered as a pull request,
#: which ends there, ``watch`` once the service is watched after its restart).
PHASES = (
    "sandbox",
    "implement",
    "reproduce",
    "phase 1",
    "propose",
    "snapshot",
    "apply",
    "phase 2",
    "restart",
    "verify",
    "watch",
)
#: Entered on the way out of a failed update, drawn after the phase that failed.
ROLLBACK = "rollback"
#: Intake's checks, drawn alone for a request that never reached its update (blocked).
PREFLIGHT = "pre-flight"
_STATES = frozenset(state.value for state in S)
_UNDER_WAY = frozenset(state.value for state in UNDER_WAY)


@dataclass
class Bar:
    """One phase: its start and length in seconds from the update's start, and how it went
    (passed, failed, running, rollback, or skipped when the update never got there)."""

    phase: str
    start: float = 0.0
    seconds: float = 0.0
    outcome: str = "skipped"
    reason: str = ""


@dataclass
class Timeline:
    bars: list[Bar] = field(default_factory=list)
    total: float = 0.0  # seconds from the first phase to the end (or now)
    failed_phase: str = ""
    reason: str = ""
    running: bool = False

    def scaled(self) -> list[dict[str, Any]]:
        """The bars with their place on a 0 to 100 scale, for drawing."""
        span = self.total or 1.0
        return [
            {
                "phase": bar.phase,
                "seconds": bar.seconds,
                "outcome": bar.outcome,
                "reason": bar.reason,
                "left": round(100 * bar.start / span, 2),
                "width": round(max(100 * bar.seconds / span, 0.4), 2)
                if bar.outcome != "skipped"
                else 0,
            }
            for bar in self.bars
        ]


def _last_attempt(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The state changes of the last run of the update (a Retry starts another)."""
    changes = [e for e in entries if e.get("action") in _STATES and "to" in (e.get("detail") or {})]
    starts = [  # into running from the line (approved or queued), not from another phase
        i
        for i, e in enumerate(changes)
        if e["detail"].get("to") == S.RUNNING.value and e["detail"].get("from") not in _UNDER_WAY
    ]
    return changes[starts[-1] :] if starts else []


def _preflight(request: Request, entries: list[dict[str, Any]], now: float) -> Bar | None:
    """The last pre-flight of a request: how long it ran and how it ended (None if it had
    none)."""
    changes = [e for e in entries if e.get("action") in _STATES and "to" in (e.get("detail") or {})]
    starts = [i for i, e in enumerate(changes) if e["detail"]["to"] == S.PREFLIGHT.value]
    if not starts:
        return None
    began = float(changes[starts[-1]]["at"])
    after = changes[starts[-1] + 1 :]
    if not after:
        return Bar(PREFLIGHT, 0.0, max(0.0, now - began), "running")
    ended = after[0]["detail"]
    seconds = max(0.0, float(after[0]["at"]) - began)
    if ended["to"] == S.BLOCKED.value:
        return Bar(PREFLIGHT, 0.0, seconds, "failed", str(ended.get("message", "")))
    return Bar(PREFLIGHT, 0.0, seconds, "passed")


def timeline(request: Request, entries: list[dict[str, Any]], now: float | None = None) -> Timeline:
    """The timeline of ``request``'s update from its audit ``entries``."""
    now = time.time() if now is None else now
    changes = _last_attempt(entries)
    shown = Timeline(running=not request.terminal and bool(changes))
    seen = {str(e["detail"].get("phase", "")) for e in changes}
    wanted = [
        p
        for p in PHASES
        if (p != "implement" or request.command == "change")
        and (p != "reproduce" or request.incident)
    ]
    wanted = wanted[: wanted.index("propose") + 1] if "propose" in seen else wanted
    bars = {phase: Bar(phase) for phase in wanted if phase != "propose" or "propose" in seen}
    if not changes:
        checked = _preflight(request, entries, now)
        if checked is not None:
            shown.total = checked.seconds
            shown.running = checked.outcome == "running"
            if checked.outcome == "failed":
                shown.failed_phase, shown.reason = PREFLIGHT, checked.reason
        shown.bars = ([checked] if checked else []) + list(bars.values())
        return shown
    began = float(changes[0]["at"])
    extra: list[Bar] = []
    for index, entry in enumerate(changes):
        detail = entry["detail"]
        if detail.get("to") in {s.value for s in TERMINAL}:
            break
        phase = str(detail.get("phase", ""))
        ends = float(changes[index + 1]["at"]) if index + 1 < len(changes) else now
        start, seconds = float(entry["at"]) - began, max(0.0, ends - float(entry["at"]))
        if phase == ROLLBACK:
            extra.append(Bar(ROLLBACK, start, seconds, "rollback"))
        elif phase in bars:
            bar = bars[phase]
            if bar.outcome == "skipped":
                bar.start = start
            bar.seconds += seconds
            bar.outcome = "running" if index + 1 == len(changes) and shown.running else "passed"
    last = changes[-1]
    shown.total = max(0.0, (now if shown.running else float(last["at"])) - began)
    if last["detail"].get("to") == S.FAILED.value:
        shown.failed_phase = str(last["detail"].get("phase", ""))
        shown.reason = str(last["detail"].get("message", ""))
        failed = bars.get(shown.failed_phase)
        if failed is not None:
            if failed.outcome == "skipped":  # failed before its transition (a check at entry)
                failed.start = extra[0].start if extra else shown.total
            failed.outcome, failed.reason = "failed", shown.reason
    shown.bars = [*bars.values(), *extra]
    return shown
