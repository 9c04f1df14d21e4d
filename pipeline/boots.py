"""Boot records: every start of Molt, how it ended, and which releases started well.

The boot guard (pipeline/bootguard.py) writes them as Molt starts; the bot marks a
start healthy; a worker waiting for a restarted Molt reads them (pipeline/restart.py)
to stop waiting early; pre-flight refuses updates while the last boot is not clean.

Keys:
  molt:boot:<target_id>              hash: the last boot {clean, detail, commit, at}
                                     (pre-flight reads ``clean``)
  molt:boot:<target_id>:starts       list of start ids, newest first (the last 50)
  molt:boot:<target_id>:start:<id>   hash {commit, pid, at, healthy_at, ended, ended_at, detail}
  molt:boot:<target_id>:good         hash: commit → when a start on it last reported healthy
  molt:boot:<target_id>:rollback     hash {from, to, detail, at}: the guard's last rollback
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum

import redis
import structlog

from pipeline import releases
from pipeline.config import Settings
from pipeline.processes import alive, terminate

log = structlog.get_logger(__name__)

#: A failed start that nothing replaced within this long was not going to be replaced:
#: supervisors restart within a second or two (systemd's RestartSec is 100 ms by default).
RESTART_GRACE = 3.0
KEEP_STARTS = 50


class Ending(StrEnum):
    STOPPED = "stopped"  # asked to stop (SIGTERM, quit) and shut down cleanly
    RESTARTED = "restarted"  # re-executed itself onto new code
    FAILED = "failed"  # raised before or while running
    REFUSED = "refused"  # the release check refused the code
    ROLLED_BACK = "rolled_back"  # the boot guard replaced this release with an older one


FAILED_ENDINGS = frozenset({Ending.FAILED.value, Ending.REFUSED.value, Ending.ROLLED_BACK.value})


def boot_key(target_id: str) -> str:
    return f"molt:boot:{target_id}"


def starts_key(target_id: str) -> str:
    return f"molt:boot:{target_id}:starts"


def start_key(target_id: str, start_id: str) -> str:
    return f"molt:boot:{target_id}:start:{start_id}"


def good_key(target_id: str) -> str:
    return f"molt:boot:{target_id}:good"


def rollback_key(target_id: str) -> str:
    return f"molt:boot:{target_id}:rollback"


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


def starts(settings: Settings, conn: redis.Redis, limit: int = KEEP_STARTS) -> list[Start]:
    """Recorded starts, newest first."""
    found = []
    for start_id in conn.lrange(starts_key(settings.target_id), 0, limit - 1):
        raw = conn.hgetall(start_key(settings.target_id, str(start_id)))
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


def latest_start(settings: Settings, conn: redis.Redis) -> Start | None:
    found = starts(settings, conn, 1)
    return found[0] if found else None


def record_start(settings: Settings, conn: redis.Redis, commit: str, previous: str) -> str:
    """Record a start of ``commit`` by this process; ``previous`` is the start this process
    re-executed from, if any (it ended by restarting). Returns the new start's id."""
    tid = settings.target_id
    exec_d = previous and conn.hget(start_key(tid, previous), "pid") == str(os.getpid())
    if exec_d and conn.hsetnx(start_key(tid, previous), "ended", Ending.RESTARTED.value):
        conn.hset(start_key(tid, previous), "ended_at", f"{time.time():.3f}")
    start_id = uuid.uuid4().hex[:12]
    with conn.pipeline() as pipe:
        pipe.hset(
            start_key(tid, start_id),
            mapping={"commit": commit, "pid": os.getpid(), "at": f"{time.time():.3f}"},
        )
        pipe.expire(start_key(tid, start_id), 7 * 86400)
        pipe.lpush(starts_key(tid), start_id)
        pipe.ltrim(starts_key(tid), 0, KEEP_STARTS - 1)
        pipe.execute()
    return start_id


def record_ending(
    settings: Settings, conn: redis.Redis, start_id: str, ending: Ending, detail: str = ""
) -> None:
    """How a start ended; the first ending recorded stays."""
    key = start_key(settings.target_id, start_id)
    if conn.hsetnx(key, "ended", ending.value):
        conn.hset(key, mapping={"ended_at": f"{time.time():.3f}", "detail": detail[:500]})


def record_healthy(settings: Settings, conn: redis.Redis, start_id: str, commit: str) -> None:
    """A start of ``commit`` reported healthy: the release started well, the boot is clean."""
    now = f"{time.time():.3f}"
    if start_id:
        conn.hset(start_key(settings.target_id, start_id), "healthy_at", now)
    conn.hset(good_key(settings.target_id), commit, now)
    conn.hset(
        boot_key(settings.target_id),
        mapping={"clean": "1", "detail": "", "commit": commit, "at": now},
    )


def mark_unclean(settings: Settings, conn: redis.Redis, detail: str, commit: str = "") -> None:
    """The last boot is not clean (pre-flight blocks updates until one is)."""
    key = boot_key(settings.target_id)
    conn.hset(key, mapping={"clean": "0", "detail": detail[:500]})
    if commit:
        conn.hset(key, mapping={"commit": commit, "at": f"{time.time():.3f}"})


def last_boot(settings: Settings, conn: redis.Redis) -> tuple[bool, str]:
    """Whether the last boot was clean, and what was wrong with it."""
    raw = conn.hgetall(boot_key(settings.target_id))
    return (not raw or raw.get("clean") == "1"), str(raw.get("detail", ""))


def started_well(settings: Settings, conn: redis.Redis, commit: str) -> bool:
    return bool(conn.hexists(good_key(settings.target_id), commit))


def record_guard_rollback(
    settings: Settings, conn: redis.Redis, bad: str, good: str, detail: str
) -> None:
    """The boot guard replaced release ``bad`` with ``good``."""
    now = f"{time.time():.3f}"
    mark_unclean(settings, conn, detail, commit=bad)
    conn.hset(
        rollback_key(settings.target_id),
        mapping={"from": bad, "to": good, "detail": detail, "at": now},
    )


def last_good(settings: Settings, conn: redis.Redis, exclude: str) -> releases.Manifest | None:
    """The newest signed release, other than ``exclude``, that once reported healthy."""
    good = set(conn.hkeys(good_key(settings.target_id)))
    for manifest in reversed(releases.ledger(settings, conn).good):
        if manifest.target_commit != exclude and manifest.target_commit in good:
            return manifest
    return None


# -- crash loops ------------------------------------------------------------------------


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


def crash_loop(
    settings: Settings, conn: redis.Redis, commit: str, exclude: str = ""
) -> CrashLoop | None:
    """MOLT_CRASH_LOOP failed starts of ``commit`` within its window, or None."""
    count, within = settings.crash_loop_limit
    since = time.time() - within
    failures = [
        s
        for s in starts(settings, conn)
        if s.commit == commit and s.id != exclude and s.at >= since and s.failed
    ]
    return CrashLoop(commit, failures, within) if len(failures) >= count else None


# -- for a worker waiting for Molt to come back ------------------------------------------


def trouble(settings: Settings, conn: redis.Redis, commit: str, since: float) -> str | None:
    """Why a start of ``commit`` (asked for at ``since``) will not come: the guard rolled it
    back, the release check refused it, or it is in a crash loop. None: keep waiting."""
    rolled = conn.hgetall(rollback_key(settings.target_id))
    if rolled.get("from") == commit and float(rolled.get("at") or 0) >= since:
        return str(rolled.get("detail", ""))
    count, within = settings.crash_loop_limit
    latest = starts(settings, conn, count + 5)
    recent = [s for s in latest if s.commit == commit and s.at >= since]
    refused = next((s for s in recent if s.ended == Ending.REFUSED.value), None)
    if refused is not None:
        return f"Molt refused to start {commit[:7]}: {refused.detail}"
    failures = [s for s in recent if s.failed and s.at >= time.time() - within]
    return CrashLoop(commit, failures, within).describe() if len(failures) >= count else None


def starting(settings: Settings, conn: redis.Redis) -> bool:
    """Someone is bringing Molt back: a start is under way, or one began moments ago (a
    supervisor restarting it)."""
    for start in starts(settings, conn, 5):
        if start.alive and not start.healthy_at:
            return True
        if time.time() - start.at < RESTART_GRACE:
            return True
    return False


def stop_stale(settings: Settings, conn: redis.Redis, keep: str) -> list[int]:
    """Stop starts on code other than ``keep`` that have hung for longer than
    MOLT_BOOT_TIMEOUT without reporting healthy; returns their pids."""
    stopped = []
    for start in starts(settings, conn, 10):
        too_long = time.time() - start.at > settings.boot_timeout
        if start.alive and not start.healthy_at and start.commit != keep and too_long:
            log.warning("stopping a start that hung", pid=start.pid, commit=start.commit[:12])
            terminate(start.pid)
            stopped.append(start.pid)
    return stopped
