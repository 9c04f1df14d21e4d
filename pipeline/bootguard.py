"""The boot guard: every start of Molt is recorded and checked before the bot is imported.

``molt run`` calls ``begin`` first (a release can fail at import, so the guard
must not live in the code it guards). When Molt manages itself, ``begin``:

- waits if another Molt already runs on this MOLT_DATA_DIR (two bots would share
  one event stream and fight over the port);
- answers a crash loop: when the release being started already failed to start
  MOLT_CRASH_LOOP times (default 3 within 60 s) and never started well, the
  checkout returns to the last release that did (verified, like a snapshot
  restore), a rollback release is signed, the update that installed it fails
  with a message in its thread, and the process re-executes on the good code.
  If an update's worker is still waiting for this start, the worker rolls back
  and the guard waits for it instead;
- verifies the running release (pipeline/releases.py) and refuses to start
  with the reason when it does not hold.

The bot calls ``healthy`` once it is registered and /healthz answers ok, which
marks the boot clean. A worker waiting for a restarted Molt reads ``trouble``
to stop waiting early, and ``starting`` to tell whether someone (a supervisor,
the guard) is already bringing Molt back.

Keys:
  molt:boot:<target_id>              hash: the last boot {clean, detail, commit, at}
                                     (pre-flight reads ``clean``)
  molt:boot:<target_id>:starts       list of start ids, newest first (the last 50)
  molt:boot:<target_id>:start:<id>   hash {commit, pid, at, healthy_at, ended, ended_at, detail}
  molt:boot:<target_id>:good         hash: commit → when a start on it last reported healthy
  molt:boot:<target_id>:rollback     hash {from, to, detail, at}: the guard's last rollback
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum

import redis
import structlog

from pipeline import audit, ledger, manifests, releases, store, verification
from pipeline.config import MOLT_HOME, Settings
from pipeline.exceptions import ConfigError, UpdateFailed
from pipeline.git import Git
from pipeline.locking import UpdateLock

log = structlog.get_logger(__name__)

#: Set by ``begin`` for the process (and kept across exec): the id of its start.
START_ENV = "MOLT_START_ID"
#: The open file descriptor holding the instance lock, kept across exec.
LOCK_FD_ENV = "MOLT_INSTANCE_FD"
#: bot/app.py: the process that started the embedded Redis stops it at exit.
OWNS_REDIS = "MOLT_OWNS_REDIS"
#: The guard's name in the update lock while it rolls back.
GUARD = "boot-guard"
#: A failed start that nothing replaced within this long was not going to be replaced:
#: supervisors restart within a second or two (systemd's RestartSec is 100 ms by default).
RESTART_GRACE = 3.0
KEEP_STARTS = 50
#: A refused start exits with this code, so a supervisor's logs tell it from a crash.
REFUSED_EXIT = 3


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


def _alive(pid: int) -> bool:
    """Running and not a zombie; never this process (a start recorded under our pid before
    a container restart, say, is over)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


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
        return not self.ended and _alive(self.pid)

    @property
    def failed(self) -> bool:
        """Ended, or died, without ever reporting healthy."""
        if self.healthy_at:
            return False
        if self.ended:
            return self.ended in FAILED_ENDINGS
        return not _alive(self.pid)


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


# -- one start --------------------------------------------------------------------


class Boot:
    """This process's start: what ``begin`` found, and how the start ends."""

    def __init__(self, settings: Settings, conn: redis.Redis, start_id: str, commit: str) -> None:
        self.settings = settings
        self.conn = conn
        self.start_id = start_id
        self.commit = commit
        self.ok = True
        self.reason = ""
        self.verdict: verification.Verdict | None = None

    def end(self, ending: Ending, detail: str = "") -> None:
        if not self.start_id:
            return
        key = start_key(self.settings.target_id, self.start_id)
        try:
            if self.conn.hsetnx(key, "ended", ending.value):
                self.conn.hset(
                    key, mapping={"ended_at": f"{time.time():.3f}", "detail": detail[:500]}
                )
        except redis.RedisError:
            log.warning("could not record how this start ended", ending=ending.value)

    def stopped(self) -> None:
        self.end(Ending.STOPPED)

    def ended_by(self, exc: BaseException) -> None:
        """The start ended with ``exc``: a clean exit, an interrupt, or a failure."""
        if isinstance(exc, KeyboardInterrupt) or (
            isinstance(exc, SystemExit) and exc.code in (0, None)
        ):
            self.stopped()
            return
        detail = str(exc.code) if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
        lines = detail.strip().splitlines()
        self.end(Ending.FAILED, lines[-1][:300] if lines else "")

    def refuse(self, reason: str) -> None:
        self.ok = False
        self.reason = reason
        self.end(Ending.REFUSED, reason)
        self.conn.hset(
            boot_key(self.settings.target_id),
            mapping={
                "clean": "0",
                "detail": f"refused to start {self.commit[:7]}: {reason}"[:500],
                "commit": self.commit,
                "at": f"{time.time():.3f}",
            },
        )
        audit.append(
            self.conn,
            actor=releases.MOLT,
            action="start_refused",
            detail={"commit": self.commit, "reason": reason[:1000]},
        )


_current: Boot | None = None


def begin(settings: Settings) -> Boot:
    """Record this start; answer a crash loop; verify the release. ``Boot.ok`` is false
    (with the reason) when Molt must not start."""
    global _current
    hold_instance_lock(settings)
    started_redis = settings.redis_url is None and not store.is_running(settings.data_dir)
    if started_redis:
        os.environ[OWNS_REDIS] = "1"
    conn = store.connect(settings)
    commit = manifests.running_version()
    if not settings.manages_itself:
        _current = Boot(settings, conn, "", commit)
        return _current
    boot = _current = Boot(settings, conn, _record_start(settings, conn, commit), commit)
    loop = crash_loop(settings, conn, commit, exclude=boot.start_id)
    if loop is not None:
        _answer(boot, loop)
    try:
        verdict = verification.verify_running(settings, conn)
    except ConfigError as exc:
        verdict = verification.Verdict(False, str(exc))
    boot.verdict = verdict
    if not verdict:
        boot.refuse(verdict.reason)
        if started_redis:  # nothing else can be using the Redis this start started
            store.stop_embedded(settings.data_dir)
        return boot
    if verdict.baseline:
        print(f"molt: {verdict.reason}", file=sys.stderr, flush=True)
    log.info("release verified", detail=verdict.reason)
    return boot


def _record_start(settings: Settings, conn: redis.Redis, commit: str) -> str:
    tid = settings.target_id
    # The start this process exec'd from (children inherit the variable too: not theirs).
    previous = os.environ.get(START_ENV, "")
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
    os.environ[START_ENV] = start_id
    return start_id


def healthy(settings: Settings, conn: redis.Redis) -> None:
    """The bot is registered and answers /healthz: this release started well."""
    if not settings.manages_itself:
        return
    now = f"{time.time():.3f}"
    commit = manifests.running_version()
    if _current is not None and _current.start_id:
        conn.hset(start_key(settings.target_id, _current.start_id), "healthy_at", now)
    conn.hset(good_key(settings.target_id), commit, now)
    conn.hset(
        boot_key(settings.target_id),
        mapping={"clean": "1", "detail": "", "commit": commit, "at": now},
    )


def ended_by(exc: BaseException) -> None:
    if _current is not None:
        _current.ended_by(exc)


# -- a crash loop -------------------------------------------------------------------


def _answer(boot: Boot, loop: CrashLoop) -> None:
    """Return to the last release that started well and re-execute on it; returns only when
    there is nothing to return to (or an update's worker does not finish its rollback)."""
    settings, conn = boot.settings, boot.conn
    log.error("crash loop", detail=loop.describe())
    if conn.hexists(good_key(settings.target_id), loop.commit):
        conn.hset(
            boot_key(settings.target_id),
            mapping={
                "clean": "0",
                "detail": f"{loop.describe()}; it has started well before, so it stays",
            },
        )
        return
    git = Git(MOLT_HOME)
    lock = UpdateLock(conn, settings.target_id, settings.lock_ttl)
    deadline = time.monotonic() + settings.boot_timeout
    while (holder := lock.try_lock(GUARD, GUARD)) is not None:
        # The update that installed this release is still verifying it: its worker rolls
        # back, and this process follows the checkout once it moved.
        if git.head() != loop.commit:
            boot.end(Ending.ROLLED_BACK, f"{loop.describe()}; update {holder.codename} rolled back")
            _exec()
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)
    try:
        if git.head() != loop.commit:
            detail = f"{loop.describe()}; the checkout moved on meanwhile"
        else:
            good = last_good(settings, conn, exclude=loop.commit)
            if good is None:
                conn.hset(
                    boot_key(settings.target_id),
                    mapping={
                        "clean": "0",
                        "detail": f"{loop.describe()}; no release started well before it",
                    },
                )
                return
            detail = (
                f"{loop.describe()}; the boot guard returned to {good.describe()} of {good.short}"
            )
            _return_to(settings, conn, git, good, loop, detail)
    finally:
        lock.release(GUARD)
    boot.end(Ending.ROLLED_BACK, detail)
    _exec()


def last_good(settings: Settings, conn: redis.Redis, exclude: str) -> manifests.Manifest | None:
    """The newest signed release, other than ``exclude``, that once reported healthy."""
    good = set(conn.hkeys(good_key(settings.target_id)))
    for manifest in reversed(ledger.read(settings, conn).good):
        if manifest.target_commit != exclude and manifest.target_commit in good:
            return manifest
    return None


def _return_to(
    settings: Settings,
    conn: redis.Redis,
    git: Git,
    good: manifests.Manifest,
    loop: CrashLoop,
    detail: str,
) -> None:
    from pipeline import codenames, snapshots
    from pipeline.requests import RequestStore

    store_ = RequestStore(conn)
    bad = ledger.read(settings, conn).newest_for(loop.commit)
    request = store_.find(bad.request_id) if bad and bad.request_id else None
    snapshot = (request.snapshot or {}) if request else {}
    if request and not request.terminal and snapshot.get("commit") == good.target_commit:
        _fail_update(settings, conn, request.id, detail)
    else:
        releases.record_return(
            settings,
            conn,
            commit=good.target_commit,
            from_commit=loop.commit,
            codename=codenames.new_codename(conn),
            reason=detail,
        )
        snapshots.restore(git, snapshots.Snapshot(good.target_commit, git.branch(), time.time()))
        if request is not None:
            store_.notify(
                request.id,
                "failure",
                actor=releases.MOLT,
                action="boot_guard_rollback",
                data={"message": detail, "phase": "boot", "rolled_back_to": good.short},
            )
    now = f"{time.time():.3f}"
    conn.hset(
        boot_key(settings.target_id),
        mapping={"clean": "0", "detail": detail[:500], "commit": loop.commit, "at": now},
    )
    conn.hset(
        rollback_key(settings.target_id),
        mapping={"from": loop.commit, "to": good.target_commit, "detail": detail, "at": now},
    )
    audit.append(
        conn,
        actor=releases.MOLT,
        action="boot_guard_rollback",
        request_id=request.id if request else "",
        detail={"from": loop.commit, "to": good.target_commit, "reason": detail},
    )


def _fail_update(settings: Settings, conn: redis.Redis, request_id: str, detail: str) -> None:
    """The update that installed the crashing release ends here, as its worker would have
    ended it: back to its snapshot, a rollback release, and a failure in its thread."""
    from pathlib import Path

    from pipeline.jobs import Update
    from pipeline.requests import RequestStore
    from pipeline.snapshots import Snapshot

    request = RequestStore(conn).get(request_id)
    update = Update(settings, conn, request_id)
    update.started = time.monotonic() - (time.time() - request.created_at)
    update.log_dir = Path(request.update_dir or settings.updates_dir)
    update.snapshot = Snapshot.from_dict(request.snapshot or {})
    update.touched_live = True
    update.restarted = False  # this process is the restart: it re-executes afterwards
    update._fail(UpdateFailed("verify", detail))


def _exec() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


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


def latest_start(settings: Settings, conn: redis.Redis) -> Start | None:
    found = starts(settings, conn, 1)
    return found[0] if found else None


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
            _terminate(start.pid)
            stopped.append(start.pid)
    return stopped


def _terminate(pid: int, grace: float = 5.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid):
            return


# -- one Molt per data directory --------------------------------------------------------


def hold_instance_lock(settings: Settings) -> None:
    """Hold MOLT_DATA_DIR/molt.lock for the life of the process (and across exec); if
    another Molt holds it, say so and wait until it stops."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / "molt.lock"
    inherited = os.environ.get(LOCK_FD_ENV, "")
    if inherited.isdigit():
        fd = int(inherited)
        try:
            ours = os.path.samestat(os.fstat(fd), os.stat(path))
            if ours:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
        except OSError:
            pass
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        print(
            f"molt: another Molt is running with MOLT_DATA_DIR={settings.data_dir} "
            f"(pid {holder}); waiting for it to stop",
            file=sys.stderr,
            flush=True,
        )
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    os.set_inheritable(fd, True)
    os.environ[LOCK_FD_ENV] = str(fd)
