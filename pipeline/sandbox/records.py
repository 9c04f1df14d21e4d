"""What Molt remembers of a target's past runs: the test run at each commit (pre-flight
reuses it, phases compare against it), how long recent updates took (plans estimate
from them) and which tests were flaky (``history`` shows them). Their keys come from the
target (pipeline/keyspace.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from typing import Any

import redis

from pipeline.keyspace import TargetKeys

#: A failing result is remembered for a short while only, so flaky tests can be retried.
FAILED_RESULT_TTL = 300
PASSED_RESULT_TTL = 7 * 86400
#: How many update durations are kept.
KEEP_DURATIONS = 20
#: A phase's time limit is at least this many times the last passing run of its command.
LIMIT_FACTOR = 3


def run_identity(command: str, *more: str) -> str:
    """A short name for what a test run runs: the command and anything else that changes
    its outcome (its environment, its network). A result is remembered under it, so a new
    test command is never judged by the old one's record."""
    digest = hashlib.sha256("\0".join((command, *more)).encode()).hexdigest()
    return digest[:12]


@dataclass(frozen=True)
class TestRecord:
    """One run of the test command at a commit, as remembered."""

    __test__ = False  # a record, not a pytest test class

    passed: bool
    count: int | None
    seconds: float
    commit: str
    #: Why a failed run failed, as a person reads it ("" when it passed).
    detail: str = ""
    #: When it was recorded (time.time()); 0 until it is.
    at: float = 0.0

    @property
    def expires_at(self) -> float:
        """When Molt forgets this result and runs the tests again."""
        return self.at + (PASSED_RESULT_TTL if self.passed else FAILED_RESULT_TTL)


class TestRecords:
    """The test command's result per commit of one target, for one ``run`` (what ran)."""

    __test__ = False  # a record, not a pytest test class

    def __init__(self, conn: redis.Redis, keys: TargetKeys, run: str) -> None:
        self.conn = conn
        self.keys = keys
        self.run = run

    def at(self, commit: str) -> TestRecord | None:
        raw = self.conn.hgetall(self.keys.tests(self.run, commit))
        if not raw:
            return None
        count = raw.get("count", "")
        return TestRecord(
            passed=raw.get("passed") == "1",
            count=int(count) if count else None,
            seconds=float(raw.get("seconds", 0)),
            commit=commit,
            detail=str(raw.get("detail", "")),
            at=float(raw.get("at", 0)),
        )

    def record(self, record: TestRecord) -> TestRecord:
        key = self.keys.tests(self.run, record.commit)
        now = time.time()
        self.conn.hset(
            key,
            mapping={
                "passed": "1" if record.passed else "0",
                "count": "" if record.count is None else str(record.count),
                "seconds": f"{record.seconds:.3f}",
                "at": f"{now:.3f}",
                "detail": record.detail,
            },
        )
        self.conn.expire(key, PASSED_RESULT_TTL if record.passed else FAILED_RESULT_TTL)
        if record.passed:
            self.conn.set(self.keys.tests_passed(self.run), f"{record.seconds:.3f}")
        return replace(record, at=now)

    def forget_failure(self, commit: str) -> bool:
        """Drop a remembered failure at ``commit`` (a person's Retry runs the tests again)."""
        key = self.keys.tests(self.run, commit)
        if self.conn.hget(key, "passed") != "0":
            return False
        return bool(self.conn.delete(key))

    def running_since(self, commit: str) -> float | None:
        """When the pre-flight run at ``commit`` began, while it runs."""
        return _seconds(self.conn.get(self.keys.tests_running(self.run, commit)) or "")

    def mark_running(self, commit: str, expires: float) -> None:
        key = self.keys.tests_running(self.run, commit)
        self.conn.set(key, f"{time.time():.3f}", ex=max(int(expires), 1))

    def done_running(self, commit: str) -> None:
        self.conn.delete(self.keys.tests_running(self.run, commit))

    def limit(self, floor: float) -> TestLimit:
        """A phase's time limit: the larger of ``floor`` (MOLT_PHASE_TIMEOUT) and
        LIMIT_FACTOR times the last passing run, so that a suite that grows, or a busy
        host, does not start timing out."""
        last = _seconds(self.conn.get(self.keys.tests_passed(self.run)) or "")
        setting = f"MOLT_PHASE_TIMEOUT={floor:g} s"
        if last is None or LIMIT_FACTOR * last <= floor:
            return TestLimit(floor, setting)
        return TestLimit(
            LIMIT_FACTOR * last,
            f"{LIMIT_FACTOR} times the last passing run ({_spoken(last)}), above {setting}",
        )


@dataclass(frozen=True)
class TestLimit:
    """How long a test run may take, and why that long (a person reads it)."""

    __test__ = False  # a record, not a pytest test class

    seconds: float
    basis: str

    def exceeded(self, command: str) -> str:
        """What a run killed at this limit says."""
        return (
            f"`{command}` did not finish within {_spoken(self.seconds)} and was stopped "
            f"(the limit: {self.basis}; raise MOLT_PHASE_TIMEOUT if the tests need longer)"
        )


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


def _spoken(seconds: float) -> str:
    """Seconds as a message says them: "0.5 s", "42 s", "15 min 20 s"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if not minutes:
        return f"{rest} s"
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def _seconds(value: object) -> float | None:
    try:
        number = float(value.decode() if isinstance(value, bytes) else str(value))
    except ValueError:
        return None
    return number if 0 <= number < float("inf") else None
