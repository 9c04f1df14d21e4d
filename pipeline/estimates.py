"""How long an update should take, from what Redis remembers of past ones.

The worker writes each update's duration (seconds, newest first) under
``molt:durations:<target_id>`` and, through pre-flight, the tests at a commit under
``molt:tests:<target_id>:<commit>``; the planners read both here.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import redis

from pipeline.preflight import tests_key

RECENT_DURATIONS = 10


def durations_key(target_id: str) -> str:
    return f"molt:durations:{target_id}"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _number(value: Any) -> float | None:
    try:
        number = float(_text(value))
    except ValueError:
        return None
    return number if number >= 0 and number != float("inf") else None


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def last_test_run(conn: redis.Redis, target_id: str, commit: str) -> dict[str, float]:
    """The worker's record of the tests on ``commit``: ``seconds`` and passing ``count``."""
    raw: Any = conn.hgetall(tests_key(target_id, commit))
    found = {}
    for name, value in dict(raw or {}).items():
        number = _number(value)
        if number is not None:
            found[_text(name)] = number
    return found


def estimate(
    conn: redis.Redis, target_id: str, last_run: dict[str, float]
) -> tuple[float | None, str]:
    """How long the update should take, and what the guess rests on."""
    raw: Any = conn.lrange(durations_key(target_id), 0, RECENT_DURATIONS - 1)
    durations = [n for n in (_number(v) for v in raw or []) if n is not None]
    if durations:
        basis = (
            "the last update"
            if len(durations) == 1
            else f"median of the last {len(durations)} updates"
        )
        return float(statistics.median(durations)), basis
    if "seconds" in last_run:
        seconds = last_run["seconds"]
        return 2 * seconds + 5, f"the last test run ({_seconds(seconds)}) plus overhead"
    return None, "no past runs"


@dataclass(frozen=True)
class PastRuns:
    """What Redis remembers that bears on an update from one base commit."""

    last_run: dict[str, float]  # the tests at the base: ``seconds`` and passing ``count``
    seconds: float | None  # how long the update should take
    basis: str  # what that guess rests on

    @property
    def baseline(self) -> int | None:
        """Passing tests the update must not drop below, when the count is known."""
        return int(self.last_run["count"]) if "count" in self.last_run else None


def past_runs(conn: redis.Redis, target_id: str, base: str) -> PastRuns:
    last_run = last_test_run(conn, target_id, base)
    seconds, basis = estimate(conn, target_id, last_run)
    return PastRuns(last_run, seconds, basis)
