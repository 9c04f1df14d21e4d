"""The update lock says who holds it, expires without heartbeats, and frees only for its owner."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import replace

import redis

from pipeline.keyspace import TargetKeys
from pipeline.queue.locking import UpdateLock, WaitingLine


def test_try_lock_returns_the_holder_when_taken(conn: redis.Redis) -> None:
    lock = UpdateLock(conn, TargetKeys("svc").lock, ttl=5)
    assert lock.try_lock("r1", "amber-otter").ours
    held = lock.try_lock("r2", "brave-crab")
    assert not held.ours and held.request_id == "r1" and held.codename == "amber-otter"
    assert not lock.release("r2")
    assert lock.release("r1")
    assert lock.try_lock("r2", "brave-crab").ours


def test_the_lock_expires_unless_its_holder_heartbeats(conn: redis.Redis) -> None:
    lock = UpdateLock(conn, TargetKeys("svc").lock, ttl=1)
    lock.try_lock("r1", "amber-otter")
    with lock.keep_alive("r1"):
        time.sleep(1.5)
        assert lock.holder() is not None
    deadline = time.monotonic() + 30
    while lock.holder() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.holder() is None


def test_a_holder_is_gone_only_if_it_ran_on_this_machine_and_runs_no_more(
    conn: redis.Redis,
) -> None:
    """What lets recovery roll back a killed worker's update without waiting for the TTL."""
    held = UpdateLock(conn, TargetKeys("svc").lock, ttl=60).try_lock("r1", "amber-otter")
    assert not held.gone()  # this process
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = ended.stdout.strip()
    assert replace(held, holder=f"{socket.gethostname()}:{pid}").gone()
    assert not replace(held, holder=f"elsewhere.example:{pid}").gone()  # cannot tell: it may run
    # a container of the same host name numbers its pids apart: that pid may run there
    here = f"{socket.gethostname()}:{pid}"
    assert not replace(held, holder=here, pids="pid:[1]").gone()
    assert not replace(held, holder=here, pids="").gone()  # taken where pids were not known


def test_a_gone_holders_lock_is_released_once_never_the_lock_taken_after_it(
    conn: redis.Redis,
) -> None:
    """Two recoveries that found the same holder gone: the second lets go of nothing, and
    above all not of the lock the first took for the same request to roll it back."""
    lock = UpdateLock(conn, TargetKeys("svc").lock, ttl=60)
    gone = lock.try_lock("r1", "amber-otter")
    assert lock.release_gone(gone)
    taken = lock.try_lock("r1", "amber-otter")
    assert taken.ours
    assert not lock.release_gone(gone)
    assert lock.holder() == replace(taken, ours=False)


def test_the_waiting_line_keeps_order(conn: redis.Redis) -> None:
    line = WaitingLine(conn, TargetKeys("svc").queue)
    assert [line.join(r) for r in ("a", "b", "c")] == [1, 2, 3]
    line.leave("a")
    assert line.head() == "b" and line.position("c") == 2 and len(line) == 2
