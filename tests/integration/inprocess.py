"""Molt's bot in the test's own process: the real ``Bot`` (adapters, desk, inbox reader,
notifier, housekeeping) with its HTTP server on a thread (uvicorn on port 0), and the jobs it
queues run by RQ ``SimpleWorker``s in burst mode on a thread of their own. The front ends'
tests drive it the way their platform does (signed HTTP requests, the fakes' gateways) and
read what it posted to the fakes, without starting a process tree per test."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rq import Queue, SimpleWorker
from rq.timeouts import TimerDeathPenalty

from bot.app import Bot
from pipeline import queueing, store
from pipeline.config import Settings, load_settings
from pipeline.requests import RequestStore


class ThreadWorker(SimpleWorker):
    """RQ's in-process worker, on a thread other than the main one: the job timeout is a
    timer (SIGALRM reaches the main thread only), and the test process keeps its signals.
    It listens for no RQ commands (Molt sends none): a burst that ends before its command
    channel is subscribed would wait a minute for it to be."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass

    def subscribe(self) -> None:
        pass

    def unsubscribe(self) -> None:
        pass


class Jobs:
    """Run the jobs queued for every target until stopped: one burst after another."""

    def __init__(self, settings: Settings) -> None:
        self.conn = store.connect(settings, decode=False)
        views = [settings.for_target(name) for name in settings.target_names()]
        self.queues = [Queue(queueing.queue_name(v), connection=self.conn) for v in views]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="molt-test-jobs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopped.is_set():
            if any(queue.count for queue in self.queues):
                ThreadWorker(self.queues, connection=self.conn).work(
                    burst=True, with_scheduler=False
                )
            self._stopped.wait(0.05)

    def stop(self, timeout: float = 120) -> None:
        """Stop once the job running now (if any) ends."""
        self._stopped.set()
        self._thread.join(timeout)
        self.conn.close()


class InProcessBot:
    """``molt run`` without its processes: what a test talks to and reads back."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bot = Bot(settings, http_thread=True)
        self.conn = self.bot.conn
        self.store = RequestStore(self.conn)
        self.jobs = Jobs(settings)
        self.port = 0

    def start(self) -> InProcessBot:
        self.port = self.bot.start()
        self.jobs.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[Any]:
        return self.store.recent(50)

    def stop(self) -> None:
        self.bot.stop()
        self.jobs.stop()


StartBot = Callable[..., InProcessBot]


@pytest.fixture
def start_bot(molt_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[StartBot]:
    """Start Molt's bot in this process with ``molt_env`` and ``env`` as its environment
    (the settings a ``molt run`` would read); every bot started is stopped at the end."""
    started: list[InProcessBot] = []

    def start(**env: str) -> InProcessBot:
        for name, value in {**molt_env, "MOLT_WORKERS": "0", **env}.items():
            monkeypatch.setenv(name, value)
        bot = InProcessBot(load_settings())
        started.append(bot)
        return bot.start()

    yield start
    for bot in reversed(started):
        bot.stop()
