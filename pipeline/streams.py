"""Reading a Redis Stream in a consumer group, one way for every reader in Molt.

A reader takes what it had taken and not acknowledged before (its pending entries, after a
restart) before anything new, makes its group again when Redis lost it (a restart without
persistence, a flush), and acknowledges an entry once its handler is done with it. What
happens to an entry whose handler raises is the caller's choice (``OnFault``). The group is
made at the stream's start: entries put before the first reader came are read, not skipped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from enum import StrEnum
from typing import Any, cast

import redis
import structlog

log = structlog.get_logger(__name__)
#: How long one read waits for new entries: the longest a stop waits for the loop.
BLOCK_MS = 200
#: Entries read at once.
COUNT = 100
#: Pauses after a handler's fault under ``OnFault.RETRY``: the first, and the longest.
RETRY_PAUSE = (0.2, 5.0)

#: Called with an entry's id and fields; a returned future defers the acknowledgement to
#: its end (work handed on to other threads), anything else acknowledges at once.
Handler = Callable[[str, dict[str, str]], "Future[Any] | None"]


class OnFault(StrEnum):
    """What becomes of an entry whose handler raised."""

    #: Logged and acknowledged: one bad entry never holds up the stream.
    DROP = "drop"
    #: Left pending with every entry after it, and read again after a growing pause: nothing
    #: is lost or reordered (the handler decides when to give up, by not raising).
    RETRY = "retry"


class StreamReader:
    """One consumer of ``stream`` in ``group``, handing each entry to ``handle`` on a thread
    of its own (``start``) or the caller's (``run``), until ``stopping`` is set."""

    def __init__(
        self,
        conn: redis.Redis,
        stream: str,
        group: str,
        consumer: str,
        handle: Handler,
        *,
        on_fault: OnFault = OnFault.DROP,
        stopping: threading.Event | None = None,
        name: str = "molt-stream",
        on_thread: Callable[[], None] | None = None,
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.handle = handle
        self.on_fault = on_fault
        self.stopping = stopping or threading.Event()
        self.on_thread = on_thread
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)

    def join_group(self) -> None:
        """Make the group (and the stream) unless it exists."""
        try:
            self.conn.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def start(self) -> None:
        self.join_group()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def run(self) -> None:
        """Read until stopped: the pending entries from the first (``0``) on, then new ones
        (``>``); back to the first pending entry after a fault left some for a retry."""
        if self.on_thread:
            self.on_thread()
        cursor = "0"
        pause = 0.0
        while not self.stopping.is_set():
            try:
                entries = self._read(cursor)
            except redis.RedisError as exc:
                if self._lost(exc):
                    cursor = "0"
                    continue
                log.warning("stream unreachable", stream=self.stream, error=str(exc))
                self.stopping.wait(1.0)
                continue
            if cursor != ">":  # the pending entries, one batch after another
                cursor = entries[-1][0] if entries else ">"
            if self._take(entries):
                pause = 0.0
            else:
                pause = min(RETRY_PAUSE[1], pause * 2 or RETRY_PAUSE[0])
                cursor = "0"
                self.stopping.wait(pause)

    def _lost(self, exc: redis.RedisError) -> bool:
        """Make the group again if Redis no longer has it (nor, perhaps, the stream)."""
        if "NOGROUP" not in str(exc):
            return False
        try:
            self.join_group()
        except redis.RedisError:
            return False
        log.warning("stream group lost; made again", stream=self.stream, group=self.group)
        return True

    def _read(self, cursor: str) -> list[tuple[str, dict[str, str]]]:
        reply = self.conn.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: cursor},
            count=COUNT,
            block=BLOCK_MS if cursor == ">" else None,
        )
        return [(str(i), f) for _, batch in cast(list[Any], reply or []) for i, f in batch]

    def _take(self, entries: list[tuple[str, dict[str, str]]]) -> bool:
        """Hand the entries over in order; false if a fault left some for a retry."""
        for entry_id, fields in entries:
            if self.stopping.is_set():  # the rest stays pending for the next start
                return True
            if not fields:  # trimmed away while pending
                self.ack(entry_id)
                continue
            try:
                done = self.handle(entry_id, fields)
            except Exception as exc:
                if self.on_fault is OnFault.RETRY:
                    log.warning(
                        "stream entry left for a retry",
                        stream=self.stream,
                        entry=entry_id,
                        error=str(exc)[:500],
                    )
                    return False
                log.exception("stream entry dropped", stream=self.stream, entry=entry_id)
                done = None
            if isinstance(done, Future):
                done.add_done_callback(self._ack_when_done(entry_id))
            else:
                self.ack(entry_id)
        return True

    def _ack_when_done(self, entry_id: str) -> Callable[[Future[Any]], None]:
        return lambda _: self.ack(entry_id)

    def ack(self, entry_id: str) -> None:
        try:
            self.conn.xack(self.stream, self.group, entry_id)
        except redis.RedisError as exc:  # read again after a restart: handlers take that
            log.warning("stream entry not acknowledged", stream=self.stream, error=str(exc))
