"""The embedded Redis's watchdog (pipeline/store_watch.py), its decisions taken in this
process: it stops what it watches only when no user holds the users file and nobody starts
or stops the server, and it never mistakes a later process for the one it watched.
tests/pipeline/test_store.py checks the same end to end, with real servers and killed
processes."""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import store_watch


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process standing in for the server, its pid in redis.pid as the server's would be."""
    process = subprocess.Popen(["sleep", "60"])
    (tmp_path / "redis.pid").write_text(f"{process.pid}\n")
    yield process
    process.kill()
    process.wait()


def _hold(path: Path, how: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, how)
    return fd


def test_a_process_is_known_by_its_start_not_its_pid_alone(
    tmp_path: Path, watched: subprocess.Popen[bytes]
) -> None:
    started = store_watch.start_time(watched.pid)
    assert started is not None
    assert store_watch._watched(tmp_path, watched.pid, started)
    assert not store_watch._watched(tmp_path, watched.pid, started + 1)  # a later process
    (tmp_path / "redis.pid").write_text("1\n")  # another server took its place
    assert not store_watch._watched(tmp_path, watched.pid, started)
    watched.kill()
    watched.wait()
    assert store_watch.start_time(watched.pid) is None


def test_a_server_with_a_user_left_is_not_stopped(
    tmp_path: Path, watched: subprocess.Popen[bytes]
) -> None:
    started = store_watch.start_time(watched.pid)
    assert started is not None
    user = _hold(tmp_path / "redis.users", fcntl.LOCK_SH)
    try:
        assert not store_watch._stopped_alone(tmp_path, watched.pid, started)
        assert watched.poll() is None
    finally:
        os.close(user)


def test_a_server_being_started_or_stopped_is_left_to_whoever_does_it(
    tmp_path: Path, watched: subprocess.Popen[bytes]
) -> None:
    started = store_watch.start_time(watched.pid)
    assert started is not None
    starting = _hold(tmp_path / "redis.lock", fcntl.LOCK_EX)
    try:
        assert not store_watch._stopped_alone(tmp_path, watched.pid, started)
        assert watched.poll() is None
    finally:
        os.close(starting)


def test_the_last_user_gone_the_server_is_stopped_and_gone_when_it_returns(
    tmp_path: Path, watched: subprocess.Popen[bytes]
) -> None:
    started = store_watch.start_time(watched.pid)
    assert started is not None
    os.close(_hold(tmp_path / "redis.users", fcntl.LOCK_SH))  # a user came and went
    assert store_watch._stopped_alone(tmp_path, watched.pid, started)
    assert watched.wait(timeout=5) != 0  # ended by its signal
    assert not store_watch._watched(tmp_path, watched.pid, started)


def test_a_process_that_is_gone_is_not_signalled(tmp_path: Path) -> None:
    process = subprocess.Popen(["true"])
    process.wait()
    store_watch._stop(process.pid, 12345)  # nothing to stop, nothing raised
