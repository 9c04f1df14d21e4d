"""Operator controls: pause, resume, emergency stop, rollback, and the views behind
status, queue, history (with the target's flaky tests) and review. Chat (bot/desk.py) and
the shell (bot/cli.py) call the same functions, so both are audited alike.

The target's ``paused`` key (pipeline/keyspace.py) is set while no new update may start;
its ``stop`` key holds JSON {by, request_id}: who asked which running update to stop; the
update deletes it when it stops, or when it ends anyway.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from pipeline import audit
from pipeline.config import Settings
from pipeline.exceptions import GitError
from pipeline.git import Git
from pipeline.intake import autonomy
from pipeline.intake import flow as intake
from pipeline.keyspace import TargetKeys
from pipeline.queue import queueing, workers
from pipeline.queue.locking import PRIORITY_NAMES
from pipeline.queue.targets import Target, of_target
from pipeline.releases import ledger
from pipeline.releases.manifests import ReleaseKind, running_version
from pipeline.requests import authorisation
from pipeline.requests.decisions import Decision
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request, RequestStore

#: States of a request that waits for a person: a plan to approve, questions to answer.
PENDING = (S.PLAN_READY, S.NEEDS_INFO)
#: Taken in and under way towards a plan: what ``status`` lists besides what runs.
PREPARING = (S.RECEIVED, S.PREFLIGHT, S.PLANNING)


def _named(settings: Settings) -> dict[str, Any] | None:
    """The audit detail naming a fleet's target (None with one target)."""
    return {"target": settings.target_name} if settings.fleet else None


def is_paused(settings: Settings, conn: redis.Redis) -> bool:
    return bool(conn.exists(TargetKeys(settings.target_id).paused))


def pause(settings: Settings, conn: redis.Redis, principal: str) -> str:
    conn.set(TargetKeys(settings.target_id).paused, principal)
    audit.append(conn, actor=principal, action="pause", detail=_named(settings))
    return "Paused: no new update will start until `resume`. Requests still get plans."


def resume(settings: Settings, conn: redis.Redis, principal: str) -> str:
    keys = TargetKeys(settings.target_id)
    breaker = conn.get(keys.breaker)
    conn.delete(keys.paused, keys.breaker)
    audit.append(conn, actor=principal, action="resume", detail=_named(settings))
    if breaker:
        return "Resumed: queued updates will start in turn, and incidents may act again."
    return "Resumed: queued updates will start in turn."


def stop_requested(settings: Settings, conn: redis.Redis, request_id: str = "") -> str | None:
    """Who asked for an emergency stop (of ``request_id``'s update, if given), or None."""
    raw = conn.get(TargetKeys(settings.target_id).stop)
    if not raw:
        return None
    try:
        asked = json.loads(raw)
    except ValueError:
        return str(raw)
    if request_id and asked.get("request_id") not in (request_id, None):
        return None
    return str(asked.get("by", "an operator"))


def clear_stop(settings: Settings, conn: redis.Redis, request_id: str) -> None:
    """An update that ends drops a stop aimed at it, so the next update is not stopped."""
    if stop_requested(settings, conn, request_id) is not None:
        conn.delete(TargetKeys(settings.target_id).stop)


def stop(settings: Settings, conn: redis.Redis, principal: str) -> str:
    """Emergency stop: the running update rolls back at its next safe point; the queue empties.

    A test command running in a validation phase is killed at once (pipeline/update/jobs.py), so
    the next safe point comes within a second, not at the end of the phase.
    """
    audit.append(conn, actor=principal, action="stop", detail=_named(settings))
    holder = Target(settings, conn).lock.holder()
    cleared = queueing.clear(
        settings, conn, f"cleared from the queue by an emergency stop ({principal})"
    )
    if holder is None:
        running = "no update was running"
    else:
        current = RequestStore(conn).find(holder.request_id)
        name = holder.codename or holder.request_id
        if current is not None and (
            current.state is S.RESTARTING or current.phase in ("restart", "verify")
        ):
            running = (
                f"update {name} is already restarting the service and cannot stop there; "
                "it rolls back on its own if the service does not come back healthy"
            )
        else:
            asked = {"by": principal, "request_id": holder.request_id}
            conn.set(TargetKeys(settings.target_id).stop, json.dumps(asked), ex=_stop_ttl(settings))
            running = f"update {name} will roll back at its next safe point"
    return f"Emergency stop: {running}; {len(cleared)} queued request(s) cleared."


def _stop_ttl(settings: Settings) -> int:
    return int(settings.phase_timeout * 4 + settings.restart_timeout + settings.boot_timeout)


@dataclass(frozen=True)
class RollbackAsked(Decision):
    """The answer to ``rollback``: allowed with the request it became, or why there was none."""

    request: Request | None = field(default=None, kw_only=True)


def rollback(
    settings: Settings, conn: redis.Redis, origin: Origin, token: str, rollout: str = ""
) -> RollbackAsked:
    """Plan a return to the release before an update (default: the last one that landed):
    a request of its own command, ``rollback``, planned as a deploy of the update's
    rollback point, with the same pre-flight, approval, phases and restart; ``rollout``, the
    rollout's request whose step it undoes."""
    store = RequestStore(conn)
    if token:
        update = store.find(token)
    else:
        update = next(
            (r for r in store.recent(50) if r.state is S.SUCCEEDED and of_target(settings, r)),
            None,
        )
    if update is not None and not of_target(settings, update):
        update = None  # another target's update is not this one's to roll back
    if update is None or update.state is not S.SUCCEEDED or not update.plan:
        shown = f"successful update {token!r}" if token else "successful update"
        return RollbackAsked(False, f"found no {shown} to roll back", "rollback")
    base = str(update.plan.get("base_commit", ""))
    text = f"rollback {update.codename or update.id}"
    asked = intake.submit(settings, conn, origin, "rollback", base, text, rollout=rollout)
    return RollbackAsked(True, request=asked)


def release_kind(settings: Settings, request: Request) -> ReleaseKind:
    """The kind of release an update of ``request`` signs: a rollback only for a rollback an
    operator asked for, checked again here (MOLT_OPERATORS may have changed since), or one
    Molt raised for an incident."""
    operator = authorisation.may_operate(settings, request.origin)
    recovery = authorisation.raised_by_molt(request.origin)
    if request.command == "rollback" and (operator or recovery):
        return ReleaseKind.ROLLBACK
    return ReleaseKind.UPDATE


def status(settings: Settings, conn: redis.Redis) -> dict[str, Any]:
    store = RequestStore(conn)
    holder = Target(settings, conn).lock.holder()
    current = store.get(holder.request_id).context() if holder else {}
    return {
        "paused": is_paused(settings, conn),
        "current": current,
        "preparing": preparing(settings, conn),
        "requests": waiting(settings, conn),
        "live": live(settings, conn),
        "version": running_version(),
        "target": str(settings.target_dir),
        "autonomy": settings.autonomy,
        "started_today": autonomy.started_today(settings, conn),
        "max_changes_per_day": settings.max_changes_per_day,
        "switched_off": switched_off(settings),
    } | (_fleet_status(settings, conn) if settings.fleet else {})


def preparing(settings: Settings, conn: redis.Redis) -> list[dict[str, Any]]:
    """The target's requests in pre-flight or planning: not running yet, yet under way."""
    return [
        r.context()
        for r in RequestStore(conn).active()
        if r.state in PREPARING and of_target(settings, r)
    ]


def live(settings: Settings, conn: redis.Redis) -> dict[str, Any]:
    """The commit the target's live checkout runs, with its signed release when it has one
    ({} where the checkout is not on this host)."""
    try:
        commit = Git(settings.target_dir).head()
    except (GitError, OSError):
        return {}
    known = ledger.read(settings, conn) if ledger.stored(settings, conn) else None
    release = known.newest_for(commit) if known else None
    if release is None:
        return {"commit": commit}
    return {"commit": commit, "release": release.release, "codename": release.codename}


def _fleet_status(settings: Settings, conn: redis.Redis) -> dict[str, Any]:
    """What a fleet's status adds for one target: its name, and who serves it."""
    mine = [w for w in workers.registered(settings, conn) if settings.target_id in w["targets"]]
    return {"target_name": settings.target_name, "workers": mine}


def fleet(settings: Settings, conn: redis.Redis) -> dict[str, Any]:
    """Every target of a fleet, with what runs and waits on it, and every worker."""
    targets = []
    for name in settings.target_names():
        view = settings.for_target(name)
        holder = Target(view, conn).lock.holder()
        seen = workers.last_seen(view, conn)
        targets.append(
            {
                "name": name,
                "paused": is_paused(view, conn),
                "running": holder.codename or holder.request_id if holder else "",
                "waiting": len(Target(view, conn).line),
                "worker_seen": seen,
                "worker_live": bool(workers.live(view, conn)),
            }
        )
    return {"targets": targets, "workers": workers.registered(settings, conn)}


def switched_off(settings: Settings) -> list[str]:
    """The settings that turn a kind of request off, as they are set."""
    switches = {
        "MOLT_ALLOW_DEPLOYS": settings.allow_deploys,
        "MOLT_ALLOW_CHANGES": settings.allow_changes,
        "MOLT_ALLOW_GITHUB": settings.allow_github,
    }
    return [f"{name}=false" for name, on in switches.items() if not on]


def waiting(settings: Settings, conn: redis.Redis) -> list[dict[str, Any]]:
    store = RequestStore(conn)
    out = []
    line = Target(settings, conn).line
    for position, request_id in enumerate(line.ids(), start=1):
        found = store.find(request_id)
        if found:
            priority = PRIORITY_NAMES.get(line.priority(request_id), "")
            out.append(found.context() | {"position": position, "priority": priority})
    return out


def history(
    conn: redis.Redis, count: int = 10, settings: Settings | None = None
) -> list[dict[str, Any]]:
    """The last requests; of the target ``settings`` are the view of, if given."""
    recent = RequestStore(conn).recent(count if settings is None or not settings.fleet else 200)
    mine = [r for r in recent if settings is None or of_target(settings, r)][:count]
    return [r.context() | {"updated_at": r.updated_at} for r in mine]


def flaky_tests(settings: Settings, conn: redis.Redis) -> list[dict[str, Any]]:
    """The target's tests that failed, then passed when run again, most recent first."""
    return [asdict(test) for test in Target(settings, conn).flaky.all()]


def pending(settings: Settings, conn: redis.Redis) -> list[dict[str, Any]]:
    """Requests waiting for a person, oldest first: plans to approve, questions to answer."""
    now = time.time()
    out = []
    for request in RequestStore(conn).active():
        if request.state not in PENDING or not of_target(settings, request):
            continue
        since = request.plan_ready_at if request.state is S.PLAN_READY else request.updated_at
        age = max(0.0, now - (since or request.created_at))
        out.append(
            request.context()
            | {
                "age": age,
                "expires_in": max(0.0, settings.plan_ttl - age),
                "risk": (request.plan or {}).get("risk", {}).get("level", ""),
            }
        )
    return out
