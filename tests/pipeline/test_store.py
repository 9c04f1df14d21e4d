"""The embedded Redis lives exactly as long as some Molt process of its data directory,
however those processes end."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline import store
from pipeline.processes import alive
from tests.support import ROOT, Molt, run_cli

# Its point is the data directory's own embedded Redis: no shared test server.
pytestmark = pytest.mark.own_redis


def _server_pid(data_dir: Path) -> int:
    return int((data_dir / "redis.pid").read_text().strip())


def _processes(data_dir: Path, name: bytes) -> list[int]:
    """Live processes of ``data_dir`` whose command names ``name``: its redis-server runs in
    it (the server renames itself, its command line keeps no path), its watchdog names it."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes()
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        mine = cwd == data_dir or str(data_dir).encode() in command
        if name in command and mine and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def _servers(data_dir: Path) -> list[int]:
    return _processes(data_dir, b"redis-server")


def _watchdogs(data_dir: Path) -> list[int]:
    return _processes(data_dir, b"store_watch.py")


def _answers(data_dir: Path) -> bool:
    """Asked without becoming one of the server's users."""
    client = redis.Redis(
        unix_socket_path=str(store.socket_path(data_dir)),
        socket_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _wait_gone(pid: int, what: str) -> None:
    deadline = time.monotonic() + 30
    while alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"redis-server {pid} still runs {what}")
        time.sleep(0.05)


def _wait_all_gone(data_dir: Path, what: str) -> None:
    """No redis-server and no watchdog of ``data_dir`` left, within a deadline."""
    deadline = time.monotonic() + 30
    while _servers(data_dir) or _watchdogs(data_dir):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"still running {what}: redis-server {_servers(data_dir)}, "
                f"watchdog {_watchdogs(data_dir)}"
            )
        time.sleep(0.05)


@contextlib.contextmanager
def _another_user(data_dir: Path) -> Iterator[None]:
    """This test stands in for a Molt process that still uses the server (as every one
    does: a shared lock on redis.users) until the block ends."""
    fd = os.open(data_dir / store.USERS_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _left_by_a_killed_worker(molt_env: dict[str, str], data_dir: Path, cwd: Path) -> int:
    """A worker starts the embedded Redis and is killed as soon as the server has a pid, the
    start still under way: it never got to stop it, nor to see it answer."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "worker"],
        env={**os.environ, **molt_env, "PYTHONPATH": str(ROOT)},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    try:
        while not (data_dir / "redis.pid").exists():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the worker did not start the embedded Redis")
            time.sleep(0.05)
    finally:
        worker.kill()
        worker.wait()
    return _server_pid(data_dir)


def test_a_shell_command_alone_leaves_no_redis_server_behind(
    molt_env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    for command in (("history",), ("status",), ("audit", "verify")):
        done = run_cli(molt_env, tmp_path, *command)
        assert done.returncode == 0, done.stderr
        assert _servers(data_dir) == [], f"redis-server still runs after `molt {command[0]}`"
        assert not _answers(data_dir)
    _wait_all_gone(data_dir, "after the last shell command ended")


def test_a_shell_command_leaves_the_server_to_the_molt_still_using_it(
    molt_env: dict[str, str], data_dir: Path, tmp_path: Path, start_molt: Callable[..., Molt]
) -> None:
    molt = start_molt()
    molt.wait_for(r"Molt \S+ is up")
    pid = _server_pid(data_dir)
    assert run_cli(molt_env, tmp_path, "history").returncode == 0
    assert alive(pid) and _answers(data_dir)
    assert molt.stop() == 0
    _wait_gone(pid, "after the last Molt process of its data directory stopped")
    _wait_all_gone(data_dir, "after the last Molt process of its data directory stopped")


def test_a_killed_last_user_leaves_no_redis_server_behind(
    molt_env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    pid = _left_by_a_killed_worker(molt_env, data_dir, tmp_path)
    _wait_gone(pid, "after the worker, its only user, was killed")
    _wait_all_gone(data_dir, "after the worker, its only user, was killed")
    assert run_cli(molt_env, tmp_path, "history").returncode == 0  # its data is still there


def test_a_killed_user_leaves_the_server_to_the_others_and_the_next_start_adopts_it(
    molt_env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    with _another_user(data_dir):
        pid = _left_by_a_killed_worker(molt_env, data_dir, tmp_path)
        assert run_cli(molt_env, tmp_path, "history").returncode == 0
        assert alive(pid) and _answers(data_dir)
        assert _servers(data_dir) == [pid]
    _wait_gone(pid, "after its last user left")
    _wait_all_gone(data_dir, "after its last user left")


def test_a_server_found_without_a_watchdog_gets_one(
    molt_env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    """As after an upgrade from a Molt that ran none: the next start adopts the server and
    watches it."""
    with _another_user(data_dir):
        pid = _left_by_a_killed_worker(molt_env, data_dir, tmp_path)
        for watchdog in _watchdogs(data_dir):
            os.kill(watchdog, signal.SIGKILL)
        assert run_cli(molt_env, tmp_path, "history").returncode == 0
        assert alive(pid)
        assert _watchdogs(data_dir)
    _wait_gone(pid, "after its last user left")
    _wait_all_gone(data_dir, "after its last user left")


@pytest.mark.slow
def test_a_server_that_no_longer_answers_is_replaced(
    molt_env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    hung = 0
    try:
        with _another_user(data_dir):  # so that only the next start may deal with it
            hung = _left_by_a_killed_worker(molt_env, data_dir, tmp_path)
            os.kill(hung, signal.SIGSTOP)
            done = run_cli(molt_env, tmp_path, "history")
            assert done.returncode == 0, done.stderr
            assert not alive(hung)
            assert _answers(data_dir)
        _wait_all_gone(data_dir, "after the last user left")
    finally:
        if hung and alive(hung):
            os.kill(hung, signal.SIGKILL)


@pytest.mark.parametrize("workers", ["1", "0"])
def test_a_supervisor_stop_leaves_no_redis_server_behind(
    workers: str, data_dir: Path, start_molt: Callable[..., Molt]
) -> None:
    """SIGTERM to the bot's process group, SIGKILL to what still runs 10 s later (as
    supervisord and docker stop do)."""
    molt = start_molt("run", "--no-console", MOLT_WORKERS=workers)
    molt.wait_for(r"molt is up")
    server = _server_pid(data_dir)
    os.killpg(molt.proc.pid, signal.SIGTERM)
    try:
        molt.proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(molt.proc.pid, signal.SIGKILL)
    molt.wait_for(r"shutting down.*SIGTERM")
    _wait_gone(server, "after its bot was stopped")
    _wait_all_gone(data_dir, "after its bot was stopped")


def test_a_bot_killed_with_its_process_group_leaves_no_redis_server_behind(
    data_dir: Path, start_molt: Callable[..., Molt]
) -> None:
    molt = start_molt("run", "--no-console", MOLT_WORKERS="0")
    molt.wait_for(r"molt is up")
    server = _server_pid(data_dir)
    os.killpg(molt.proc.pid, signal.SIGKILL)
    _wait_gone(server, "after its bot and HTTP process were killed")
    _wait_all_gone(data_dir, "after its bot and HTTP process were killed")
