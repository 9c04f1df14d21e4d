"""What Molt remembers of a target's past runs: the test run at each commit (pre-flight
reuses it, phases compare against it), how long recent updates took (plans estimate
from them) and which tests were flaky (``history`` shows them). Their keys come from the
target (pipeline/keyspace.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from pipeline.keyspace import TargetKeys

#: A failing result is remembered for a short while only, so flaky tests can be retried.
FAILED_RESULT_TTL = 300
PASSED_RESULT_TTL = 7 * 86400
#: How many update durations are kept.
KEEP_DURATIONS = 20


@dataclass(frozen=True)
class TestRecord:
    passed: bool
    count: int | None
    seconds: float
    commit: str


class TestRecords:
    """The test command's result per commit of one target."""

    def __init__(self, conn: redis.Redis, keys: TargetKeys) -> None:
        self.conn = conn
        self.keys = keys

    def at(self, commit: str) -> TestRecord | None:
        raw = self.conn.hgetall(self.keys.tests(commit))
        if not raw:
            return None
        count = raw.get("count", "")
        return TestRecord(
            passed=raw.get("passed") == "1",
            count=int(count) if count else None,
            seconds=float(raw.get("seconds", 0)),
            commit=commit,
        )

    def record(self, record: TestRecord) -> None:
        key = self.keys.tests(record.commit)
        self.conn.hset(
            key,
            mapping={
                "passed": "1" if record.passed else "0",
                "count": "" if record.count is None else str(record.count),
                "seconds": f"{record.seconds:.3f}",
                "at": f"{time.time():.3f}",
            },
        )
        self.conn.expire(key, PASSED_RESULT_TTL if record.passed else FAILED_RESULT_TTL)


class Durations:
    """Seconds the last updates of one target took, newest first."""

    def __init__(self, conn: redis.Redis, key: str) -> None:
        self.conn = conn
        self.key = key

    def add(self, seconds: float) -> None:
        self.conn.lpush(self.key, f"{seconds:.3f}")
        self.conn.ltrim(self.key, 0, KEEP_DURATIONS - 1)

    def recent(self, count: int = KEEP_DURATIONS) -> list[float]:
        """The newest ``count`` entries that are durations at all (others are skipped)."""
        found = (_seconds(v) for v in self.conn.lrange(self.key, 0, count - 1))
        return [n for n in found if n is not None]


@dataclass(frozen=True)
class FlakyTest:
    name: str
    count: int  # updates' phases in which it failed, then passed when run again
    last_at: float
    codename: str  # the update that saw it last
    phase: str


class FlakyTests:
    """Tests of one target that failed, then passed when run again: how often, and when and
    in which update last. Only the update holding the target's lock writes it."""

    def __init__(self, conn: redis.Redis, key: str) -> None:
        self.conn = conn
        self.key = key

    def record(self, names: list[str], codename: str, phase: str) -> None:
        if not names:
            return
        known = {t.name: t for t in self.all()}
        now = time.time()
        entries: dict[Any, Any] = {}
        for name in dict.fromkeys(names):
            count = known[name].count + 1 if name in known else 1
            seen = {"count": count, "last_at": now, "codename": codename, "phase": phase}
            entries[name] = json.dumps(seen, sort_keys=True)
        self.conn.hset(self.key, mapping=entries)

    def all(self) -> list[FlakyTest]:
        """Newest first."""
        found = []
        for name, raw in self.conn.hgetall(self.key).items():
            try:
                seen = json.loads(raw)
                found.append(
                    FlakyTest(
                        str(name),
                        int(seen["count"]),
                        float(seen["last_at"]),
                        str(seen.get("codename", "")),
                        str(seen.get("phase", "")),
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue
        return sorted(found, key=lambda t: t.last_at, reverse=True)


def _seconds(value: object) -> float | None:
    try:
        number = float(value.decode() if isinstance(value, bytes) else str(value))
    except ValueError:
        return None
    return number if 0 <= number < float("inf") else None
