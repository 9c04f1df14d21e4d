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
- verifies the running release (pipeline/releases/verification.py) and refuses to start
  with the reason when it does not hold.

The bot calls ``healthy`` once it is registered and /healthz answers ok, which
marks the boot clean. A worker waiting for a restarted Molt reads ``trouble``
to stop waiting early, and ``starting`` to tell whether someone (a supervisor,
the guard) is already bringing Molt back.

What it records, and what a waiting worker reads, are the boot records
(pipeline/releases/boots.py); an update it fails goes down the one failure path
(pipeline/service/rollback.py).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time

import redis
import structlog

from pipeline import audit, store
from pipeline.config import MOLT_HOME, Settings
from pipeline.exceptions import ConfigError, UpdateFailed
from pipeline.git import Git
from pipeline.queue.targets import Target
from pipeline.releases import ledger, manifests, verification
from pipeline.releases import signing as releases
from pipeline.releases.boots import CrashLoop, Ending
from pipeline.requests.store import RequestStore
from pipeline.service import snapshots
from pipeline.service.rollback import Trail, return_to, undo

log = structlog.get_logger(__name__)

#: Set by ``begin`` for the process (and kept across exec): the id of its start.
START_ENV = "MOLT_START_ID"
#: The open file descriptor holding the instance lock, kept across exec.
LOCK_FD_ENV = "MOLT_INSTANCE_FD"
#: The guard's name in the update lock while it rolls back.
GUARD = "boot-guard"
#: A refused start exits with this code, so a supervisor's logs tell it from a crash.
REFUSED_EXIT = 3


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
        try:
            Target(self.settings, self.conn).boots.record_ending(self.start_id, ending, detail)
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
        detail = f"refused to start {self.commit[:7]}: {reason}"
        Target(self.settings, self.conn).boots.mark_unclean(detail, commit=self.commit)
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
    conn = store.connect(settings)
    commit = manifests.running_version()
    if not settings.manages_itself:
        _current = Boot(settings, conn, "", commit)
        return _current
    # The start this process exec'd from (children inherit the variable too: not theirs).
    records = Target(settings, conn).boots
    start_id = records.record_start(commit, os.environ.get(START_ENV, ""))
    os.environ[START_ENV] = start_id
    boot = _current = Boot(settings, conn, start_id, commit)
    loop = records.crash_loop(commit, exclude=boot.start_id)
    if loop is not None:
        _answer(boot, loop)
    try:
        verdict = verification.verify_running(settings, conn)
    except ConfigError as exc:
        verdict = verification.Verdict(False, str(exc))
    boot.verdict = verdict
    if not verdict:
        boot.refuse(verdict.reason)
        return boot
    if verdict.baseline:
        print(f"molt: {verdict.reason}", file=sys.stderr, flush=True)
    log.info("release verified", detail=verdict.reason)
    return boot


def healthy(settings: Settings, conn: redis.Redis) -> None:
    """The bot is registered and answers /healthz: this release started well."""
    if not settings.manages_itself:
        return
    start_id = _current.start_id if _current is not None else ""
    Target(settings, conn).boots.record_healthy(start_id, manifests.running_version())


def ended_by(exc: BaseException) -> None:
    if _current is not None:
        _current.ended_by(exc)


# -- a crash loop -------------------------------------------------------------------


def _answer(boot: Boot, loop: CrashLoop) -> None:
    """Return to the last release that started well and re-execute on it; returns only when
    there is nothing to return to (or an update's worker does not finish its rollback)."""
    settings, conn = boot.settings, boot.conn
    log.error("crash loop", detail=loop.describe())
    target = Target(settings, conn)
    if target.boots.started_well(loop.commit):
        detail = f"{loop.describe()}; it has started well before, so it stays"
        target.boots.mark_unclean(detail)
        return
    git = Git(MOLT_HOME)
    lock = target.lock
    deadline = time.monotonic() + settings.boot_timeout
    while not (holder := lock.try_lock(GUARD, GUARD)).ours:
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
            good = target.boots.last_good(exclude=loop.commit)
            if good is None:
                detail = f"{loop.describe()}; no release started well before it"
                target.boots.mark_unclean(detail)
                return
            detail = (
                f"{loop.describe()}; the boot guard returned to {good.describe()} of {good.short}"
            )
            _back_to_good(settings, conn, git, good, loop, detail)
    finally:
        lock.release(GUARD)
    boot.end(Ending.ROLLED_BACK, detail)
    _exec()


def _back_to_good(
    settings: Settings,
    conn: redis.Redis,
    git: Git,
    good: manifests.Manifest,
    loop: CrashLoop,
    detail: str,
) -> None:
    """Back on ``good``: through the failure path of the update that installed the crashing
    release when its snapshot is ``good``, else the one way back with a rollback release of
    the guard's own (pipeline/service/rollback.py ``return_to``)."""
    requests = RequestStore(conn)
    bad = ledger.read(settings, conn).newest_for(loop.commit)
    request = requests.find(bad.request_id) if bad and bad.request_id else None
    snapshot = (request.snapshot or {}) if request else {}
    if request and not request.terminal and snapshot.get("commit") == good.target_commit:
        # This process is the restart: it re-executes afterwards, so nothing restarts here.
        trail = Trail.left_by(settings, request, since=request.created_at, restarted=False)
        undo(settings, conn, request.id, UpdateFailed("verify", detail), trail)
    else:
        trail = Trail(log_dir=settings.updates_dir, started=time.monotonic())
        to = snapshots.Snapshot(good.target_commit, git.branch(), time.time())
        return_to(settings, conn, to, detail, trail, live=git)
        log.warning("the boot guard returned", detail=detail, checks=trail.checks)
        if request is not None:
            requests.notify(
                request.id,
                "failure",
                actor=releases.MOLT,
                action="boot_guard_rollback",
                data={"message": detail, "phase": "boot", "rolled_back_to": good.short},
            )
    Target(settings, conn).boots.record_guard_rollback(loop.commit, good.target_commit, detail)
    audit.append(
        conn,
        actor=releases.MOLT,
        action="boot_guard_rollback",
        request_id=request.id if request else "",
        detail={"from": loop.commit, "to": good.target_commit, "reason": detail},
    )


def _exec() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


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
