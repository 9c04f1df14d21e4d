"""The embedded Redis lives exactly as long as some Molt process of its data directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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


def _servers(data_dir: Path) -> list[int]:
    """redis-server processes started for ``data_dir`` (their command names its conf)."""
    conf = str(data_dir / "redis.conf").encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"redis-server" in command and conf in command and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


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


def _left_by_a_killed_worker(molt_env: dict[str, str], data_dir: Path, cwd: Path) -> int:
    """A worker starts the embedded Redis and is killed: nobody was left to stop it."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "worker"],
        env={**os.environ, **molt_env, "PYTHONPATH": str(ROOT)},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    try:
        while not (data_dir / "redis.pid").exists() or not _answers(data_dir):
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


def test_a_killed_worker_leaves_the_server_to_the_next_start_which_adopts_it(
    molt_env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    pid = _left_by_a_killed_worker(molt_env, data_dir, tmp_path)
    assert alive(pid)
    assert run_cli(molt_env, tmp_path, "history").returncode == 0
    _wait_gone(pid, "after the command that adopted it, its last user, ended")
    assert _servers(data_dir) == []


def test_a_server_that_no_longer_answers_is_replaced(
    molt_env: dict[str, str], data_dir: Path, tmp_path: Path
) -> None:
    hung = _left_by_a_killed_worker(molt_env, data_dir, tmp_path)
    os.kill(hung, signal.SIGSTOP)
    try:
        done = run_cli(molt_env, tmp_path, "history")
        assert done.returncode == 0, done.stderr
        assert not alive(hung)
        assert _servers(data_dir) == []
    finally:
        if alive(hung):
            os.kill(hung, signal.SIGKILL)
