"""Events: the only way out of a worker.

Every transition, and every message meant for one person (a refused click),
is appended to the Redis Stream ``molt:events``. The bot's notifier reads it in
the consumer group ``notifier`` and acknowledges an event only once shown.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from pipeline import keyspace

GROUP = "notifier"
MAXLEN = 100_000


@dataclass(frozen=True)
class Event:
    request_id: str
    state: str
    template: str | None
    #: "" for the request's own conversation, or "platform:user" for one person.
    audience: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0
    id: str = ""

    def fields(self) -> dict[Any, Any]:
        return {
            "request_id": self.request_id,
            "state": self.state,
            "template": self.template or "",
            "audience": self.audience,
            "data": json.dumps(self.data, sort_keys=True, default=str),
            "at": repr(self.at or time.time()),
        }

    @classmethod
    def from_fields(cls, event_id: str, raw: dict[str, str]) -> Event:
        return cls(
            request_id=raw.get("request_id", ""),
            state=raw.get("state", ""),
            template=raw.get("template") or None,
            audience=raw.get("audience", ""),
            data=json.loads(raw.get("data") or "{}"),
            at=float(raw.get("at") or 0),
            id=event_id,
        )


def stage(pipe: Any, event: Event) -> None:
    pipe.xadd(keyspace.EVENTS, event.fields(), maxlen=MAXLEN, approximate=True)


def emit(conn: redis.Redis, event: Event) -> str:
    return str(conn.xadd(keyspace.EVENTS, event.fields(), maxlen=MAXLEN, approximate=True))


def ensure_group(conn: redis.Redis) -> None:
    try:
        conn.xgroup_create(keyspace.EVENTS, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def read(
    conn: redis.Redis, consumer: str, *, block_ms: int = 1000, count: int = 100
) -> list[Event]:
    """This consumer's unacknowledged events first (after a restart), then new ones."""
    out: list[Event] = []
    for start in ("0", ">"):
        reply = conn.xreadgroup(
            GROUP,
            consumer,
            {keyspace.EVENTS: start},
            count=count,
            block=None if start == "0" else block_ms,
        )
        for _stream, items in cast(list[Any], reply or []):
            out.extend(Event.from_fields(eid, raw) for eid, raw in items if raw)
        if out:
            return out
    return out


def ack(conn: redis.Redis, *event_ids: str) -> None:
    if event_ids:
        conn.xack(keyspace.EVENTS, GROUP, *event_ids)
