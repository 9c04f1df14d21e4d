"""Pre-flight checks: is it safe to plan an update of the target at all?

Each check gives a Decision (pipeline/decisions.py) whose ``check`` is the check's name
and whose ``reason`` says what it found; the first refusal blocks the request. The
target's tests at its current commit are run once per commit (in a worktree of their
own) and remembered in the target's test records (pipeline/records.py). The bot starts
that run in the background as it starts, so the first request finds it done or joins it;
while a request waits for it, ``progress`` is told how long the run has been going.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as StillRunning
from pathlib import Path

import redis

from pipeline.config import Settings
from pipeline.confinement import Confinement
from pipeline.decisions import Decision
from pipeline.exceptions import GitError
from pipeline.git import Git
from pipeline.records import TestRecord
from pipeline.snapshots import Sandbox
from pipeline.targets import Target
from pipeline.validation import run_tests

#: A request waiting for the pre-flight test run hears of it after this many seconds, and
#: again every PROGRESS_SECONDS (coalesced by each platform's status message).
FIRST_PROGRESS = 1.0
PROGRESS_SECONDS = 15.0
#: Told how a run the request waits for is going: a sentence a person reads.
Progress = Callable[[str], None]


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
    sandbox = Sandbox(Git(settings.target_dir), settings.worktrees_dir / "preflight")
    with sandbox.locked():
        known = target.tests.at(commit)
        if known:
            return known
        path = sandbox.checkout(commit)
        log = settings.data_dir / "preflight.log"
        running = target.keys.tests_running(commit)
        conn.set(running, f"{time.time():.3f}", ex=int(settings.phase_timeout) + 60)
        try:
            run = run_tests(
                settings.test_command,
                path,
                settings.phase_timeout,
                log,
                stop,
                confinement=Confinement.of(settings),
            )
        finally:
            conn.delete(running)
    record = TestRecord(run.ok, run.passed, run.seconds, commit)
    if run.stopped:
        return record
    target.tests.record(record)
    update_sandbox(settings).prepare()
    return record


def warm(settings: Settings, conn: redis.Redis, stop: Callable[[], bool]) -> TestRecord:
    """The pre-flight test run of the live commit, started as the bot starts (and so after
    every self-update) rather than by the first request; ``stop`` ends it with the bot."""
    return tests_at(settings, conn, Git(settings.target_dir).head(), stop)


def watched_tests_at(
    settings: Settings, conn: redis.Redis, commit: str, progress: Progress
) -> TestRecord:
    """``tests_at``, telling ``progress`` how long the run has been going while it goes."""
    target = Target(settings, conn)
    known = target.tests.at(commit)
    if known:
        return known
    with ThreadPoolExecutor(1, thread_name_prefix="molt-preflight") as pool:
        run = pool.submit(tests_at, settings, conn, commit)
        began, wait = time.time(), FIRST_PROGRESS
        while True:
            try:
                return run.result(timeout=wait)
            except StillRunning:
                since = conn.get(target.keys.tests_running(commit))
                going = time.time() - (float(since) if since else began)
                progress(f"the tests at {commit[:7]} have been running for {_duration(going)}")
                wait = PROGRESS_SECONDS


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


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


def _tests(settings: Settings, conn: redis.Redis, progress: Progress) -> Decision:
    commit = Git(settings.target_dir).head()
    record = watched_tests_at(settings, conn, commit, progress)
    if record.passed:
        counted = f"{record.count} passed" if record.count is not None else "pass"
        return Decision(
            True, check="tests", reason=f"{counted} at {commit[:7]} ({record.seconds:.1f}s)"
        )
    return Decision(
        False,
        check="tests",
        reason=f"`{settings.test_command}` fails at the current commit {commit[:7]}: fix the "
        "service before updating it (see preflight.log in MOLT_DATA_DIR)",
    )


#: The checks before the test run, cheapest first.
CHECKS: tuple[Callable[[Settings, redis.Redis], Decision], ...] = (
    _redis,
    _capacity,
    _last_boot,
    _resources,
    _clean_checkout,
    _remote,
)


def _quiet(_: str) -> None:
    """Nobody is told how the test run goes."""


def run_preflight(
    settings: Settings, conn: redis.Redis, progress: Progress = _quiet
) -> list[Decision]:
    """Run the checks in order, cheapest first, the tests last; stop at the first that fails."""
    results = []
    for check in CHECKS:
        result = check(settings, conn)
        results.append(result)
        if not result:
            return results
    results.append(_tests(settings, conn, progress))
    return results
