"""The jobs RQ workers run. Workers import them by path (``pipeline.jobs.run_update``).

One update: wait for the lock → snapshot → sandbox → phase one → apply to live
→ phase two → restart → verify. A change described in words is written in the
sandbox first (implement), committed there, and phase one starts with the scope
check and the review of the diff. Any failure rolls the live checkout back to the
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

from pipeline import (
    autonomy,
    codenames,
    control,
    queueing,
    releases,
    restart,
    snapshots,
    validation,
)
from pipeline.changes import changed_files
from pipeline.config import Settings, load_settings
from pipeline.estimates import durations_key
from pipeline.exceptions import GitError, LLMError, RollbackFailed, UpdateFailed
from pipeline.git import Git
from pipeline.locking import UpdateLock, WaitingLine
from pipeline.planning import import_graph
from pipeline.plans import Plan
from pipeline.preflight import TestRecord, record_tests, recorded_tests, tests_at, update_sandbox
from pipeline.requests import Request, RequestStore
from pipeline.snapshots import Snapshot
from pipeline.states import RequestState as S
from pipeline.store import connect

log = structlog.get_logger(__name__)
MOLT = "molt"
PHASES = ("snapshot", "sandbox", "phase 1", "apply", "phase 2", "restart", "verify")
CHANGE_PHASES = ("snapshot", "sandbox", "implement", *PHASES[2:])
#: Who commits a change written in the sandbox; no hooks run and nothing is signed.
COMMIT_CONFIG = (
    "-c",
    "user.name=Molt",
    "-c",
    "user.email=molt@localhost",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "commit.gpgSign=false",
)
T = TypeVar("T")


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
        self.phases: tuple[str, ...] = PHASES
        self.report: list[str] = []  # extra lines for the final message (change requests)
        self.release: releases.Manifest | None = None  # signed after phase 2

    # -- the way through --------------------------------------------------

    def run(self) -> str:
        request = self._wait_for_turn()
        if request is None:
            return "not run"
        try:
            return self._update(request)
        finally:
            control.clear_stop(self.settings, self.conn, self.request_id)
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
                    refused = autonomy.start_refusal(self.settings, self.conn, request)
                    if refused:
                        self.lock.release(self.request_id)
                        self.store.transition(
                            self.request_id,
                            S.FAILED,
                            actor=MOLT,
                            message=f"not started: {refused}",
                            phase="queued",
                        )
                        return None
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
        autonomy.record_start(self.settings, self.conn, request)
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
        if phase in self.phases:
            progress |= {
                "phase_index": self.phases.index(phase) + 1,
                "phase_total": len(self.phases),
            }
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
        if plan.kind == "change":
            self.phases = CHANGE_PHASES
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

        sandbox = update_sandbox(settings)
        with sandbox.locked():
            if plan.kind == "change":
                path, changed = self._write_change(plan, sandbox, heartbeat)
            else:
                self._enter("sandbox", f"checking out {plan.target_commit[:7]} in the sandbox")
                began = time.monotonic()
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
                require_count=settings.require_tests,
                stop=self._stop_asked,
            )
        self._record_phase(phase_one)
        self._guard(heartbeat)
        if not phase_one.ok:
            raise UpdateFailed("phase 1", phase_one.reason)

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
            require_count=settings.require_tests,
            stop=self._stop_asked,
        )
        self._record_phase(phase_two)
        self._guard(heartbeat)
        if not phase_two.ok:
            raise UpdateFailed("phase 2", phase_two.reason)
        record_tests(
            self.conn,
            settings.target_id,
            TestRecord(True, phase_two.passed, phase_two.test_seconds, plan.target_commit),
        )
        self._sign_release(plan)

        self._enter("restart", "restarting the service", state=S.RESTARTING)
        began = time.monotonic()
        self.restarted = True
        summary = restart.restart(
            settings, self.conn, plan.target_commit, self.log_dir / "restart.log"
        )
        self._check("restart and verify", True, time.monotonic() - began, summary)
        self._succeed(plan, phase_one.test_seconds + phase_two.test_seconds, len(changed))

    def _sign_release(self, plan: Plan) -> None:
        """The release manifest of what passed phase 2, signed before the restart: the
        restarted Molt checks it at start-up."""
        began = time.monotonic()
        assert self.snapshot is not None
        self.release = releases.record_update(
            self.settings,
            self.conn,
            self.store.get(self.request_id),
            commit=plan.target_commit,
            parent=self.snapshot.commit,
            checks=self.checks,
        )
        detail = f"{self.release.describe()}, key {self.release.key_id}"
        self._check("release", True, time.monotonic() - began, detail)

    # -- a change described in words ------------------------------------------

    def _write_change(
        self, plan: Plan, sandbox: snapshots.Sandbox, heartbeat: Any
    ) -> tuple[Path, list[str]]:
        """Implement, commit, check the scope and review, all in the sandbox; the plan's
        ``target_commit`` is the new commit afterwards. Returns the sandbox and the changed
        files to validate."""
        from pipeline.llm import agent, review, scope
        from pipeline.llm.client import Claude, record_usage

        settings = self.settings
        request = self.store.get(self.request_id)
        base = plan.base_commit
        self._enter("sandbox", f"checking out {base[:7]} in the sandbox")
        began = time.monotonic()
        path = _transient(lambda: sandbox.checkout(base), "sandbox")
        self._check("sandbox", True, time.monotonic() - began, base[:7])

        self._enter("implement", "writing the change in the sandbox")
        began = time.monotonic()
        writer = Claude(settings, "implementation")
        graph = import_graph(settings, self.conn, sandbox.git, base)
        try:
            done = agent.implement(
                settings,
                writer,
                path,
                plan,
                request,
                graph,
                log_path=self.log_dir / "implement.log",
                guard=lambda: self._guard(heartbeat),
            )
        except LLMError as exc:
            raise UpdateFailed("implement", str(exc)) from exc
        finally:
            writer.close()
            record_usage(self.conn, self.request_id, "implementation", settings.model, writer.usage)
        left_out = self._drop_strays(sandbox.git, done.files.touched)
        target = self._commit(sandbox.git, plan, request, done.summary)
        files = changed_files(sandbox.git, base, target)
        plan.target_commit = target
        self.store.update(self.request_id, plan=plan.to_dict())
        turns = f"{done.turns} model call{'s' if done.turns != 1 else ''}"
        detail = f"{target[:7]}: {len(files)} files in {turns}; {done.summary}"
        if left_out:
            detail += f" (left out {len(left_out)} new files it did not write: {left_out[0]}…)"
        self._check("implement", True, time.monotonic() - began, detail[:300])
        self._guard(heartbeat)

        self._enter("phase 1", "checking the change against the plan, then validating it")
        began = time.monotonic()
        found = scope.check_scope(plan, files)
        self._check(
            "phase 1: scope", found.deviation_ok, time.monotonic() - began, found.deviation_detail()
        )
        if found.unplanned:
            self.report.append(found.deviation_detail())
        self._check("phase 1: protected paths", found.protected_ok, 0.0, found.protected_detail())
        if not found.protected_ok:
            raise UpdateFailed("phase 1", found.protected_detail())
        if not found.deviation_ok:
            raise UpdateFailed("phase 1", f"scope: {found.deviation_detail()}")

        began = time.monotonic()
        reviewer = Claude(settings, "review")
        diff = sandbox.git.run(
            "diff", "--no-color", "--no-ext-diff", "--no-textconv", base, target, "--"
        )
        try:
            verdict = review.review(settings, reviewer, plan, request, diff, found)
        except LLMError as exc:
            raise UpdateFailed("phase 1", str(exc)) from exc
        finally:
            reviewer.close()
            record_usage(self.conn, self.request_id, "review", settings.model, reviewer.usage)
        self._check(
            "phase 1: review", verdict.approved, time.monotonic() - began, verdict.detail()[:600]
        )
        if not verdict.approved:
            raise UpdateFailed("phase 1", f"review {verdict.detail()}")
        return path, [f["path"] for f in files if f["status"] != "D"]

    def _drop_strays(self, git: Git, written: set[str]) -> list[str]:
        """Remove new files the implementer did not write (what its test runs left behind);
        changes to existing files stay, for the scope check to judge."""
        out = git.run("ls-files", "-z", "--others", "--exclude-standard")
        strays = sorted(p for p in out.split("\0") if p and p not in written)
        for rel in strays:
            (git.path / rel).unlink(missing_ok=True)
        return strays

    def _commit(self, git: Git, plan: Plan, request: Request, summary: str) -> str:
        """Commit what the implementer left in the sandbox; the new commit's sha."""
        git.run("add", "--all")
        if not git.run("status", "--porcelain").strip():
            raise UpdateFailed("implement", "the implementer changed nothing")
        message = (
            f"{plan.summary}\n\n{summary}\n\n"
            f"Change request {self.request_id} by {request.requester}, written from the "
            f"approved plan."
        )
        git.run(*COMMIT_CONFIG, "commit", "--quiet", "--no-verify", "-m", message)
        return git.head()

    def _baseline(self, commit: str) -> int | None:
        known = recorded_tests(self.conn, self.settings.target_id, commit)
        if known is None:
            known = tests_at(self.settings, self.conn, commit)
        return known.count if known.passed else None

    def _record_phase(self, result: validation.PhaseResult) -> None:
        for check in result.checks:
            self._check(f"{result.phase}: {check.name}", check.ok, check.seconds, check.detail)

    def _stop_asked(self) -> bool:
        """Asked by a validation phase's running test command, several times a second, so
        that an emergency stop kills it and reaches the next safe point at once."""
        try:
            return control.stop_requested(self.settings, self.conn, self.request_id) is not None
        except redis.RedisError:
            return False

    def _guard(self, heartbeat: Any) -> None:
        """A safe point: stop here if asked to, or if the lock is no longer ours."""
        stopper = control.stop_requested(self.settings, self.conn, self.request_id)
        if stopper:
            self.conn.delete(control.stop_key(self.settings.target_id))
            raise UpdateFailed(self._phase(), f"emergency stop by {stopper}")
        if heartbeat.lost:
            raise UpdateFailed(self._phase(), "the update lock was lost (Redis unreachable?)")

    def _usage(self, result: dict[str, Any]) -> str:
        """Model use of the whole request (every planning round, implementation, review)
        into ``result``; the sentence for the message, or "" if the model was not used."""
        from pipeline.llm.client import request_usage

        usage = request_usage(self.conn, self.request_id)
        if not usage.calls:
            return ""
        result["usage"] = usage.to_dict()
        return f"Model use: {usage.line()}."

    def _succeed(self, plan: Plan, test_seconds: float, changed: int) -> None:
        total = time.monotonic() - self.started
        self.conn.lpush(durations_key(self.settings.target_id), f"{total:.3f}")
        self.conn.ltrim(durations_key(self.settings.target_id), 0, 19)
        result = {
            "checks": self.checks,
            "total_seconds": round(total, 3),
            "test_seconds": round(test_seconds, 3),
            "changed_files": len(plan.files) if plan.kind != "change" else changed,
            "from_commit": plan.base_commit,
            "to_commit": plan.target_commit,
            "release": self.release.release if self.release else None,
        }
        message = f"{plan.target_commit[:7]} is live and healthy"
        if self.release is not None:
            message += f" as signed release {self.release.release}"
        if plan.kind == "change":
            parts = (f"{message}.", *self.report, self._usage(result))
            message = " ".join(part for part in parts if part)
        self.store.transition(
            self.request_id,
            S.SUCCEEDED,
            actor=MOLT,
            message=message,
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

    def _sign_return(self, failure: UpdateFailed) -> None:
        """Going back to the snapshot after this update's release was signed is a release of
        its own (``rollback``), signed before the checkout moves, so that the Molt that starts
        on it is not refused as a downgrade."""
        assert self.snapshot is not None
        codename = self.store.get(self.request_id).codename or self.request_id
        try:
            back = releases.record_return(
                self.settings,
                self.conn,
                commit=self.snapshot.commit,
                from_commit=self.live.head(),
                codename=codenames.new_codename(self.conn),
                reason=f"update {codename} failed in {failure.phase}: {failure.reason}",
                request_id=self.request_id,
            )
        except Exception as exc:  # the rollback itself matters more
            log.exception("signing the return to the snapshot", request_id=self.request_id)
            self._check("rollback release", False, 0.0, str(exc)[:200])
            return
        if back is not None:
            self._check("rollback release", True, 0.0, f"{back.describe()}, key {back.key_id}")

    def _roll_back_and_report(self, failure: UpdateFailed) -> None:
        request = self.store.get(self.request_id)
        reason = failure.reason
        rolled_back_to = ""
        if request.state is S.RESTARTING or request.state is S.RUNNING:
            self._enter("rollback", f"{failure.phase} failed: rolling back")
        try:
            if self.snapshot is not None:
                if self.touched_live:
                    self._sign_return(failure)
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
        result: dict[str, Any] = {"checks": self.checks, "total_seconds": round(total, 3)}
        spent = self._usage(result)
        if spent:
            reason = f"{reason}. {spent}"
        self.store.transition(
            self.request_id,
            S.FAILED,
            actor=MOLT,
            message=reason,
            phase=failure.phase,
            fields={"result": result},
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
