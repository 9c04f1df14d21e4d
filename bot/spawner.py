"""Starts the bot's own processes (its HTTP server, the embedded workers) as forks of a copy of
the bot taken once Molt's code is imported, not as new Pythons: ``python -m bot.cli worker``
spends a third of a second of CPU importing what the bot has imported already.

``molt run`` forks the copy (the spawner) after the boot guard let the code run and before
the bot opens a connection, starts a thread or reads a message, so what the spawner forks has
done nothing but import. Each child then runs its ``molt`` command as a new process would:
its own session if asked, stdin from /dev/null, output to its log, the default signal
handlers, and ``sys.orig_argv`` as ``python -m bot.cli <command>`` would have it (a worker
re-executes onto new code with it), and none of the bot's descriptors. The spawner reads
requests from a socket and ends when the bot's end closes, at its exit, its death and its
exec onto new code alike; children outlive it as any started process would.

Without Linux's pidfds, once the spawner is gone, or once Molt's checkout moved on from the
code the spawner holds, ``popen`` starts a new Python instead.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn

import structlog

from pipeline.releases.manifests import checkout_version, running_version

log = structlog.get_logger(__name__)

#: What every child will need and the bot itself does not import: loaded once, in the spawner.
PRELOAD = ("pipeline.update.worker",)
#: Where a bot that re-executed itself finds the spawner of its earlier image, to reap it.
SPAWNER_ENV = "MOLT_SPAWNER_PID"
#: How long the bot waits for the spawner to answer before it starts a new Python instead.
ASK_TIMEOUT = 10.0
#: The largest request: the environment travels in it.
MESSAGE_MAX = 1 << 20


class Spawned:
    """A child of the spawner, with what the bot asks of a ``Popen``. Its end is seen through
    a pidfd; the spawner reaps it only once the bot saw it end, so that its pid is never
    another process's while the bot may still signal it, as with a child of its own. Its exit
    status is not known: ``returncode`` is -1 once it ended."""

    def __init__(self, pid: int, pidfd: int, reap: Callable[[int], None]) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = pidfd
        self._reap = reap
        self._lock = threading.Lock()  # the housekeeping and a stop may both ask at once

    @classmethod
    def ended(cls, pid: int) -> Spawned:
        """A child already gone and reaped, with no pidfd to ask."""
        child = cls(pid, -1, lambda _: None)
        child.returncode = -1
        return child

    def poll(self) -> int | None:
        with suppress(subprocess.TimeoutExpired):
            self.wait(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        with self._lock:
            if self.returncode is None:
                ready = select.poll()
                ready.register(self._pidfd, select.POLLIN)
                if not ready.poll(None if timeout is None else timeout * 1000):
                    raise subprocess.TimeoutExpired(["molt"], timeout or 0)
                self.returncode = -1
                os.close(self._pidfd)
                self._reap(self.pid)
            return self.returncode

    def send_signal(self, sig: int) -> None:
        with self._lock:
            if self.returncode is None:
                with suppress(ProcessLookupError):  # ended, not yet seen: as Popen does
                    signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


Child = subprocess.Popen[bytes] | Spawned
#: ``bot.cli.main``: runs a ``molt`` command, returns its exit status.
Main = Callable[[list[str]], int]


class Spawner:
    """The bot's side of the spawner: one request at a time, from any of its threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._version = ""
        self.pid = 0

    def start(self, main: Main) -> None:
        """Fork the spawner, which runs each command with ``main`` (``bot.cli.main``); only
        while this process has a single thread, on a kernel with pidfds. Reaps the spawner
        of this process's image before an exec, gone with it."""
        _reap_earlier()
        if threading.active_count() > 1 or not _pidfds():
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:  # no memory for it, a process limit: new Pythons, as before
            log.warning("no process spawner; starting new processes instead", error=str(exc))
            ours.close()
            theirs.close()
            return
        if pid == 0:
            try:
                ours.close()
                _serve(theirs, main)
            finally:
                os._exit(0)
        theirs.close()
        ours.settimeout(ASK_TIMEOUT)
        self._socket, self.pid = ours, pid
        self._version = running_version()
        os.environ[SPAWNER_ENV] = str(pid)

    def popen(
        self,
        command: Sequence[str],
        *,
        log_to: Path | None = None,
        env: Mapping[str, str] | None = None,
        new_session: bool = False,
    ) -> Child:
        """``molt <command>``: forked by the spawner, or else started as a new Python: when
        there is none, or once Molt's checkout moved on from the code the spawner holds (a
        self-update landed; the bot restarts onto it soon), where a child would mix the
        spawner's modules with the new code's."""
        with self._lock:
            if self._socket is not None and checkout_version() == self._version:
                # What a new process would be given: this process's environment and
                # directory now.
                pid = self._ask(
                    {
                        "command": list(command),
                        "log": str(log_to) if log_to else None,
                        "env": {**_environment(), **(env or {})},
                        "cwd": os.getcwd(),
                        "session": new_session,
                    }
                )
                if pid:
                    # Not reaped until the bot says so: a child that ended already is a
                    # zombie, and its pidfd says it ended.
                    try:
                        return Spawned(pid, os.pidfd_open(pid), self.reap)
                    except ProcessLookupError:  # the spawner died since: init reaped it
                        return Spawned.ended(pid)
        return _exec(command, log_to, env, new_session)

    def reap(self, pid: int) -> None:
        """The bot saw ``pid`` end: the spawner may let it go."""
        with self._lock:
            self._ask({"reap": pid})

    def _ask(self, request: dict[str, Any]) -> int:
        if self._socket is None:
            return 0
        try:
            self._socket.send(json.dumps(request).encode())
            reply = self._socket.recv(MESSAGE_MAX)
        except OSError:  # a timeout, or a request too large to send
            reply = b""
        if not reply:  # gone, or stuck: new Pythons from now on
            log.warning("process spawner gone; starting new processes instead")
            self._socket.close()
            self._socket = None
            with suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            return 0
        return int(json.loads(reply)["pid"])


def _environment() -> dict[str, str]:
    """This process's environment, but for the spawner's pid, which is its alone."""
    return {name: value for name, value in os.environ.items() if name != SPAWNER_ENV}


def _pidfds() -> bool:
    """This kernel opens pidfds (Linux 5.3 and later, unless a seccomp filter says no)."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


def _reap_earlier() -> None:
    """The spawner of this process before it re-executed itself ends as the exec closed its
    socket: reap it (as a child of this process, nobody else would)."""
    earlier = os.environ.pop(SPAWNER_ENV, "")
    if not earlier.isdigit():
        return
    deadline = time.monotonic() + 2
    with suppress(ChildProcessError):
        while os.waitpid(int(earlier), os.WNOHANG)[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)


def _argv(command: Sequence[str]) -> list[str]:
    """``molt <command>`` as a new Python runs it: a forked child names itself the same."""
    return [sys.executable, "-m", "bot.cli", *command]


def _exec(
    command: Sequence[str], log_to: Path | None, env: Mapping[str, str] | None, session: bool
) -> subprocess.Popen[bytes]:
    out = open(log_to, "ab") if log_to else None  # noqa: SIM115 - the child holds it
    try:
        return subprocess.Popen(
            _argv(command),
            env={**_environment(), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=session,
        )
    finally:
        if out:
            out.close()


def _serve(sock: socket.socket, main: Main) -> None:
    """The spawner: fork a child for each request until the bot's end of the socket closes
    (its exit, its exec and its death alike); reap a child once the bot saw it end."""
    _let_go_of_inherited(keep={0, 1, 2, sock.fileno()})
    # Ctrl-C at the console reaches the whole process group: the bot stops, and the
    # spawner with it once the socket closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for module in PRELOAD:
        __import__(module)
    while message := sock.recv(MESSAGE_MAX):
        request = json.loads(message)
        if "reap" in request:
            with suppress(ChildProcessError):
                os.waitpid(int(request["reap"]), os.WNOHANG)
            sock.send(b'{"pid": 0}')
            continue
        # As with Popen, the child is set up (session, output, environment) by the time the
        # bot hears its pid: it closes its end of ``ready`` once it is.
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                sock.close()
                os.close(ready_r)
                _become(request, ready_w, main)
            finally:
                os._exit(1)
        os.close(ready_w)
        os.read(ready_r, 1)
        os.close(ready_r)
        sock.send(json.dumps({"pid": pid}).encode())


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


def _become(request: dict[str, Any], ready: int, main: Main) -> NoReturn:
    """Run ``molt <command>`` in this fresh fork as a new process would, and exit with it."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if request["session"]:
            os.setsid()
        _redirect(request["log"])
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.close(ready)
        command = request["command"]
        sys.argv = [main.__code__.co_filename, *command]
        sys.orig_argv = _argv(command)
        code = _exit_code(main, command)
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


def _exit_code(main: Main, command: list[str]) -> int:
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
