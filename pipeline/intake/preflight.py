"""Pre-flight checks: is it safe to plan an update of the target at all?

Each check gives a Decision (pipeline/requests/decisions.py) whose ``check`` is the check's name
and whose ``reason`` says what it found; the first refusal blocks the request. The
checks are cheap and answer at once. The target's tests at its current commit are not
waited for: they run once per commit and test command (in a worktree of their own, in
the background) and are remembered in the target's test records (pipeline/sandbox/records.py);
the plan is shown with how that run stands (``TestsState``), and the approved update
waits for it before it takes its snapshot. Only a failure already known blocks a plan.
The bot starts the run of its live commit as it starts, so the first request finds it
done or under way.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import structlog

from pipeline.config import Settings
from pipeline.exceptions import GitError
from pipeline.git import Git
from pipeline.queue.targets import Target
from pipeline.requests.decisions import Decision
from pipeline.sandbox.confinement import Confinement
from pipeline.sandbox.records import TestLimit, TestRecord
from pipeline.sandbox.validation import run_tests, why_failed
from pipeline.service.snapshots import Sandbox
from pipeline.store import connect

log = structlog.get_logger(__name__)
#: The states of a pre-flight test run, as a plan shows them.
PASSED, FAILED, RUNNING = "passed", "failed", "running"


def tests_at(
    settings: Settings,
    conn: redis.Redis,
    commit: str,
    stop: Callable[[], bool] | None = None,
) -> TestRecord:
    """The target's test result at ``commit``, running the tests only if not known. A run
    already going (another request's, or the one started with the bot) is joined: this
    waits for it and reads its record. ``stop``: asked while the tests run; a stopped run
    is not recorded."""
    target = Target(settings, conn)
    known = target.tests.at(commit)
    if known:
        return known
    sandbox = _sandbox(settings)
    with sandbox.locked():
        known = target.tests.at(commit)
        if known:
            return known
        path = sandbox.checkout(commit)
        log_path = settings.data_dir / "preflight.log"
        limit = target.tests.limit(settings.phase_timeout)
        target.tests.mark_running(commit, limit.seconds + 60)
        try:
            run = run_tests(
                settings.test_command,
                path,
                limit.seconds,
                log_path,
                stop,
                confinement=Confinement.of(settings),
            )
            detail = "" if run.ok else why_failed(run, limit, settings.test_command)
            record = TestRecord(run.ok, run.passed, run.seconds, commit, detail)
            if run.stopped:
                return record
            # Recorded before the lock goes: whoever waited for it finds the result.
            record = target.tests.record(record)
        finally:
            target.tests.done_running(commit)
    update_sandbox(settings).prepare()
    return record


def warm(settings: Settings, conn: redis.Redis, stop: Callable[[], bool]) -> TestRecord:
    """The pre-flight test run of the live commit, started as the bot starts (and so after
    every self-update) rather than by the first request; ``stop`` ends it with the bot."""
    return tests_at(settings, conn, Git(settings.target_dir).head(), stop)


@dataclass(frozen=True)
class TestsState:
    """How the pre-flight test run at a commit stands: passed or failed (its record), or
    running (since when; not yet begun counts as now)."""

    __test__ = False  # a record, not a pytest test class

    commit: str
    state: str
    limit: TestLimit
    record: TestRecord | None = None
    since: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """What a plan shows of it (templates/plan_ready.toml)."""
        shown: dict[str, Any] = {
            "commit": self.commit,
            "state": self.state,
            "limit": round(self.limit.seconds),
            "limit_basis": self.limit.basis,
        }
        if self.since is not None:
            shown["since"] = round(self.since, 3)
        if self.record is not None:
            shown |= {
                "count": self.record.count,
                "seconds": round(self.record.seconds, 3),
                "at": round(self.record.at, 3),
                "detail": self.record.detail,
                "expires_at": round(self.record.expires_at, 3),
            }
        return shown


def tests_state(settings: Settings, conn: redis.Redis, commit: str) -> TestsState | None:
    """The pre-flight run at ``commit`` as it stands, without waiting; None if nobody ran
    or runs it."""
    tests = Target(settings, conn).tests
    limit = tests.limit(settings.phase_timeout)
    record = tests.at(commit)
    if record is not None:
        return TestsState(commit, PASSED if record.passed else FAILED, limit, record)
    since = tests.running_since(commit)
    if since is None or not _sandbox(settings).busy():  # a run whose process died is none
        return None
    return TestsState(commit, RUNNING, limit, since=since)


#: Background runs this process started, so that a job can see them finished.
_runs: list[threading.Thread] = []
_runs_lock = threading.Lock()


def start_tests(
    settings: Settings,
    conn: redis.Redis,
    commit: str,
    done: Callable[[redis.Redis, TestRecord], None] | None = None,
) -> TestsState:
    """The run at ``commit``, started in the background if nobody ran or runs it; ``done``
    is told its record (with a client of the run's own) when the run ends, this process's
    or one already going (the run Molt starts as it starts): a thread joins that one."""
    known = tests_state(settings, conn, commit)
    if known is not None and (known.state != RUNNING or done is None):
        return known

    def run() -> None:
        own = connect(settings)  # the caller's client may be closed before this run ends
        try:
            record = tests_at(settings, own, commit)
            if done is not None:
                done(own, record)
        except Exception:
            log.exception("the pre-flight test run failed to run", commit=commit)
        finally:
            own.close()

    thread = threading.Thread(target=run, name=f"molt-preflight-{commit[:7]}", daemon=True)
    with _runs_lock:
        _runs[:] = [t for t in _runs if t.is_alive()]
        if known is not None and any(t.name == thread.name for t in _runs):
            return known  # this process already waits for that run's end
        _runs.append(thread)
    thread.start()
    if known is not None:
        return known
    limit = Target(settings, conn).tests.limit(settings.phase_timeout)
    return TestsState(commit, RUNNING, limit, since=time.time())


def finish_background(timeout: float | None = None) -> None:
    """Wait for the background runs this process started (a fleet's intake job keeps its
    work horse until its run is recorded)."""
    with _runs_lock:
        running = list(_runs)
    for thread in running:
        thread.join(timeout)


def _sandbox(settings: Settings) -> Sandbox:
    """The worktree pre-flight's test runs use (one at a time: its lock says one runs)."""
    return Sandbox(Git(settings.target_dir), settings.worktrees_dir / "preflight")


def update_sandbox(settings: Settings) -> Sandbox:
    """The worktree updates are validated in (pre-flight has its own, so they never wait)."""
    return Sandbox(Git(settings.target_dir), settings.worktrees_dir / "sandbox")


def _redis(settings: Settings, conn: redis.Redis) -> Decision:
    try:
        conn.ping()
    except redis.RedisError as exc:
        return Decision(False, check="redis", reason=f"Redis does not answer: {exc}")
    return Decision(True, check="redis", reason="answers")


def _capacity(settings: Settings, conn: redis.Redis) -> Decision:
    target = Target(settings, conn)
    holder = target.lock.holder()
    waiting = len(target.line)
    if holder is None:
        return Decision(True, check="update lock", reason="free")
    if waiting < settings.queue_max:
        return Decision(
            True,
            check="update lock",
            reason=f"held by {holder.codename or holder.request_id}; {waiting} waiting",
        )
    return Decision(
        False,
        check="update lock",
        reason=f"held by {holder.codename or holder.request_id} and the queue is full "
        f"({waiting} of MOLT_QUEUE_MAX={settings.queue_max})",
    )


def _last_boot(settings: Settings, conn: redis.Redis) -> Decision:
    clean, detail = Target(settings, conn).boots.last_boot()
    if clean:
        return Decision(True, check="last boot", reason="clean")
    return Decision(False, check="last boot", reason=f"the last boot was not clean: {detail}")


def _resources(settings: Settings, conn: redis.Redis) -> Decision:
    free_mb = shutil.disk_usage(settings.target_dir).free // 2**20
    if free_mb < settings.min_free_disk_mb:
        return Decision(
            False,
            check="resources",
            reason=f"{free_mb} MB free disk, below MOLT_MIN_FREE_DISK_MB="
            f"{settings.min_free_disk_mb}",
        )
    memory_mb = _available_memory_mb()
    if memory_mb is not None and memory_mb < settings.min_free_memory_mb:
        return Decision(
            False,
            check="resources",
            reason=f"{memory_mb} MB memory available, below MOLT_MIN_FREE_MEMORY_MB="
            f"{settings.min_free_memory_mb}",
        )
    shown = f", {memory_mb} MB memory" if memory_mb is not None else ""
    return Decision(True, check="resources", reason=f"{free_mb} MB disk{shown}")


def _available_memory_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def _clean_checkout(settings: Settings, conn: redis.Redis) -> Decision:
    live = Git(settings.target_dir)
    try:
        dirty = live.dirty()
    except GitError as exc:
        return Decision(
            False,
            check="clean checkout",
            reason=f"{settings.target_dir} is not a git checkout: {exc}",
        )
    if dirty:
        shown = ", ".join(line[3:] for line in dirty[:5])
        more = f" and {len(dirty) - 5} more" if len(dirty) > 5 else ""
        return Decision(False, check="clean checkout", reason=f"uncommitted changes: {shown}{more}")
    data = settings.data_dir
    if data.is_relative_to(settings.target_dir) and not live.ok("check-ignore", "-q", str(data)):
        return Decision(
            False,
            check="clean checkout",
            reason=f"MOLT_DATA_DIR {data} is inside the target but not ignored by git",
        )
    return Decision(True, check="clean checkout", reason=f"clean at {live.head()[:7]}")


def _remote(settings: Settings, conn: redis.Redis) -> Decision:
    live = Git(settings.target_dir)
    remote = settings.target_remote
    for delay in (0.0, 0.3, 1.0):
        time.sleep(delay)
        try:
            live.run("ls-remote", "--quiet", "--end-of-options", remote, "HEAD", timeout=20)
        except GitError as exc:
            error = exc
            continue
        return Decision(True, check="remote", reason=f"{remote} answers")
    return Decision(False, check="remote", reason=f"{remote} cannot be reached: {error}")


def known_failure(settings: Settings, conn: redis.Redis, commit: str) -> Decision:
    """The one test result that blocks a plan: a failure at the live commit already known."""
    state = tests_state(settings, conn, commit)
    if state is None or state.record is None or state.state != FAILED:
        return Decision(True, check="tests", reason="")
    when = time.strftime("%H:%M:%S", time.localtime(state.record.expires_at))
    return Decision(
        False,
        check="tests",
        reason=f"the tests fail at the current commit {commit[:7]}: {state.record.detail}. "
        "Fix the service before updating it (the output is in preflight.log in "
        f"MOLT_DATA_DIR). Molt remembers this failure until {when}; Retry runs the tests "
        "again now",
    )


#: The checks, cheapest first; none of them waits for the tests.
CHECKS: tuple[Callable[[Settings, redis.Redis], Decision], ...] = (
    _redis,
    _capacity,
    _last_boot,
    _resources,
    _clean_checkout,
    _remote,
)


def run_preflight(settings: Settings, conn: redis.Redis) -> list[Decision]:
    """Run the checks in order, cheapest first; stop at the first that fails."""
    results = []
    for check in CHECKS:
        result = check(settings, conn)
        results.append(result)
        if not result:
            return results
    return results
