"""How long an update should take, from what the target remembers of past ones.

The worker records each update's duration and, through pre-flight and phase 2, the
tests at a commit (pipeline/sandbox/records.py); the planners read both here.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import redis

from pipeline.config import Settings
from pipeline.queue.targets import Target

RECENT_DURATIONS = 10
#: What an update spends besides its two test runs and the watch window: the snapshot,
#: the sandbox, applying, the restart and the health check, when nothing is remembered.
OVERHEAD_SECONDS = 15.0


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def last_test_run(target: Target, commit: str) -> dict[str, float]:
    """The record of the tests on ``commit``: ``seconds`` and passing ``count``, as known."""
    record = target.tests.at(commit)
    if record is None:
        return {}
    found = {"seconds": record.seconds}
    return found | ({"count": float(record.count)} if record.count is not None else {})


def estimate(target: Target, last_run: dict[str, float]) -> tuple[float | None, str]:
    """How long the update should take, and what the guess rests on."""
    durations = target.durations.recent(RECENT_DURATIONS)
    if durations:
        basis = (
            "the last update"
            if len(durations) == 1
            else f"median of the last {len(durations)} updates"
        )
        return float(statistics.median(durations)), basis
    if "seconds" in last_run:
        seconds = last_run["seconds"]
        watch = target.settings.watch_seconds
        basis = f"two test runs like the last ({_seconds(seconds)}), the restart"
        basis += f" and the {_seconds(watch)} watch window" if watch > 0 else ""
        return 2 * seconds + OVERHEAD_SECONDS + watch, basis
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


def past_runs(settings: Settings, conn: redis.Redis, base: str) -> PastRuns:
    target = Target(settings, conn)
    last_run = last_test_run(target, base)
    seconds, basis = estimate(target, last_run)
    return PastRuns(last_run, seconds, basis)
