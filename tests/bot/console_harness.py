"""A console session in this process: the real Console, Desk and Notifier on real Redis,
commands typed through a real pipe, and what the console printed read back."""

from __future__ import annotations

import io
import os
import re
import threading
import time

import redis

from bot.console import Console
from bot.desk import Desk
from bot.notifier import Notifier
from pipeline.config import Settings
from pipeline.requests.store import RequestStore


class Session:
    """``send`` types a line; ``end`` closes the input as a finished script does."""

    def __init__(self, settings: Settings, conn: redis.Redis, user: str = "alice") -> None:
        self._read, self._write = os.pipe()
        self.out = io.StringIO()
        self.console = Console(user, RequestStore(conn), self.out, wait=120, fd=self._read)
        adapters = {"console": self.console}
        self.desk = Desk(settings, conn, adapters)
        self.notifier = Notifier(settings, conn, adapters)
        self.stopping = threading.Event()
        self.notifier.start()
        self.thread = threading.Thread(
            target=self.console.serve, args=(self.desk, self.stopping), daemon=True
        )
        self.thread.start()

    @property
    def output(self) -> str:
        return self.out.getvalue()

    def send(self, line: str) -> int:
        """Type a line; returns the output position to wait from."""
        mark = len(self.output)
        os.write(self._write, line.encode() + b"\n")
        return mark

    def end(self) -> None:
        if self._write >= 0:
            os.close(self._write)
            self._write = -1

    def wait_for(self, pattern: str, since: int = 0, timeout: float = 90) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.output, since)
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in:\n{self.output[since:]}")
            time.sleep(0.05)

    def ended(self, timeout: float = 90) -> bool:
        """Whether the console stopped reading (its script ended, or ``quit``)."""
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def close(self) -> None:
        self.end()
        self.stopping.set()
        self.thread.join(10)
        self.notifier.stop()
        self.desk.close()
        os.close(self._read)
