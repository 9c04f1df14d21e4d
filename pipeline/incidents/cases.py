"""Cases: every diagnosis kept with what the model was given, so that it can be replayed.

A case holds the redacted materials of one diagnosis (the prompt, the live commit, the
incident's excerpt, the suspect's diff range: ``diagnosis.Materials``), the diagnosis or
why there was none, its tokens and time, and the incident it was about. What was done and
the outcome change after the diagnosis: replay reads them from the incident book, and the
case keeps the last it saw for when the incident is gone. Each target keeps at most
``MAX_CASES`` cases, each for ``KEEP_DAYS`` days (keys in pipeline/keyspace.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from pipeline import keyspace
from pipeline.keyspace import TargetKeys

MAX_CASES = 500
KEEP_DAYS = 90


@dataclass
class Case:
    id: str
    incident_id: str
    target_id: str
    at: float
    materials: dict[str, Any]
    diagnosis: dict[str, Any] | None = None
    refused: str = ""  # why there was no diagnosis
    tokens: int = 0
    seconds: float = 0.0
    actions: list[dict[str, Any]] = field(default_factory=list)
    outcome: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> Case:
        data = json.loads(raw)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def keep(conn: redis.Redis, case: Case) -> None:
    """Store ``case``; the target's oldest cases beyond MAX_CASES or KEEP_DAYS go."""
    ttl = KEEP_DAYS * 86400
    listed = TargetKeys(case.target_id).cases
    with conn.pipeline() as pipe:
        pipe.set(keyspace.case(case.id), case.to_json(), ex=ttl)
        pipe.zadd(listed, {case.id: case.at})
        pipe.zremrangebyscore(listed, "-inf", time.time() - ttl)
        pipe.zremrangebyrank(listed, 0, -MAX_CASES - 1)
        pipe.expire(listed, ttl)
        pipe.execute()


def since(conn: redis.Redis, target_id: str, began: float) -> list[Case]:
    """The target's cases diagnosed at ``began`` or later, oldest first."""
    ids = conn.zrangebyscore(TargetKeys(target_id).cases, began, "+inf")
    found = conn.mget([keyspace.case(str(i)) for i in ids]) if ids else []
    return [Case.from_json(str(raw)) for raw in found if raw]
