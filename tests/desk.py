"""Molt in the test's own process, errbot ``testbot``-style: the console adapter writing to a
transcript, the desk and the notifier on their threads, and the RQ jobs run by a
``SimpleWorker`` when the test says so. Redis, git, the job functions and every test
command are real; only the processes are not separate.

    chat = start_chat()
    chat.send("deploy main")
    chat.send("press approve")
    chat.work()  # the queued jobs, to their end
    chat.wait_for(r"✅ Live: ")
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import pytest
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.timeouts import TimerDeathPenalty

from bot import cli
from bot.console import SINCE_ENV, Console
from bot.desk import Desk
from bot.notifier import Notifier
from pipeline import metrics, store
from pipeline.config import Settings, load_settings
from pipeline.intake import control
from pipeline.queue import queueing
from pipeline.requests.store import Request, RequestStore


class Transcript(io.TextIOBase):
    """What the console printed, line by line, with a wait for the line a test expects (a
    line written in pieces counts once it ends)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._partial = ""
        self._changed = threading.Condition()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._changed:
            *done, self._partial = (self._partial + text).split("\n")
            self.lines.extend(done)
            self._changed.notify_all()
        return len(text)

    def isatty(self) -> bool:
        return False

    def text(self, since: int = 0) -> str:
        with self._changed:
            return "\n".join(self.lines[since:])

    @property
    def output(self) -> str:
        return self.text()

    def wait_for(self, pattern: str, since: int = 0, timeout: float = 90) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[since:]:
                    if found := regex.search(line):
                        return found
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout}s; Molt said:\n"
                        + "\n".join(self.lines[-80:])
                    )
                self._changed.wait(0.2)


class ThreadWorker(SimpleWorker):
    """RQ's in-process worker, on any thread: no signal handlers of its own (they belong to
    the test process's main thread), job time limits kept by a timer, not SIGALRM, and no
    pub/sub thread for RQ's remote commands (nobody sends one; stopping it can wait a minute
    on redis-py's reader)."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass

    def subscribe(self) -> None:
        pass

    def unsubscribe(self) -> None:
        pass


class Chat:
    """A console conversation with a Molt running in this process."""

    def __init__(self, settings: Settings, user: str) -> None:
        self.settings = settings
        self.conn = store.connect(settings)
        self.store = RequestStore(self.conn)
        self.transcript = Transcript()
        self.console = Console(user, self.store, out=self.transcript, wait=settings.console_wait)
        adapters = {"console": self.console}
        self.desk = Desk(settings, self.conn, adapters)
        self.notifier = Notifier(settings, self.conn, adapters)
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        self.notifier.start()

    # -- talking to it ---------------------------------------------------------

    @property
    def lines(self) -> list[str]:
        return self.transcript.lines

    @property
    def output(self) -> str:
        return self.transcript.text()

    def send(self, line: str) -> int:
        """Type a line as into the console, and wait until the desk did its part (a press
        waits for its button first, as the console does); returns the transcript's position
        to wait from."""
        mark = len(self.transcript.lines)
        words = line.split()
        if words[0] == "press":
            self.console.press(self.desk, words[1:], self._stopping)
        else:
            self.desk.say(self.console.origin, line).result(timeout=300)
        return mark

    def wait_for(self, pattern: str, since: int = 0, timeout: float = 90) -> re.Match[str]:
        return self.transcript.wait_for(pattern, since=since, timeout=timeout)

    def requests(self, count: int = 10) -> list[Request]:
        """The newest requests first."""
        return self.store.recent(count)

    # -- the queued jobs -------------------------------------------------------

    def worker(self) -> ThreadWorker:
        queue = Queue(
            queueing.queue_name(self.settings),
            connection=store.connect(self.settings, decode=False),
        )
        return ThreadWorker([queue], connection=queue.connection)

    def work(self) -> None:
        """Run every job on the queue, and any they add, on this thread until none is left."""
        self.worker().work(burst=True, with_scheduler=False)

    def work_in_background(self) -> threading.Thread:
        """Run the queued jobs on a thread of their own while the test goes on talking; the
        thread ends when the queue is empty (joined when the chat ends)."""
        thread = threading.Thread(target=self.work, name="molt-test-worker", daemon=True)
        thread.start()
        self._workers.append(thread)
        return thread

    def wait_until_taken(self, request: Request, timeout: float = 90) -> None:
        """Until a worker took the job the request's approval queued."""
        job_id = queueing.job_id(request.id, request.attempt)
        conn = store.connect(self.settings, decode=False)
        deadline = time.monotonic() + timeout
        while Job.fetch(job_id, connection=conn).get_status() is JobStatus.QUEUED:
            if time.monotonic() > deadline:
                raise AssertionError(f"no worker took {job_id} within {timeout}s")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop talking; an update still running (a test that failed half-way) gets an
        emergency stop, so that it rolls back and its test command ends with it."""
        self._stopping.set()
        for thread in self._workers:
            thread.join(timeout=1)
        if any(thread.is_alive() for thread in self._workers):
            control.stop(self.settings, self.conn, "console:tests")
        for thread in self._workers:
            thread.join(timeout=120)
        self.notifier.stop()
        self.desk.close()


StartChat = Callable[..., Chat]


@pytest.fixture
def start_chat(
    molt_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Chat]]:
    """Start Molt in this process with the settings of ``molt_env`` and ``env`` (in the
    environment too, where the job functions read them); every chat is closed at the end."""
    started: list[Chat] = []

    def start(**env: str) -> Chat:
        for name, value in {**molt_env, **env}.items():
            monkeypatch.setenv(name, value)
        if not started:  # the console notes when it started here; gone after the test
            monkeypatch.delenv(SINCE_ENV, raising=False)
        settings = load_settings()
        chat = Chat(settings, settings.console_user)
        started.append(chat)
        return chat

    yield start
    for chat in started:
        chat.close()


@pytest.fixture
def chat(start_chat: StartChat) -> Chat:
    return start_chat()


@dataclass
class Said:
    """What ``molt <command>`` at a shell answered."""

    returncode: int
    stdout: str
    stderr: str


def molt(*args: str, env: Mapping[str, str] | None = None) -> Said:
    """``molt <args>`` in this process, with the environment as it is (and ``env``)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.delenv(metrics.ENV, raising=False)  # set by the command, for its children
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            code = cli.main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            if isinstance(exc.code, str):
                print(exc.code, file=err)
    return Said(code, out.getvalue(), err.getvalue())
