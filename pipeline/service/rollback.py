"""The one failure path, and the one way back to a commit.

``return_to`` is every return of the live checkout to a commit: it signs the return as a
``rollback`` release when the commit is below the newest release (else the Molt that
starts on it is refused as a downgrade), restores the checkout and proves it, and restarts
the service on it when asked. Each step is reported to a ``Report`` as a check; a step
that fails is reported and raised, so the caller ends what it was doing its own way. The
caller holds the update lock and stops what a dead worker left running first
(``stop_left``).

``undo`` is the failure path: the job calls it when a step fails; abandoned-update
recovery calls it for an update whose worker died (pipeline/update/recovery.py); the boot
guard calls it for the update that installed a release that cannot start
(pipeline/update/bootguard.py). Each describes how far the update got with a ``Trail``;
``undo`` takes back exactly that through ``return_to``, then ends the request as failed
with the reason and clears the waiting line, whatever happened on the way: a request is
never left unfinished. ``molt recover`` (pipeline/update/repair.py) and the boot guard's
return to the last good release take the same way back with reports of their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis
import structlog

from pipeline import codenames, metrics
from pipeline.config import Settings
from pipeline.exceptions import GitError, RollbackFailed, UpdateFailed
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


class Report(Protocol):
    """Where a way back says what each step did: a failed update's ``Trail``, a step of
    ``molt recover``."""

    def check(self, name: str, ok: bool, seconds: float, detail: str = "") -> None: ...


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
    killed = stop_left(settings, conn, request_id)
    return type(failure)(failure.phase, f"{failure.reason}; {killed}") if killed else failure


def stop_left(settings: Settings, conn: redis.Redis, request_id: str) -> str:
    """Kill the test command an update left running (it runs in the checkout about to be
    restored); says what was killed, "" if nothing ran."""
    killed = RunningCommand(conn, Target(settings, conn).keys.command).stop_left(request_id)
    if killed:
        log.warning("killed a test command left running", request_id=request_id, detail=killed)
    return killed


def _roll_back_and_report(
    settings: Settings,
    conn: redis.Redis,
    store: RequestStore,
    request_id: str,
    failure: UpdateFailed,
    trail: Trail,
) -> None:
    request = store.get(request_id)
    if request.state in UNDER_WAY and trail.snapshot is not None:  # else nothing to return
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
    untouched_on = "" if trail.snapshot is not None else _live_commit(settings)
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
            "untouched_on": untouched_on,
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


def _live_commit(settings: Settings) -> str:
    """The commit the live checkout is on, short, for a failure that never touched it: it
    may no longer be the plan's base (another update landed while the plan waited)."""
    try:
        return Git(settings.target_dir).head()[:7]
    except GitError:
        return ""


def _return_to_snapshot(
    settings: Settings,
    conn: redis.Redis,
    request: Request,
    failure: UpdateFailed,
    trail: Trail,
    snapshot: Snapshot,
) -> None:
    """The live checkout back on the snapshot, and the service restarted on it if it had
    been restarted onto the update (which it can only be once the checkout was touched)."""
    if not trail.touched_live:
        return

    def bring_back(commit: str) -> str:
        return restart.bring_back(settings, conn, commit, trail.log_dir / "restart.log")

    codename = request.codename or request.id
    return_to(
        settings,
        conn,
        snapshot,
        f"update {codename} failed in {failure.phase}: {failure.reason}",
        trail,
        request_id=request.id,
        bring_back=bring_back if trail.restarted else None,
    )


def return_to(
    settings: Settings,
    conn: redis.Redis,
    to: Snapshot,
    reason: str,
    report: Report,
    *,
    request_id: str = "",
    bring_back: Callable[[str], str] | None = None,
    live: Git | None = None,
    returned: str = "",
) -> None:
    """Return the live checkout (``live``, else the target's) to the commit and branch of
    ``to``: sign the return (``reason`` is the release's reason), restore the checkout and
    prove it, then restart the service with ``bring_back`` (given the commit, it says what
    it did) if given. Reports ``rollback release``, ``rollback`` (``returned`` says it, else
    "back on <commit>") and ``restart after rollback``; a restore or restart that fails is
    reported and raised (``UpdateFailed``), the steps before it stay done."""
    live = live or Git(settings.target_dir)
    _sign_return(settings, conn, to, reason, report, live.head(), request_id)
    try:
        seconds = snapshots.restore(live, to)
    except UpdateFailed as exc:
        report.check("rollback", False, 0.0, exc.reason)
        raise
    report.check("rollback", True, seconds, returned or f"back on {to.short}")
    if bring_back is None:
        return
    try:
        back = bring_back(to.commit)
    except UpdateFailed as exc:
        report.check("restart after rollback", False, 0.0, f"on {to.short}: {exc.reason}")
        raise
    report.check("restart after rollback", True, 0.0, back)


def _sign_return(
    settings: Settings,
    conn: redis.Redis,
    to: Snapshot,
    reason: str,
    report: Report,
    head: str,
    request_id: str,
) -> None:
    """Going back below the newest signed release is a release of its own (``rollback``),
    signed before the checkout moves, so that the Molt that starts on it is not refused as
    a downgrade. A signing that fails is reported, and the return goes on: the way back
    matters more."""
    try:
        back = releases.record_return(
            settings,
            conn,
            commit=to.commit,
            from_commit=head,
            codename=codenames.new_codename(conn),
            reason=reason,
            request_id=request_id,
        )
    except Exception as exc:
        log.exception("signing the return", request_id=request_id, commit=to.commit[:12])
        report.check("rollback release", False, 0.0, str(exc)[:200])
        return
    if back is not None:
        report.check("rollback release", True, 0.0, f"{back.describe()}, key {back.key_id}")
