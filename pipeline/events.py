"""Events: the only way out of a worker.

Every transition, and every message meant for one person (a refused click),
is appended to the Redis Stream ``molt:events``. The bot's notifier reads it in
the consumer group ``notifier`` and acknowledges an event only once shown.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

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
