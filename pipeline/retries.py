"""Riding out infrastructure hiccups (git, Redis) during an update; tests are never
retried, a failing test is a verdict."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import structlog

from pipeline.exceptions import GitError, UpdateFailed

log = structlog.get_logger(__name__)
T = TypeVar("T")
#: Seconds between tries; after the last, the step fails like any other (the retrying is
#: done here, so nothing downstream tells the two apart).
DELAYS = (0.2, 0.5, 1.0)


def transient(what: str, action: Callable[..., T], *args: Any) -> T:
    """``action(*args)``, tried again with backoff on a git or Redis error; the step
    ``what`` fails once the tries run out."""
    for delay in (*DELAYS, None):
        try:
            return action(*args)
        except (GitError, redis.ConnectionError, redis.TimeoutError) as exc:
            if delay is None:
                raise UpdateFailed(what, str(exc)) from exc
            log.warning("transient failure, retrying", what=what, error=str(exc))
            time.sleep(delay)
    raise AssertionError("unreachable")
