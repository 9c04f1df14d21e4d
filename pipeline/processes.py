"""Processes Molt started or recorded: whether one still runs, and stopping one; the
process group a test command runs in, recorded while it runs so that it can be killed
when the worker that started it is gone (and, on Linux, dying with that worker).

The record of the test command an update is running is the target's
``molt:command:<id>`` (pipeline/keyspace.py): a hash {request_id, pgid, started, command}.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

#: prctl(2) option: the signal the calling process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def alive(pid: int) -> bool:
    """Running, and not a zombie that nobody reaped (its parent died with it)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def terminate(pid: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns once the process is gone. A
    stopped process (SIGSTOP) is continued after the SIGTERM, as systemd does, so that it
    ends at once instead of after the grace."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
            if sig == signal.SIGTERM:
                os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not alive(pid):
            return


# -- process groups a command was started in ------------------------------------------------


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (/proc/<pid>/stat, field 22): with
    the pid, it names one process, never a later one given the same pid."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def kill_group(pgid: int, started: int, wait: float = 5.0) -> list[int]:
    """SIGKILL the process group ``pgid`` if it is still the one whose leader started at
    ``started`` (a pid the system gave out again is left alone); returns the pids killed.

    Its members may outlive the leader: the group is known by its members that started
    no earlier than the leader did, and Linux gives out no pid that names a live group.
    """
    leader = start_time(pgid)
    if leader is not None and leader != started:
        return []
    members = [pid for pid in group_members(pgid) if (start_time(pid) or 0) >= started]
    if not members:
        return []
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return []
    deadline = time.monotonic() + wait
    while any(alive(pid) for pid in members) and time.monotonic() < deadline:
        time.sleep(0.05)
    return members


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state first); [] if gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child sent ``sig`` when the process starting it dies
    (Linux: prctl PR_SET_PDEATHSIG); None where that is not available. prctl is looked up
    here, before the fork, so the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # it died before the call
            os._exit(1)

    return preexec


class RunningCommand:
    """The test command an update runs, recorded while it runs: whoever rolls the update
    back after its worker died kills the command first (it runs in the checkout about to
    be restored)."""

    def __init__(self, conn: redis.Redis, key: str) -> None:
        self.conn = conn
        self.key = key

    def record(self, request_id: str, pid: int, command: str) -> None:
        started = start_time(pid)
        if started is None:  # already over
            return
        fields: dict[Any, Any] = {
            "request_id": request_id,
            "pgid": pid,
            "started": started,
            "command": command,
        }
        self.conn.hset(self.key, mapping=fields)

    def clear(self, request_id: str) -> None:
        if self.conn.hget(self.key, "request_id") == request_id:
            self.conn.delete(self.key)

    def stop_left(self, request_id: str) -> str:
        """Kill the command ``request_id`` left running, if it still runs; says what was
        killed, for the failure message ("" if nothing was)."""
        raw: dict[str, str] = self.conn.hgetall(self.key)  # type: ignore[assignment]
        if not raw or raw.get("request_id") != request_id:
            return ""
        self.conn.delete(self.key)
        pgid = int(raw["pgid"])
        killed = kill_group(pgid, int(raw["started"]))
        if not killed:
            return ""
        return (
            f"its test command `{raw.get('command', '')}` was still running "
            f"(process group {pgid}, {len(killed)} process(es)) and was killed first"
        )
