"""The one failure path: undoing an update and ending its request as failed.

The job calls ``undo`` when a step fails; abandoned-update recovery calls it for an
update whose worker died (pipeline/update/repair.py); the boot guard calls it for the update
that installed a release that cannot start (pipeline/update/bootguard.py). Each describes
how far the update got with a ``Trail``; ``undo`` takes back exactly that: signs the
return past a signed release, restores the live checkout to the snapshot, restarts
the service again if it had been restarted, and verifies the return. Then it ends the
request as failed with the reason and clears the waiting line, whatever happened on
the way: a request is never left unfinished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import structlog

from pipeline import codenames, metrics
from pipeline.config import Settings
from pipeline.exceptions import RollbackFailed, UpdateFailed
from pipeline.git import Git
from pipeline.processes import RunningCommand
from pipeline.queue import queueing
from pipeline.queue.targets import Target
from pipeline.releases import signing as releases
from pipeline.requests.states import UNDER_WAY
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Request, RequestStore
from pipeline.service import restart, snapshots
from pipeline.service.snapshots import Snapshot
from pipeline.usage import model_use

log = structlog.get_logger(__name__)
MOLT = "molt"
#: The phases after which the service runs the update's code.
RESTARTED_PHASES = ("restart", "verify", "watch")


@dataclass
class Trail:
    """How far an update got: what undoing it must take back, and the checks it made."""

    log_dir: Path
    started: float  # time.monotonic() when the update began
    snapshot: Snapshot | None = None
    touched_live: bool = False
    restarted: bool = False
    checks: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def left_by(
        cls, settings: Settings, request: Request, *, since: float, restarted: bool
    ) -> Trail:
        """What a stored request says its update did, for an update whose worker is gone:
        a snapshot is taken just before the live checkout is touched. ``since`` is the
        wall-clock time the update began."""
        snapshot = Snapshot.from_dict(request.snapshot) if request.snapshot else None
        return cls(
            log_dir=Path(request.update_dir or settings.updates_dir),
            started=time.monotonic() - (time.time() - since),
            snapshot=snapshot,
            touched_live=snapshot is not None,
            restarted=restarted,
        )

    def check(self, name: str, ok: bool, seconds: float, detail: str = "") -> None:
        self.checks.append({"name": name, "ok": ok, "seconds": round(seconds, 3), "detail": detail})

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def undo(
    settings: Settings, conn: redis.Redis, request_id: str, failure: UpdateFailed, trail: Trail
) -> None:
    """Roll back, report, clear the queue; never leaves the request unfinished."""
    store = RequestStore(conn)
    metrics.rolled_back(settings.target_name, failure.phase, failure.reason)
    try:
        failure = _stop_left_command(settings, conn, request_id, failure)
        _roll_back_and_report(settings, conn, store, request_id, failure, trail)
    except Exception as exc:
        log.exception("failure handling failed", request_id=request_id)
        if not store.get(request_id).terminal:
            store.transition(
                request_id,
                S.FAILED,
                actor=MOLT,
                message=f"{failure.reason}; and then rolling back failed: {exc}",
                phase=failure.phase,
                data={"rollback_failed": True, "log_dir": str(trail.log_dir)},
            )


def _stop_left_command(
    settings: Settings, conn: redis.Redis, request_id: str, failure: UpdateFailed
) -> UpdateFailed:
    """Kill the test command the update left running, if it still runs; the failure then
    says so."""
    killed = RunningCommand(conn, Target(settings, conn).keys.command).stop_left(request_id)
    if not killed:
        return failure
    log.warning("killed a test command left running", request_id=request_id, detail=killed)
    return type(failure)(failure.phase, f"{failure.reason}; {killed}")


def _roll_back_and_report(
    settings: Settings,
    conn: redis.Redis,
    store: RequestStore,
    request_id: str,
    failure: UpdateFailed,
    trail: Trail,
) -> None:
    request = store.get(request_id)
    if request.state in UNDER_WAY:
        store.transition(
            request_id,
            S.RUNNING,
            actor=MOLT,
            message=f"{failure.phase} failed: rolling back",
            phase="rollback",
            data={"elapsed": round(trail.elapsed, 2)},
        )
    rolled_back_to = ""
    if trail.snapshot is not None:
        try:
            _return_to_snapshot(settings, conn, request, failure, trail, trail.snapshot)
            rolled_back_to = trail.snapshot.short
        except UpdateFailed as exc:
            failure = RollbackFailed(failure.phase, f"{failure.reason}; and then {exc}")
            Target(settings, conn).boots.mark_unclean(str(exc))
    total = round(trail.elapsed, 3)
    result: dict[str, Any] = {"checks": trail.checks, "total_seconds": total}
    spent = model_use(conn, request_id, result)
    store.transition(
        request_id,
        S.FAILED,
        actor=MOLT,
        message=f"{failure.reason}. {spent}" if spent else failure.reason,
        phase=failure.phase,
        fields={"result": result},
        data={
            "checks": trail.checks,
            "failed_phase": failure.phase,
            "rolled_back_to": rolled_back_to,
            "rollback_failed": isinstance(failure, RollbackFailed),
            "log_dir": str(trail.log_dir),
            "total_seconds": total,
        },
    )
    queueing.clear(
        settings,
        conn,
        f"cleared from the queue because update {request.codename or request_id} "
        f"failed in {failure.phase}",
    )


def _return_to_snapshot(
    settings: Settings,
    conn: redis.Redis,
    request: Request,
    failure: UpdateFailed,
    trail: Trail,
    snapshot: Snapshot,
) -> None:
    """The live checkout back on the snapshot, and the service restarted on it if it had
    been restarted onto the update."""
    if trail.touched_live:
        live = Git(settings.target_dir)
        _sign_return(settings, conn, request, failure, trail, live.head())
        seconds = snapshots.restore(live, snapshot)
        trail.check("rollback", True, seconds, f"back on {snapshot.short}")
    if trail.restarted:
        back = restart.bring_back(settings, conn, snapshot.commit, trail.log_dir / "restart.log")
        trail.check("restart after rollback", True, 0.0, back)


def _sign_return(
    settings: Settings,
    conn: redis.Redis,
    request: Request,
    failure: UpdateFailed,
    trail: Trail,
    head: str,
) -> None:
    """Going back to the snapshot after this update's release was signed is a release of
    its own (``rollback``), signed before the checkout moves, so that the Molt that starts
    on it is not refused as a downgrade."""
    assert trail.snapshot is not None
    codename = request.codename or request.id
    try:
        back = releases.record_return(
            settings,
            conn,
            commit=trail.snapshot.commit,
            from_commit=head,
            codename=codenames.new_codename(conn),
            reason=f"update {codename} failed in {failure.phase}: {failure.reason}",
            request_id=request.id,
        )
    except Exception as exc:  # the rollback itself matters more
        log.exception("signing the return to the snapshot", request_id=request.id)
        trail.check("rollback release", False, 0.0, str(exc)[:200])
        return
    if back is not None:
        trail.check("rollback release", True, 0.0, f"{back.describe()}, key {back.key_id}")
