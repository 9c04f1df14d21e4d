"""The inbox: chat input handed from the HTTP process to the bot process.

The HTTP process only verifies, acks and appends to the stream ``molt:inbox``,
so acks never wait behind the bot's work (pre-flight, planning, posting to
Slack) for the interpreter lock. The bot reads the stream in the consumer group
``desk`` and acknowledges an entry once the desk has dealt with it; entries it
had taken but not finished when it stopped are taken again at start.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future
from dataclasses import asdict
from typing import Any, cast

import redis
import structlog

from bot.base import Front
from pipeline import keyspace
from pipeline.requests.store import Origin

log = structlog.get_logger(__name__)
GROUP = "desk"
CONSUMER = "bot"
MAXLEN = 10_000


def _done() -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(None)
    return future


class Inbox(Front):
    """The producer side, used by front ends in the HTTP process."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn

    def _put(self, kind: str, origin: Origin, **fields: str) -> Future[Any]:
        entry = {"kind": kind, "origin": json.dumps(asdict(origin)), **fields}
        self.conn.xadd(keyspace.INBOX, entry, maxlen=MAXLEN, approximate=True)  # type: ignore[arg-type]
        return _done()

    def say(self, origin: Origin, text: str) -> Future[Any]:
        return self._put("say", origin, text=text)

    def press(self, origin: Origin, action: str, request_id: str) -> Future[Any]:
        return self._put("press", origin, action=action, request_id=request_id)

    def revise(self, origin: Origin, request_id: str, note: str) -> Future[Any]:
        return self._put("revise", origin, request_id=request_id, note=note)

    def answer(self, origin: Origin, request_id: str, text: str) -> Future[Any]:
        return self._put("answer", origin, request_id=request_id, text=text)

    def home(self, origin: Origin) -> Future[Any]:
        return self._put("home", origin)


class InboxReader:
    """The consumer side: a thread in the bot process that hands entries to the desk."""

    def __init__(self, conn: redis.Redis, desk: Front) -> None:
        self.conn = conn
        self.desk = desk
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="molt-inbox", daemon=True)

    def start(self) -> None:
        try:
            self.conn.xgroup_create(keyspace.INBOX, GROUP, id="$", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        start = "0"  # first what a previous bot process took and did not finish
        while not self._stop.is_set():
            try:
                reply = self.conn.xreadgroup(
                    GROUP,
                    CONSUMER,
                    {keyspace.INBOX: start},
                    count=100,
                    block=None if start == "0" else 500,
                )
            except redis.RedisError as exc:
                log.warning("inbox unreachable", error=str(exc))
                self._stop.wait(1.0)
                continue
            items = [item for _, batch in cast(list[Any], reply or []) for item in batch]
            if start == "0" and not items:
                start = ">"
                continue
            for entry_id, fields in items:
                if fields:
                    self._hand_over(str(entry_id), fields)
                else:  # trimmed away while pending
                    self.conn.xack(keyspace.INBOX, GROUP, entry_id)
            if start == "0":
                start = ">"

    def _hand_over(self, entry_id: str, fields: dict[str, str]) -> None:
        try:
            raw = json.loads(fields["origin"])
            origin = Origin(**{**raw, "roles": tuple(raw.get("roles") or ())})
            kind = fields.get("kind")
            if kind == "press":
                future = self.desk.press(origin, fields["action"], fields["request_id"])
            elif kind == "revise":
                future = self.desk.revise(origin, fields["request_id"], fields["note"])
            elif kind == "answer":
                future = self.desk.answer(origin, fields["request_id"], fields["text"])
            elif kind == "home":
                future = self.desk.home(origin)
            else:
                future = self.desk.say(origin, fields.get("text", ""))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("unreadable inbox entry dropped", entry=entry_id, error=str(exc))
            self.conn.xack(keyspace.INBOX, GROUP, entry_id)
            return
        future.add_done_callback(lambda _: self.conn.xack(keyspace.INBOX, GROUP, entry_id))
