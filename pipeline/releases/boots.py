"""Boot records: every start of Molt, how it ended, and which releases started well.

The boot guard (pipeline/update/bootguard.py) writes them as Molt starts; the bot marks a
start healthy; a worker waiting for a restarted Molt reads them (pipeline/service/restart.py)
to stop waiting early; pre-flight refuses updates while the last boot is not clean.

Their keys are the target's (pipeline/keyspace.py: ``molt:boot:<id>…``).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum

import redis
import structlog

from pipeline.config import Settings
from pipeline.keyspace import TargetKeys
from pipeline.processes import alive, terminate
from pipeline.releases import ledger, manifests

log = structlog.get_logger(__name__)


def restart_grace(settings: Settings) -> float:
    """MOLT_RESTART_GRACE (supervisors restart within a second or two: systemd's RestartSec is
    100 ms by default), stretched by how busy the machine is: on a host whose load is ten
    times its cores, a restarted Python takes that much longer to record its start."""
    try:
        busy = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        busy = 1.0
    return settings.restart_grace * max(1.0, busy)


KEEP_STARTS = 50


class Ending(StrEnum):
    STOPPED = "stopped"  # asked to stop (SIGTERM, quit) and shut down cleanly
    RESTARTED = "restarted"  # re-executed itself onto new code
    FAILED = "failed"  # raised before or while running
    REFUSED = "refused"  # the release check refused the code
    ROLLED_BACK = "rolled_back"  # the boot guard replaced this release with an older one


FAILED_ENDINGS = frozenset({Ending.FAILED.value, Ending.REFUSED.value, Ending.ROLLED_BACK.value})


def _running(pid: int) -> bool:
    """Never this process: a start recorded under our pid before, say, a container
    restart, is over."""
    return pid != os.getpid() and alive(pid)


@dataclass(frozen=True)
class Start:
    id: str
    commit: str
    pid: int
    at: float
    healthy_at: float
    ended: str
    ended_at: float
    detail: str

    @property
    def alive(self) -> bool:
        return not self.ended and _running(self.pid)

    @property
    def failed(self) -> bool:
        """Ended, or died, without ever reporting healthy."""
        if self.healthy_at:
            return False
        if self.ended:
            return self.ended in FAILED_ENDINGS
        return not _running(self.pid)


@dataclass(frozen=True)
class CrashLoop:
    commit: str
    failures: list[Start]
    within: float

    def describe(self) -> str:
        why = next((f.detail for f in self.failures if f.detail), "")
        return (
            f"Molt failed to start {len(self.failures)} times within {self.within:.0f}s on "
            f"{self.commit[:7]}" + (f" ({why})" if why else "")
        )


class BootRecords:
    """The boot records of one target."""

    def __init__(self, settings: Settings, conn: redis.Redis, keys: TargetKeys) -> None:
        self.settings = settings
        self.conn = conn
        self.keys = keys

    def starts(self, limit: int = KEEP_STARTS) -> list[Start]:
        """Recorded starts, newest first."""
        found = []
        for start_id in self.conn.lrange(self.keys.starts, 0, limit - 1):
            raw = self.conn.hgetall(self.keys.start(str(start_id)))
            if not raw:
                continue
            found.append(
                Start(
                    id=str(start_id),
                    commit=str(raw.get("commit", "")),
                    pid=int(raw.get("pid") or 0),
                    at=float(raw.get("at") or 0),
                    healthy_at=float(raw.get("healthy_at") or 0),
                    ended=str(raw.get("ended", "")),
                    ended_at=float(raw.get("ended_at") or 0),
                    detail=str(raw.get("detail", "")),
                )
            )
        return found

    def latest_start(self) -> Start | None:
        found = self.starts(1)
        return found[0] if found else None

    def record_start(self, commit: str, previous: str) -> str:
        """Record a start of ``commit`` by this process; ``previous`` is the start this process
        re-executed from, if any (it ended by restarting). Returns the new start's id."""
        exec_d = previous and self.conn.hget(self.keys.start(previous), "pid") == str(os.getpid())
        if exec_d and self.conn.hsetnx(self.keys.start(previous), "ended", Ending.RESTARTED.value):
            self.conn.hset(self.keys.start(previous), "ended_at", f"{time.time():.3f}")
        start_id = uuid.uuid4().hex[:12]
        with self.conn.pipeline() as pipe:
            pipe.hset(
                self.keys.start(start_id),
                mapping={"commit": commit, "pid": os.getpid(), "at": f"{time.time():.3f}"},
            )
            pipe.expire(self.keys.start(start_id), 7 * 86400)
            pipe.lpush(self.keys.starts, start_id)
            pipe.ltrim(self.keys.starts, 0, KEEP_STARTS - 1)
            pipe.execute()
        return start_id

    def record_ending(self, start_id: str, ending: Ending, detail: str = "") -> None:
        """How a start ended; the first ending recorded stays."""
        key = self.keys.start(start_id)
        if self.conn.hsetnx(key, "ended", ending.value):
            self.conn.hset(key, mapping={"ended_at": f"{time.time():.3f}", "detail": detail[:500]})

    def record_healthy(self, start_id: str, commit: str) -> None:
        """A start of ``commit`` reported healthy: the release started well, the boot is clean."""
        now = f"{time.time():.3f}"
        if start_id:
            self.conn.hset(self.keys.start(start_id), "healthy_at", now)
        self.conn.hset(self.keys.good_starts, commit, now)
        self.conn.hset(
            self.keys.boot,
            mapping={"clean": "1", "detail": "", "commit": commit, "at": now},
        )

    def mark_unclean(self, detail: str, commit: str = "") -> None:
        """The last boot is not clean (pre-flight blocks updates until one is)."""
        key = self.keys.boot
        self.conn.hset(key, mapping={"clean": "0", "detail": detail[:500]})
        if commit:
            self.conn.hset(key, mapping={"commit": commit, "at": f"{time.time():.3f}"})

    def last_boot(self) -> tuple[bool, str]:
        """Whether the last boot was clean, and what was wrong with it."""
        raw = self.conn.hgetall(self.keys.boot)
        return (not raw or raw.get("clean") == "1"), str(raw.get("detail", ""))

    def started_well(self, commit: str) -> bool:
        return bool(self.conn.hexists(self.keys.good_starts, commit))

    def record_guard_rollback(self, bad: str, good: str, detail: str) -> None:
        """The boot guard replaced release ``bad`` with ``good``."""
        now = f"{time.time():.3f}"
        self.mark_unclean(detail, commit=bad)
        self.conn.hset(
            self.keys.guard_rollback,
            mapping={"from": bad, "to": good, "detail": detail, "at": now},
        )

    def last_good(self, exclude: str) -> manifests.Manifest | None:
        """The newest signed release, other than ``exclude``, that once reported healthy."""
        good = set(self.conn.hkeys(self.keys.good_starts))
        for manifest in reversed(ledger.read(self.settings, self.conn).good):
            if manifest.target_commit != exclude and manifest.target_commit in good:
                return manifest
        return None

    def crash_loop(self, commit: str, exclude: str = "") -> CrashLoop | None:
        """MOLT_CRASH_LOOP failed starts of ``commit`` within its window, or None."""
        count, within = self.settings.crash_loop_limit
        since = time.time() - within
        failures = [
            s
            for s in self.starts()
            if s.commit == commit and s.id != exclude and s.at >= since and s.failed
        ]
        return CrashLoop(commit, failures, within) if len(failures) >= count else None

    # -- for a worker waiting for Molt to come back ------------------------------------------

    def trouble(self, commit: str, since: float) -> str | None:
        """Why a start of ``commit`` (asked for at ``since``) will not come: the guard rolled it
        back, the release check refused it, or it is in a crash loop. None: keep waiting."""
        rolled = self.conn.hgetall(self.keys.guard_rollback)
        if rolled.get("from") == commit and float(rolled.get("at") or 0) >= since:
            return str(rolled.get("detail", ""))
        count, within = self.settings.crash_loop_limit
        latest = self.starts(count + 5)
        recent = [s for s in latest if s.commit == commit and s.at >= since]
        refused = next((s for s in recent if s.ended == Ending.REFUSED.value), None)
        if refused is not None:
            return f"Molt refused to start {commit[:7]}: {refused.detail}"
        failures = [s for s in recent if s.failed and s.at >= time.time() - within]
        return CrashLoop(commit, failures, within).describe() if len(failures) >= count else None

    def starting(self) -> bool:
        """Someone is bringing Molt back: a start is under way, or one began or ended moments
        ago (a supervisor restarting it after it exited, which a busy machine makes slow)."""
        for start in self.starts(5):
            if start.alive and not start.healthy_at:
                return True
            if time.time() - max(start.at, start.ended_at) < restart_grace(self.settings):
                return True
        return False

    def stop_stale(self, keep: str) -> list[int]:
        """Stop starts on code other than ``keep`` that have hung for longer than
        MOLT_BOOT_TIMEOUT without reporting healthy; returns their pids."""
        stopped = []
        for start in self.starts(10):
            too_long = time.time() - start.at > self.settings.boot_timeout
            if start.alive and not start.healthy_at and start.commit != keep and too_long:
                log.warning("stopping a start that hung", pid=start.pid, commit=start.commit[:12])
                terminate(start.pid)
                stopped.append(start.pid)
        return stopped
