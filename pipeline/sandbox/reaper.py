"""Runs a test command that has no sandbox, and ends every process it started once it
ends or is told to stop (SIGTERM), those in sessions of their own included: as their
subreaper (prctl PR_SET_CHILD_SUBREAPER), every orphan of the command becomes its child.

Started as ``python -S reaper.py <argv>`` by pipeline/sandbox/confinement.py: the standard
library only, so it starts in a few milliseconds. Exits with the command's exit code.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

_PR_SET_CHILD_SUBREAPER = 36


class _Stop(Exception):
    """SIGTERM arrived: stop the command."""


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def _children() -> list[int]:
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me:
            found.append(int(name))
    return found


def end_all() -> None:
    """SIGKILL every child until none is left (orphans of the killed become children)."""
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        left = _children()
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # contextlib would cost the start-up an import
                continue
        time.sleep(0.01)


def main(argv: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signal.signal(signal.SIGTERM, _stop)
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    code = 143
    try:
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == child:
                code = os.waitstatus_to_exitcode(status)
                break
    except _Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    end_all()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
