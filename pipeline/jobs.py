"""The jobs RQ workers run. Workers import them by path (``pipeline.jobs.run_update``).

One update: wait for the lock → snapshot → sandbox → phase one → apply to live
→ phase two → restart → verify. Any failure rolls the live checkout back to the
snapshot, restarts again if the service had been restarted, verifies the
return, clears the waiting line, and ends the request as failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import redis
import structlog

from pipeline import codenames, control, queueing, restart, snapshots, validation
from pipeline.config import Settings, load_settings
from pipeline.exceptions import GitError, RollbackFailed, UpdateFailed
from pipeline.git import Git
from pipeline.locking import UpdateLock, WaitingLine
from pipeline.planning import Plan
from pipeline.preflight import TestRecord, record_tests, recorded_tests, tests_at, update_sandbox
from pipeline.requests import Request, RequestStore
from pipeline.snapshots import Snapshot
from pipeline.states import RequestState as S
from pipeline.store import connect

log = structlog.get_logger(__name__)
MOLT = "molt"
PHASES = ("snapshot", "sandbox", "phase 1", "apply", "phase 2", "restart", "verify")
T = TypeVar("T")


def durations_key(target_id: str) -> str:
    return f"molt:durations:{target_id}"


def run_update(request_id: str) -> str:
    """RQ entry point."""
    settings = load_settings()
    conn = connect(settings)
    return Update(settings, conn, request_id).run()


def _transient(action: Callable[[], T], what: str) -> T:
    """Retry infrastructure hiccups (git, Redis) with backoff; tests are never retried."""
    for delay in (0.2, 0.5, 1.0, None):
        try:
            return action()
        except (GitError, redis.ConnectionError, redis.TimeoutError) as exc:
            if delay is None:
                raise UpdateFailed(what, str(exc), transient=True) from exc
            log.warning("transient failure, retrying", what=what, error=str(exc))
            time.sleep(delay)
    raise AssertionError("unreachable")


class Update:
    def __init__(self, settings: Settings, conn: redis.Redis, request_id: str) -> None:
        self.settings = settings
        self.conn = conn
        self.store = RequestStore(conn)
        self.request_id = request_id
        self.live = Git(settings.target_dir)
        self.lock = UpdateLock(conn, settings.target_id, settings.lock_ttl)
        self.line = WaitingLine(conn, settings.target_id)
        self.started = 0.0
        self.checks: list[dict[str, Any]] = []
        self.snapshot: Snapshot | None = None
        self.touched_live = False
        self.restarted = False
        self.log_dir = Path()

    # -- the way through --------------------------------------------------

    def run(self) -> str:
        request = self._wait_for_turn()
        if request is None:
            return "not run"
        try:
            return self._update(request)
        finally:
            self.lock.release(self.request_id)

    def _wait_for_turn(self) -> Request | None:
        """Block until this request heads the line and holds the lock."""
        while True:
            request = self.store.get(self.request_id)
            if request.state is not S.QUEUED:
                self.line.leave(self.request_id)
                return None
            if self._may_start():
                codename = codenames.new_codename(self.conn)
                if self.lock.try_lock(self.request_id, codename) is None:
                    self.line.leave(self.request_id)
                    return self._begin(request, codename)
            time.sleep(0.05)

    def _may_start(self) -> bool:
        """Head of the line, not paused, and no abandoned update left to roll back."""
        from pipeline.recovery import recover_abandoned

        if self.line.head() != self.request_id or control.is_paused(self.settings, self.conn):
            return False
        recover_abandoned(self.settings, self.conn)
        return True

    def _begin(self, request: Request, codename: str) -> Request:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.log_dir = self.settings.updates_dir / f"{codename}-{stamp}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        return self.store.transition(
            self.request_id,
            S.RUNNING,
            actor=MOLT,
            message=f"update {codename} started",
            phase="snapshot",
            fields={"codename": codename, "update_dir": str(self.log_dir)},
            data=self._progress("snapshot"),
        )

    def _progress(self, phase: str) -> dict[str, Any]:
        progress: dict[str, Any] = {"elapsed": round(time.monotonic() - self.started, 2)}
        if phase in PHASES:
            progress |= {"phase_index": PHASES.index(phase) + 1, "phase_total": len(PHASES)}
        return progress

    def _enter(self, phase: str, message: str, state: S = S.RUNNING) -> None:
        self.store.transition(
            self.request_id,
            state,
            actor=MOLT,
            message=message,
            phase=phase,
            data=self._progress(phase),
        )

    def _check(self, name: str, ok: bool, seconds: float, detail: str = "") -> None:
        self.checks.append({"name": name, "ok": ok, "seconds": round(seconds, 3), "detail": detail})

    def _update(self, request: Request) -> str:
        plan = Plan.from_dict(request.plan or {})
        with self.lock.keep_alive(self.request_id) as heartbeat:
            try:
                self._steps(plan, heartbeat)
            except Exception as exc:
                failure = (
                    exc if isinstance(exc, UpdateFailed) else UpdateFailed(self._phase(), str(exc))
                )
                log.warning("update failed", request_id=self.request_id, error=str(failure))
                self._fail(failure)
                return "failed"
        return "succeeded"

    def _phase(self) -> str:
        return self.store.get(self.request_id).phase or "update"

    def _steps(self, plan: Plan, heartbeat: Any) -> None:
        settings = self.settings
        began = time.monotonic()
        self.snapshot = _transient(lambda: snapshots.take(self.live), "snapshot")
        if self.snapshot.commit != plan.base_commit:
            raise UpdateFailed(
                "snapshot",
                f"the live checkout moved to {self.snapshot.short} since the plan was made "
                f"({plan.base_commit[:7]}): plan again",
            )
        self.store.update(self.request_id, snapshot=self.snapshot.to_dict())
        self._check("snapshot", True, time.monotonic() - began, f"{self.snapshot.short}")
        baseline = self._baseline(self.snapshot.commit)
        changed = [f["path"] for f in plan.files if f.get("status") != "D"]

        self._enter("sandbox", f"checking out {plan.target_commit[:7]} in the sandbox")
        began = time.monotonic()
        sandbox = update_sandbox(settings)
        with sandbox.locked():
            path = _transient(lambda: sandbox.checkout(plan.target_commit), "sandbox")
            self._check("sandbox", True, time.monotonic() - began, plan.target_commit[:7])
            self._enter("phase 1", "validating in the sandbox")
            phase_one = validation.run_phase(
                "phase 1",
                path,
                test_command=settings.test_command,
                timeout=settings.phase_timeout,
                changed_files=changed,
                baseline_passed=baseline,
                log_path=self.log_dir / "phase1.log",
            )
        self._record_phase(phase_one)
        if not phase_one.ok:
            raise UpdateFailed("phase 1", phase_one.reason)
        self._guard(heartbeat)

        self._enter("apply", f"moving the live checkout to {plan.target_commit[:7]}")
        began = time.monotonic()
        self.touched_live = True
        snap = self.snapshot
        _transient(lambda: snapshots.move_to(self.live, plan.target_commit, snap.branch), "apply")
        self._check("apply", True, time.monotonic() - began, plan.target_commit[:7])

        self._enter("phase 2", "validating the live checkout")
        phase_two = validation.run_phase(
            "phase 2",
            settings.target_dir,
            test_command=settings.test_command,
            timeout=settings.phase_timeout,
            changed_files=changed,
            baseline_passed=baseline,
            log_path=self.log_dir / "phase2.log",
        )
        self._record_phase(phase_two)
        if not phase_two.ok:
            raise UpdateFailed("phase 2", phase_two.reason)
        record_tests(
            self.conn,
            settings.target_id,
            TestRecord(True, phase_two.passed, phase_two.test_seconds, plan.target_commit),
        )
        self._guard(heartbeat)

        self._enter("restart", "restarting the service", state=S.RESTARTING)
        began = time.monotonic()
        self.restarted = True
        summary = restart.restart(
            settings, self.conn, plan.target_commit, self.log_dir / "restart.log"
        )
        self._check("restart and verify", True, time.monotonic() - began, summary)
        self._succeed(plan, phase_one.test_seconds + phase_two.test_seconds)

    def _baseline(self, commit: str) -> int | None:
        known = recorded_tests(self.conn, self.settings.target_id, commit)
        if known is None:
            known = tests_at(self.settings, self.conn, commit)
        return known.count if known.passed else None

    def _record_phase(self, result: validation.PhaseResult) -> None:
        for check in result.checks:
            self._check(f"{result.phase}: {check.name}", check.ok, check.seconds, check.detail)

    def _guard(self, heartbeat: Any) -> None:
        """A safe point: stop here if asked to, or if the lock is no longer ours."""
        stopper = control.stop_requested(self.settings, self.conn)
        if stopper:
            self.conn.delete(control.stop_key(self.settings.target_id))
            raise UpdateFailed(self._phase(), f"emergency stop by {stopper}")
        if heartbeat.lost:
            raise UpdateFailed(self._phase(), "the update lock was lost (Redis unreachable?)")

    def _succeed(self, plan: Plan, test_seconds: float) -> None:
        total = time.monotonic() - self.started
        self.conn.lpush(durations_key(self.settings.target_id), f"{total:.3f}")
        self.conn.ltrim(durations_key(self.settings.target_id), 0, 19)
        result = {
            "checks": self.checks,
            "total_seconds": round(total, 3),
            "test_seconds": round(test_seconds, 3),
            "changed_files": len(plan.files),
            "from_commit": plan.base_commit,
            "to_commit": plan.target_commit,
        }
        self.store.transition(
            self.request_id,
            S.SUCCEEDED,
            actor=MOLT,
            message=f"{plan.target_commit[:7]} is live and healthy",
            phase="done",
            fields={"result": result},
            data={"checks": self.checks, "total_seconds": result["total_seconds"]},
        )

    # -- failure ------------------------------------------------------------

    def _fail(self, failure: UpdateFailed) -> None:
        """Roll back, report, clear the queue; never leaves the request unfinished."""
        try:
            self._roll_back_and_report(failure)
        except Exception as exc:
            log.exception("failure handling failed", request_id=self.request_id)
            request = self.store.get(self.request_id)
            if not request.terminal:
                self.store.transition(
                    self.request_id,
                    S.FAILED,
                    actor=MOLT,
                    message=f"{failure.reason}; and then rolling back failed: {exc}",
                    phase=failure.phase,
                    data={"rollback_failed": True, "log_dir": str(self.log_dir)},
                )

    def _roll_back_and_report(self, failure: UpdateFailed) -> None:
        request = self.store.get(self.request_id)
        reason = failure.reason
        rolled_back_to = ""
        if request.state is S.RESTARTING or request.state is S.RUNNING:
            self._enter("rollback", f"{failure.phase} failed: rolling back")
        try:
            if self.snapshot is not None:
                if self.touched_live:
                    seconds = snapshots.restore(self.live, self.snapshot)
                    self._check("rollback", True, seconds, f"back on {self.snapshot.short}")
                if self.restarted:
                    back = restart.bring_back(
                        self.settings, self.conn, self.snapshot.commit, self.log_dir / "restart.log"
                    )
                    self._check("restart after rollback", True, 0.0, back)
                rolled_back_to = self.snapshot.short
        except UpdateFailed as exc:
            reason = f"{reason}; and then {exc}"
            failure = RollbackFailed(failure.phase, reason)
            self.conn.hset(
                f"molt:boot:{self.settings.target_id}",
                mapping={"clean": "0", "detail": str(exc)[:500]},
            )
        total = time.monotonic() - self.started
        self.store.transition(
            self.request_id,
            S.FAILED,
            actor=MOLT,
            message=reason,
            phase=failure.phase,
            fields={"result": {"checks": self.checks, "total_seconds": round(total, 3)}},
            data={
                "checks": self.checks,
                "failed_phase": failure.phase,
                "rolled_back_to": rolled_back_to,
                "rollback_failed": isinstance(failure, RollbackFailed),
                "log_dir": str(self.log_dir),
                "total_seconds": round(total, 3),
            },
        )
        codename = request.codename or self.request_id
        queueing.clear(
            self.settings,
            self.conn,
            f"cleared from the queue because update {codename} failed in {failure.phase}",
        )
