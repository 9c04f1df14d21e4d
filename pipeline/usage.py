"""Model use per request: tokens and calls of every planning round, implementation and
review, kept as audit entries (``model_usage``) and added up for the request's messages.

It lives apart from the model client so that reading it (the failure path, the boot
guard) never loads the client.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import redis

from pipeline import audit, metrics

USAGE_ACTION = "model_usage"


@dataclass
class Usage:
    """Tokens of one or more calls, as the API reports them."""

    input_tokens: int = 0  # input not read from or written to the cache
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    calls: int = 0

    @property
    def total(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_input_tokens
            + self.cache_creation_input_tokens
        )

    def add(self, other: Usage) -> Usage:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        return cls(**{f.name: tokens(data.get(f.name)) for f in fields(cls)})

    def line(self) -> str:
        """What a person reads: "12,300 tokens in (10,240 from the cache), 820 out, 3 calls"."""
        read, written = self.cache_read_input_tokens, self.cache_creation_input_tokens
        given = self.input_tokens + read + written
        cached = []
        if read:
            cached.append(f"{read:,} read from the cache")
        if written:
            cached.append(f"{written:,} written to it")
        detail = f" ({', '.join(cached)})" if cached else ""
        calls = "1 call" if self.calls == 1 else f"{self.calls} calls"
        return f"{given:,} tokens in{detail}, {self.output_tokens:,} out, {calls}"


def tokens(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def record_usage(conn: redis.Redis, request_id: str, task: str, model: str, usage: Usage) -> None:
    """One audit entry per task; the report adds up a request's entries."""
    if usage.calls:
        audit.append(
            conn,
            actor="molt",
            action=USAGE_ACTION,
            request_id=request_id,
            detail={"task": task, "model": model, **usage.to_dict()},
        )
        metrics.model_used(task, usage.to_dict())


def request_usage(conn: redis.Redis, request_id: str) -> Usage:
    """Every model call made for one request (planning rounds, implementation, review)."""
    total = Usage()
    for entry in audit.entries(conn, request_id):
        if entry.get("action") == USAGE_ACTION:
            total.add(Usage.from_dict(entry.get("detail") or {}))
    return total


def model_use(conn: redis.Redis, request_id: str, result: dict[str, Any]) -> str:
    """Model use of the whole request into ``result``; the sentence for the request's last
    message, or "" if the model was not used."""
    usage = request_usage(conn, request_id)
    if not usage.calls:
        return ""
    result["usage"] = usage.to_dict()
    return f"Model use: {usage.line()}."
