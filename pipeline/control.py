"""Operator controls: pause, resume, emergency stop, and the views behind
status, queue and history.

Keys:
  molt:paused:<target_id>   set while paused: no new update starts
  molt:stop:<target_id>     the principal who asked the running update to stop
"""

from __future__ import annotations

from typing import Any

import redis

from pipeline import audit, queueing
from pipeline.config import Settings
from pipeline.locking import UpdateLock, WaitingLine
from pipeline.releases import running_version
from pipeline.requests import RequestStore


def paused_key(target_id: str) -> str:
    return f"molt:paused:{target_id}"


def stop_key(target_id: str) -> str:
    return f"molt:stop:{target_id}"


def is_paused(settings: Settings, conn: redis.Redis) -> bool:
    return bool(conn.exists(paused_key(settings.target_id)))


def pause(settings: Settings, conn: redis.Redis, principal: str) -> str:
    conn.set(paused_key(settings.target_id), principal)
    audit.append(conn, actor=principal, action="pause")
    return "Paused: no new update will start until `resume`. Requests still get plans."


def resume(settings: Settings, conn: redis.Redis, principal: str) -> str:
    conn.delete(paused_key(settings.target_id))
    audit.append(conn, actor=principal, action="resume")
    return "Resumed: queued updates will start in turn."


def stop_requested(settings: Settings, conn: redis.Redis) -> str | None:
    value = conn.get(stop_key(settings.target_id))
    return str(value) if value else None


def stop(settings: Settings, conn: redis.Redis, principal: str) -> str:
    """Emergency stop: the running update rolls back at its next safe point; the queue empties."""
    audit.append(conn, actor=principal, action="stop")
    holder = UpdateLock(conn, settings.target_id, settings.lock_ttl).holder()
    cleared = queueing.clear(
        settings, conn, f"cleared from the queue by an emergency stop ({principal})"
    )
    if holder:
        conn.set(stop_key(settings.target_id), principal, ex=int(settings.phase_timeout * 4))
        running = f"update {holder.codename} will roll back at its next safe point"
    else:
        running = "no update was running"
    return f"Emergency stop: {running}; {len(cleared)} queued request(s) cleared."


def status(settings: Settings, conn: redis.Redis) -> dict[str, Any]:
    store = RequestStore(conn)
    holder = UpdateLock(conn, settings.target_id, settings.lock_ttl).holder()
    current = store.get(holder.request_id).context() if holder else {}
    return {
        "paused": is_paused(settings, conn),
        "current": current,
        "requests": waiting(settings, conn),
        "version": running_version(),
        "target": str(settings.target_dir),
    }


def waiting(settings: Settings, conn: redis.Redis) -> list[dict[str, Any]]:
    store = RequestStore(conn)
    out = []
    for position, request_id in enumerate(WaitingLine(conn, settings.target_id).ids(), start=1):
        found = store.find(request_id)
        if found:
            out.append(found.context() | {"position": position})
    return out


def history(conn: redis.Redis, count: int = 10) -> list[dict[str, Any]]:
    return [r.context() | {"updated_at": r.updated_at} for r in RequestStore(conn).recent(count)]
