"""The inbox: chat input handed from the HTTP process to the bot process.

The HTTP process only verifies, acks and appends to the stream ``molt:inbox``,
so acks never wait behind the bot's work (pre-flight, planning, posting to
Slack) for the interpreter lock. The bot reads the stream in the consumer group
``desk`` and acknowledges an entry once the desk has dealt with it; entries it
had taken but not finished when it stopped are taken again at start.
"""

from __future__ import annotations

import json
from concurrent.futures import Future
from dataclasses import asdict
from typing import Any

import redis

from bot.base import Front
from pipeline import keyspace
from pipeline.requests.store import Origin
from pipeline.streams import StreamReader

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
    """The consumer side: a thread in the bot process that hands entries to the desk, each
    acknowledged once the desk's work on it ends."""

    def __init__(self, conn: redis.Redis, desk: Front) -> None:
        self.desk = desk
        self.reader = StreamReader(
            conn, keyspace.INBOX, GROUP, CONSUMER, self._hand_over, name="molt-inbox"
        )

    def start(self) -> None:
        self.reader.start()

    def stop(self) -> None:
        self.reader.stop()

    def _hand_over(self, entry_id: str, fields: dict[str, str]) -> Future[Any]:
        raw = json.loads(fields["origin"])
        origin = Origin(**{**raw, "roles": tuple(raw.get("roles") or ())})
        kind = fields.get("kind")
        if kind == "press":
            return self.desk.press(origin, fields["action"], fields["request_id"])
        if kind == "revise":
            return self.desk.revise(origin, fields["request_id"], fields["note"])
        if kind == "answer":
            return self.desk.answer(origin, fields["request_id"], fields["text"])
        if kind == "home":
            return self.desk.home(origin)
        return self.desk.say(origin, fields.get("text", ""))
