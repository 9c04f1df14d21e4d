"""A worker told to stop, stops: its teardown does not wait on the thread that listens for
RQ's commands (real RQ worker, real Redis)."""

from __future__ import annotations

import threading
import time

import redis
from rq import Queue

from pipeline.update.worker import MoltWorker


def test_a_worker_stops_even_when_its_listener_saw_the_unsubscription_first(
    redis_url: str,
) -> None:
    conn = redis.Redis.from_url(redis_url)
    worker = MoltWorker([Queue("molt-updates", connection=conn)], connection=conn)
    worker.subscribe()
    assert worker.pubsub is not None
    # The race a warm shutdown can lose: the listener reads the unsubscription before it is
    # told to stop, and then waits a minute for a subscription that never comes.
    worker.pubsub.unsubscribe()
    deadline = time.monotonic() + 30
    while worker.pubsub.subscribed:
        assert time.monotonic() < deadline, "the listener never read the unsubscription"
        time.sleep(0.01)
    teardown = threading.Thread(target=worker.unsubscribe, daemon=True)
    teardown.start()
    teardown.join(timeout=30)
    assert not teardown.is_alive(), "the worker's teardown still waits on its listener"
    conn.close()
