"""The update lock and the waiting line: one update at a time per target.

Their keys are the target's (pipeline/keyspace.py): the lock expires unless its
holder heartbeats (``UpdateLock.heartbeat``).

The lock is taken for the request at the head of the line, in one transaction with
reading the line (pipeline/queue/queueing.py ``take_turn``), so updates land in the order they
joined the line, however many workers there are and whichever job a worker takes.
A holder that dies stops heartbeating; the lock expires and recovery rolls back
what it left (pipeline/update/recovery.py), at once if the holder ran on the same machine
(``Holder.gone``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import redis

from pipeline.processes import alive

_RELEASE_EXACT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RELEASE = """
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v)['request_id'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_JOIN = """
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
for i, id in ipairs(ids) do
  if id == ARGV[1] then return i end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local mine = tonumber(ARGV[2])
for i, id in ipairs(ids) do
  local theirs = tonumber(redis.call('HGET', KEYS[2], id) or ARGV[3])
  if theirs > mine then
    redis.call('LINSERT', KEYS[1], 'BEFORE', id, ARGV[1])
    return i
  end
end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""
_REFRESH = """
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v)['request_id'] == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


@dataclass(frozen=True)
class Holder:
    """Who holds the lock; ``ours`` when ``try_lock`` took it (or already had it)."""

    request_id: str
    codename: str
    holder: str
    since: float
    ours: bool = False
    #: The boot and PID namespace the holder's pid is numbered in (``<boot id>/pid:[…]``).
    pids: str = ""

    def gone(self) -> bool:
        """The holder is a process on this machine that no longer runs (killed, crashed):
        what it held need not wait for the lock to expire. Only a pid of this process's own
        PID namespace says so: containers can share a host name, and a pid of another
        namespace may be a process that runs on."""
        host, _, pid = self.holder.rpartition(":")
        if host != socket.gethostname() or not pid.isdigit():
            return False
        return bool(self.pids) and self.pids == _pid_space() and not alive(int(pid))


@cache
def _pid_space() -> str:
    """This boot of this machine and the PID namespace in it: every machine's first
    namespace has the same number, so the boot's id tells machines apart."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _mine(request_id: str, codename: str) -> Holder:
    here = f"{socket.gethostname()}:{os.getpid()}"
    return Holder(request_id, codename, here, time.time(), pids=_pid_space())


def _value(holder: Holder) -> str:
    return json.dumps({k: v for k, v in asdict(holder).items() if k != "ours"})


class UpdateLock:
    def __init__(self, conn: redis.Redis, key: str, ttl: float) -> None:
        self.conn = conn
        self.key = key
        self.ttl_ms = int(ttl * 1000)

    def holder(self) -> Holder | None:
        raw = self.conn.get(self.key)
        if not raw:
            return None
        return Holder(**json.loads(raw))

    def value_for(self, request_id: str, codename: str) -> str:
        """The lock's value when this process holds it for ``request_id``."""
        return _value(_mine(request_id, codename))

    def try_lock(self, request_id: str, codename: str) -> Holder:
        """Take the lock for ``request_id``; the holder says whether it is ``ours``."""
        mine = _mine(request_id, codename)
        if self.conn.set(self.key, _value(mine), nx=True, px=self.ttl_ms):
            return replace(mine, ours=True)
        held = self.holder()
        if held is None:  # expired between the two calls
            return self.try_lock(request_id, codename)
        return replace(held, ours=held.request_id == request_id)

    def heartbeat(self, request_id: str) -> bool:
        return bool(self.conn.eval(_REFRESH, 1, self.key, request_id, self.ttl_ms))

    def release(self, request_id: str) -> bool:
        return bool(self.conn.eval(_RELEASE, 1, self.key, request_id))

    def release_gone(self, held: Holder) -> bool:
        """Let go of the lock ``held`` described, if it still does: of two processes that
        found its holder gone, only the first releases it, never the lock the other took
        for the same request since."""
        return bool(self.conn.eval(_RELEASE_EXACT, 1, self.key, _value(held)))

    def keep_alive(self, request_id: str) -> Heartbeat:
        return Heartbeat(self, request_id)


class Heartbeat:
    """Refreshes the lock from a thread while a job runs."""

    def __init__(self, lock: UpdateLock, request_id: str) -> None:
        self.lock = lock
        self.request_id = request_id
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="molt-heartbeat", daemon=True)

    def _run(self) -> None:
        interval = self.lock.ttl_ms / 3000
        while not self._stop.wait(interval):
            try:
                if not self.lock.heartbeat(self.request_id):
                    self.lost = True
            except redis.RedisError:
                continue

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


#: Priorities in the waiting line, first served first; first come first served within each.
RECOVERY = 0  # a rollback an incident raised
OPERATOR_ROLLBACK = 1  # a rollback an operator asked for
ORDINARY = 2  # everything else
PRIORITY_NAMES = {RECOVERY: "incident recovery", OPERATOR_ROLLBACK: "rollback", ORDINARY: ""}


class WaitingLine:
    """Approved requests waiting for the lock, in order: a priority queue (incident
    recovery, then operator rollbacks, then the rest), first come first served within
    each priority. Priorities are kept in the hash ``<key>:priority``."""

    def __init__(self, conn: redis.Redis, key: str) -> None:
        self.conn = conn
        self.key = key
        self.priorities = f"{key}:priority"

    def join(self, request_id: str, priority: int = ORDINARY) -> int:
        """Add a request behind every request of its priority or a higher one, unless it is
        in the line already; returns its 1-based position."""
        return int(
            self.conn.eval(_JOIN, 2, self.key, self.priorities, request_id, priority, ORDINARY)
        )

    def priority(self, request_id: str) -> int:
        raw = self.conn.hget(self.priorities, request_id)
        return int(raw) if raw is not None else ORDINARY

    def leave(self, request_id: str) -> None:
        self.conn.lrem(self.key, 0, request_id)
        self.conn.hdel(self.priorities, request_id)

    def ids(self) -> list[str]:
        return [str(i) for i in self.conn.lrange(self.key, 0, -1)]

    def head(self) -> str | None:
        value = self.conn.lindex(self.key, 0)
        return str(value) if value else None

    def position(self, request_id: str) -> int | None:
        ids = self.ids()
        return ids.index(request_id) + 1 if request_id in ids else None

    def __len__(self) -> int:
        return int(self.conn.llen(self.key))
