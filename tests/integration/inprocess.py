"""Molt's bot in the test's own process: the real ``Bot`` (adapters, desk, inbox reader,
notifier, housekeeping) with its HTTP server on a thread (uvicorn on port 0), and the jobs it
queues run by RQ ``SimpleWorker``s in burst mode on a thread of their own. The front ends'
tests drive it the way their platform does (signed HTTP requests, the fakes' gateways, lines
typed at the console) and read what it posted to the fakes or printed, without starting a
process tree per test."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog
from rq import Queue

from bot.app import Bot
from pipeline import logs, store
from pipeline.config import Settings, load_settings
from pipeline.queue import queueing, workers
from pipeline.requests.store import RequestStore
from tests.desk import ThreadWorker, Transcript


class SharedBeat(workers.Beat):
    """A worker's registration when several workers share this test process: a real worker
    process drops the entries of its pid as it starts (it re-executed onto new code), which
    here would drop the other targets' workers."""

    def _forget_former_self(self) -> None:
        pass


class Jobs:
    """Run the jobs queued for ``targets`` (default: every target) until stopped, one burst
    after another; in a fleet, registered as their worker (``molt worker --target``)."""

    def __init__(self, settings: Settings, targets: list[str] | None = None) -> None:
        self.conn = store.connect(settings, decode=False)
        names = settings.target_names() if targets is None else targets
        served = [settings.for_target(name) for name in names]
        self.queues = [Queue(queueing.queue_name(v), connection=self.conn) for v in served]
        name = f"molt-test-jobs-{uuid.uuid4().hex[:8]}"
        self.beat = SharedBeat(settings, name, served) if settings.fleet else None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="molt-test-jobs", daemon=True)

    def start(self) -> None:
        if self.beat is not None:
            self.beat.start()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                if any(queue.count for queue in self.queues):
                    ThreadWorker(self.queues, connection=self.conn).work(
                        burst=True, with_scheduler=False
                    )
            except redis.RedisError:  # Redis restarting: as a worker process, try again
                self._stopped.wait(0.5)
            self._stopped.wait(0.05)

    def stop(self, timeout: float = 120) -> None:
        """Stop once the job running now (if any) ends."""
        self._stopped.set()
        self._thread.join(timeout)
        if self.beat is not None:
            self.beat.stop()
        self.conn.close()


class InProcessBot:
    """``molt run`` without its processes: what a test talks to and reads back. With the
    console, lines typed (``type``) are read one after another as ``molt console`` reads its
    input, and what it prints goes to ``transcript``. In a fleet each of ``targets`` (default:
    all) has jobs of its own, as each has its worker; the others have none."""

    def __init__(
        self, settings: Settings, console: bool = False, targets: list[str] | None = None
    ) -> None:
        self.settings = settings
        self.bot = Bot(settings, console=console, http_thread=True)
        self.conn = self.bot.conn
        self.store = RequestStore(self.conn)
        if settings.fleet:
            names = settings.target_names() if targets is None else targets
            self.jobs = [Jobs(settings, [name]) for name in names]
        else:
            self.jobs = [Jobs(settings)]
        self.port = 0
        self.transcript = Transcript()
        if self.bot.console is not None:
            self.bot.console.out = self.transcript
        self._logging: Callable[[], None] = lambda: None
        self._typed: queue.Queue[str | None] = queue.Queue()
        self._typist = threading.Thread(target=self._read_typed, name="molt-test-typist")

    def start(self) -> InProcessBot:
        self._logging = _log_to(self.log_file, self.settings)
        self.port = self.bot.start()
        for jobs in self.jobs:
            jobs.start()
        if self.bot.console is not None:
            self._typist.start()
        return self

    @property
    def output(self) -> str:
        """What the console printed, then what the bot logged."""
        return self.transcript.output + "\n" + self.log()

    @property
    def log_file(self) -> Path:
        return self.settings.data_dir / "molt.log"

    def log(self) -> str:
        """The bot's log, as ``molt console`` writes it: JSON lines, credentials redacted."""
        return self.log_file.read_text() if self.log_file.exists() else ""

    def type(self, line: str) -> int:
        """Type a line at the console; returns the transcript's position to wait from."""
        mark = len(self.transcript.lines)
        self._typed.put(line)
        return mark

    def _read_typed(self) -> None:
        console, desk, stopping = self.bot.console, self.bot.desk, self.bot.stopping
        assert console is not None
        while (line := self._typed.get()) is not None:
            words = line.split()
            if words[0] == "press":
                console.press(desk, words[1:], stopping)
            else:
                desk.say(console.origin, line).result()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[Any]:
        return self.store.recent(50)

    def stop(self) -> None:
        self.bot.stop()
        if self._typist.is_alive():
            self._typed.put(None)
            self._typist.join(timeout=30)
        for jobs in self.jobs:
            jobs.stop()
        self._logging()


def _log_to(file: Path, settings: Settings) -> Callable[[], None]:
    """Log as ``molt run`` does with its console (``file``, JSON, credentials redacted);
    returns what puts the test process's logging back. Loggers are not cached here, so that
    each bot's logs go to its own file."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    file.parent.mkdir(parents=True, exist_ok=True)
    logs.configure(settings.log_level, settings.secrets(), file, "json")
    structlog.configure(cache_logger_on_first_use=False)
    ours = root.handlers[:]

    def restore() -> None:
        structlog.configure(**config)
        root.handlers[:] = handlers
        root.setLevel(level)
        for handler in ours:
            if isinstance(handler, logging.StreamHandler):
                handler.stream.close()

    return restore


def wait_for_file(path: Path, bot: InProcessBot, timeout: float = 90) -> None:
    """Wait for a service's check to touch ``path`` (tests/support.py's, for this bot)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared; Molt said:\n{bot.output}")
        time.sleep(0.05)


StartBot = Callable[..., InProcessBot]


@pytest.fixture
def start_bot(molt_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[StartBot]:
    """Start Molt's bot in this process with ``molt_env`` and ``env`` as its environment
    (the settings a ``molt run`` would read); every bot started is stopped at the end."""
    started: list[InProcessBot] = []

    def start(console: bool = False, **env: str) -> InProcessBot:
        for name, value in {**molt_env, "MOLT_WORKERS": "0", **env}.items():
            monkeypatch.setenv(name, value)
        bot = InProcessBot(load_settings(), console)
        started.append(bot)
        return bot.start()

    yield start
    for bot in reversed(started):
        bot.stop()
