"""Finishing what a dead worker left half-done.

A job heartbeats its update lock. When a request is running but nobody holds
its lock any more (the worker was killed, or lost Redis for longer than the
lock's TTL), the request is rolled back to its snapshot and failed with a
message, exactly as if the job had failed by itself.
"""

from __future__ import annotations

import time
from pathlib import Path

import redis
import structlog

from pipeline.config import Settings
from pipeline.exceptions import UpdateFailed
from pipeline.jobs import Update
from pipeline.locking import UpdateLock
from pipeline.requests import RequestStore
from pipeline.snapshots import Snapshot
from pipeline.states import RequestState as S

log = structlog.get_logger(__name__)
_RESTARTED_PHASES = ("restart", "verify")


def recover_abandoned(settings: Settings, conn: redis.Redis) -> list[str]:
    """Roll back every running request whose job is gone; returns their ids."""
    store = RequestStore(conn)
    lock = UpdateLock(conn, settings.target_id, settings.lock_ttl)
    recovered = []
    for request in store.active():
        if request.state not in (S.RUNNING, S.RESTARTING):
            continue
        if lock.holder() is not None:
            continue
        if lock.try_lock(request.id, request.codename) is not None:
            continue
        try:
            current = store.get(request.id)
            if current.state not in (S.RUNNING, S.RESTARTING):
                continue
            log.warning("recovering abandoned update", request_id=request.id, phase=current.phase)
            update = Update(settings, conn, request.id)
            update.started = time.monotonic() - (time.time() - current.updated_at)
            update.log_dir = Path(current.update_dir or settings.updates_dir)
            if current.snapshot:
                update.snapshot = Snapshot.from_dict(current.snapshot)
                update.touched_live = True
            update.restarted = current.state is S.RESTARTING or current.phase in _RESTARTED_PHASES
            phase = current.phase or "update"
            update._fail(
                UpdateFailed(
                    phase,
                    f"the worker running this update stopped during {phase} "
                    "(killed, crashed or cut off from Redis)",
                )
            )
            recovered.append(request.id)
        finally:
            lock.release(request.id)
    return recovered
