"""A worker's beat: its registration, then the recovery of what a dead worker left (tend),
then the jobs put off until later (a fix's hold check). A put-off job that cannot be read
must never keep the beat from its recovery."""

from __future__ import annotations

import threading

import redis

from pipeline.config import Settings
from pipeline.queue import queueing, workers


def test_a_put_off_job_that_cannot_be_read_never_keeps_the_beat_from_its_recovery(
    settings: Settings, conn: redis.Redis
) -> None:
    queue = queueing.queue_name(settings)
    conn.zadd(f"rq:scheduled:{queue}", {"broken": 0})  # due since 1970
    conn.hset("rq:job:broken", mapping={"created_at": "not a date", "data": "?"})
    tended = threading.Event()
    beat = workers.Beat(settings, "beat-worker", [settings], lambda view: tended.set())
    beat.start()
    try:
        assert tended.wait(30), "the beat never tended its target"
    finally:
        beat.stop()
