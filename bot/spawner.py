"""Starts the bot's own processes (its HTTP server, the embedded workers) as forks of a copy of
the bot taken once Molt's code is imported, not as new Pythons: ``python -m bot.cli worker``
spends a third of a second of CPU importing what the bot has imported already.

``molt run`` forks the copy (the spawner) after the boot guard let the code run and before
the bot opens a connection, starts a thread or reads a message, so what the spawner forks has
done nothing but import. Each child then runs its ``molt`` command as a new process would:
its own session if asked, stdin from /dev/null, output to its log, the default signal
handlers, and ``sys.orig_argv`` as ``python -m bot.cli <command>`` would have it (a worker
re-executes onto new code with it). The spawner reads requests from a pipe and ends when the
bot's end closes, at its exit and at its exec onto new code alike; children outlive it as any
started process would, and the kernel reaps them (SIGCHLD ignored).

Without Linux's pidfds, or once the spawner is gone, ``popen`` starts a new Python instead.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn

import structlog

log = structlog.get_logger(__name__)

#: What every child will need and the bot itself does not import: loaded once, in the spawner.
PRELOAD = ("pipeline.update.worker",)


class Spawned:
    """A child of the spawner, with what the bot asks of a ``Popen``. It is not the bot's
    child: its end is seen through a pidfd (never another process that took its pid), and
    its exit status is not known (``returncode`` is -1 once it ended)."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            with suppress(subprocess.TimeoutExpired):
                self.wait(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            ready, _, _ = select.select([self._pidfd], [], [], timeout)
            if not ready:
                raise subprocess.TimeoutExpired(["molt"], timeout or 0)
            self.returncode = -1
            os.close(self._pidfd)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with suppress(ProcessLookupError):  # ended, not yet seen: as Popen does
                signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


Child = subprocess.Popen[bytes] | Spawned


class Spawner:
    """The bot's side of the spawner: one request at a time, from any of its threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: int | None = None
        self._replies: int | None = None
        self.pid = 0

    def start(self) -> None:
        """Fork the spawner; call it while this process has a single thread."""
        if not hasattr(os, "pidfd_open") or threading.active_count() > 1:
            return
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(requests_w)
            os.close(replies_r)
            _serve(requests_r, replies_w)
        os.close(requests_r)
        os.close(replies_w)
        self._requests, self._replies, self.pid = requests_w, replies_r, pid

    def popen(
        self,
        command: Sequence[str],
        *,
        log_to: Path | None = None,
        env: Mapping[str, str] | None = None,
        new_session: bool = False,
    ) -> Child:
        """``molt <command>``: forked by the spawner, or else started as a new Python."""
        # What a new process would be given: this process's environment and directory now.
        request = {
            "command": list(command),
            "log": str(log_to) if log_to else None,
            "env": {**os.environ, **(env or {})},
            "cwd": os.getcwd(),
            "session": new_session,
        }
        with self._lock:
            pid = self._ask(request)
            if pid:
                try:
                    return Spawned(pid, os.pidfd_open(pid))
                except ProcessLookupError:  # ended already: seen as ended
                    pass
        return _exec(command, log_to, env, new_session)

    def _ask(self, request: dict[str, Any]) -> int:
        if self._requests is None or self._replies is None:
            return 0
        try:
            os.write(self._requests, json.dumps(request).encode() + b"\n")
            reply = _line(self._replies)
        except OSError:
            reply = b""
        if not reply:  # the spawner is gone: new Pythons from now on
            log.warning("process spawner gone; starting new processes instead")
            self.close()
            return 0
        return int(json.loads(reply)["pid"])

    def close(self) -> None:
        for fd in (self._requests, self._replies):
            if fd is not None:
                os.close(fd)
        self._requests = self._replies = None


def _exec(
    command: Sequence[str], log_to: Path | None, env: Mapping[str, str] | None, session: bool
) -> subprocess.Popen[bytes]:
    out = open(log_to, "ab") if log_to else None  # noqa: SIM115 - the child holds it
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "bot.cli", *command],
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=session,
        )
    finally:
        if out:
            out.close()


def _line(fd: int) -> bytes:
    """One line from a pipe, read a byte at a time: nothing past it is taken."""
    line = bytearray()
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            return b""
        line += chunk
    return bytes(line)


def _serve(requests: int, replies: int) -> NoReturn:
    """The spawner: fork a child for each request until the bot's end of the pipe closes."""
    try:
        _let_go_of_inherited(keep={0, 1, 2, requests, replies})
        # Ctrl-C at the console reaches the whole process group: the bot stops, and the
        # spawner with it once the pipe closes.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
        for module in PRELOAD:
            __import__(module)
        while request := _line(requests):
            # As with Popen, the child is set up (session, output, environment) by the time
            # the bot hears its pid: it closes its end of ``ready`` once it is.
            ready_r, ready_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                for fd in (requests, replies, ready_r):
                    os.close(fd)
                _become(json.loads(request), ready_w)
            os.close(ready_w)
            os.read(ready_r, 1)
            os.close(ready_r)
            os.write(replies, json.dumps({"pid": pid}).encode() + b"\n")
    finally:
        os._exit(0)


def _let_go_of_inherited(keep: set[int]) -> None:
    """Every descriptor the bot had open at the fork (its instance lock, Redis connections,
    its log file) points at /dev/null instead: a child must not hold the bot's locks, as a
    new process does not, and the bot's Python objects that wrap them, never closed here,
    keep their numbers from being reused under them."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
        if fd not in keep and fd != devnull:
            with suppress(OSError):  # the listing's own, closed by now
                os.dup2(devnull, fd, inheritable=False)
    os.close(devnull)


def _become(request: dict[str, Any], ready: int) -> NoReturn:
    """Run ``molt <command>`` in this fresh fork as a new process would, and exit with it."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if request["session"]:
            os.setsid()
        _redirect(request["log"])
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.close(ready)
        command = request["command"]
        from bot import cli

        sys.argv = [str(cli.__file__), *command]
        sys.orig_argv = [sys.executable, "-m", "bot.cli", *command]
        code = _exit_code(cli.main, command)
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def _redirect(log_to: str | None) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if log_to:
        out = os.open(log_to, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)


def _exit_code(main: Any, command: list[str]) -> int:
    """What ``sys.exit(main(command))`` would leave as the exit status."""
    try:
        return int(main(command))
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


#: The bot process's one spawner (``molt run`` starts it).
spawner = Spawner()
