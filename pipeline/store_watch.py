"""The embedded redis-server's watchdog: it stops the server once no Molt process of its
data directory is left, however they ended (a SIGKILL runs no exit handler, and a process
killed during its start never installed one).

pipeline/store.py starts one just before every server it starts (it waits for the start to
end, then watches what it started), and beside a running server it finds without one
(started by a Molt from before it had them). It runs in a session of its own, detached, and
is none of the server's users: every ``TICK`` seconds it asks, under the lock that starts
and stops the server (redis.lock), for MOLT_DATA_DIR/redis.users alone.
Users hold that file shared and flock locks end with their process, so having it means no
user is left: it stops the server (SIGTERM: redis writes its append-only file and exits)
while still holding it, so that a Molt starting meanwhile waits and then finds the server
stopped, not stopping. It exits once the server it watches is gone or redis.pid names
another. One runs per data directory: it holds redis.watch for as long as it runs.

Standard library only, and run as a file (``python pipeline/store_watch.py <data dir>
<pid>``), so that it starts in a few milliseconds and imports nothing of Molt's.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

#: How often it looks; a server whose last user was killed stops within about this long.
#: A look is a few system calls, so a short one costs nothing while it spares whoever waits
#: for the server to go (a Molt starting anew, a test) most of a second.
TICK = 0.25
WATCH_FILE = "redis.watch"
#: How long a server that was sent SIGTERM has to exit before it is killed.
GRACE = 10.0
#: The pid given for a server whose start is under way: the watchdog starts before it, so
#: that a process killed at any moment of the start leaves no server that nothing stops.
STARTING = -1
#: How long, once a start ended, its server may take to write its pid file.
START_SECONDS = 10.0


def main(argv: list[str]) -> int:
    data_dir, pid = Path(argv[1]), int(argv[2])
    if os.fork():  # detached: the process that started it waits for nothing
        return 0
    watch = os.open(data_dir / WATCH_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    # The watchdog of a server just replaced exits as that server goes: wait for it. Another
    # one of this very server keeps the file until the server is gone; this one then exits.
    fcntl.flock(watch, fcntl.LOCK_EX)
    if pid == STARTING:
        pid = _started(data_dir)
    started = start_time(pid) if _is_redis(pid) else None
    ended = _ending(pid)
    while started is not None and _watched(data_dir, pid, started):
        if _stopped_alone(data_dir, pid, started):
            break
        ended(TICK)
    return 0


def _started(data_dir: Path) -> int:
    """The server a start under way makes: its pid once the start ends, whether it ended
    well or its process died (the start lock is free either way), or 0 if none runs."""
    with open(data_dir / "redis.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
    # A daemonized redis-server writes its pid file after the process that started it has
    # returned: a starter killed in between leaves a server that names itself a moment later.
    deadline = time.monotonic() + START_SECONDS
    while not (pid := _named(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid


def _named(data_dir: Path) -> int:
    """The pid redis.pid names, or 0."""
    try:
        return int((data_dir / "redis.pid").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _ending(pid: int) -> Callable[[float], None]:
    """A wait of at most so many seconds that ends early when ``pid`` exits (a pidfd), so
    that the watchdog does not outlive its server by a tick."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux ≥ 5.3, or already gone
        return time.sleep

    def wait(seconds: float) -> None:
        select.select([pidfd], [], [], seconds)

    return wait


def _watched(data_dir: Path, pid: int, started: int) -> bool:
    """The server still runs and is still the data directory's one."""
    return _named(data_dir) == pid and start_time(pid) == started


def _stopped_alone(data_dir: Path, pid: int, started: int) -> bool:
    """Stop the server if no user is left and nobody is starting or stopping it."""
    with open(data_dir / "redis.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        users = os.open(data_dir / "redis.users", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            _stop(pid, started)
            return True
        finally:
            os.close(users)


def _stop(pid: int, started: int) -> None:
    """SIGTERM, then SIGKILL after ``GRACE``; returns once it is gone."""
    for sig, wait in ((signal.SIGTERM, GRACE), (signal.SIGKILL, 5.0)):
        if start_time(pid) != started:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while start_time(pid) == started and time.monotonic() < deadline:
            time.sleep(0.02)


def _is_redis(pid: int) -> bool:
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def start_time(pid: int) -> int | None:
    """When ``pid`` started (/proc/<pid>/stat, field 22); None once it is gone or a zombie.
    With the pid, it names one process, never a later one given the same pid."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
