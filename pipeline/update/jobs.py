"""The jobs RQ workers run. Workers import them by path (``pipeline.update.jobs.run_update``).

A job is a turn: it waits for the update lock, then runs whichever request heads the
waiting line (pipeline/queue/queueing.py). One update, step by step: sandbox → phase one →
snapshot → apply to live → phase two → sign the release → restart → verify. Phase one never
touches the live checkout, so it runs while pre-flight's test run at the live commit may
still be going; the update waits for that run (and a freeze window in force holds it,
pipeline/intake/freezes.py) before its snapshot, taken just before the live checkout is
touched. A change described in words is written in the sandbox first
(pipeline/update/change.py).
Any failure goes down the one failure path (pipeline/service/rollback.py): back to the
snapshot, restarted again if the service had been restarted, the return verified,
the waiting line cleared, and the request failed with the reason.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import structlog

from pipeline import audit, codenames, events, logs, metrics
from pipeline.config import DELIVERY_PULL_REQUEST, Settings, load_settings
from pipeline.exceptions import IllegalTransition, UpdateFailed
from pipeline.git import Git
from pipeline.incidents import failures, oncall
from pipeline.incidents.book import IncidentBook
from pipeline.intake import autonomy, control, freezes, preflight
from pipeline.intake import flow as intake
from pipeline.planning.plans import Plan
from pipeline.processes import RunningCommand
from pipeline.queue import queueing, workers
from pipeline.queue.locking import Heartbeat
from pipeline.queue.targets import Target
from pipeline.releases import manifests
from pipeline.releases import signing as releases
from pipeline.requests import steps
from pipeline.requests.authorisation import raised_by_molt
from pipeline.requests.states import RequestState as S
from pipeline.requests.store import Origin, Request, RequestStore
from pipeline.retries import transient
from pipeline.sandbox.progress import TestProgress, Ticker
from pipeline.sandbox.records import TestRecord
from pipeline.sandbox.validation import Check, PhaseResult, PhaseSpec, passing_tests, run_phase
from pipeline.service import restart, snapshots, watching
from pipeline.service.metricwatch import MetricWatch
from pipeline.service.rollback import Trail, undo
from pipeline.store import connect
from pipeline.update import change, proposals
from pipeline.update.recovery import recover_abandoned
from pipeline.usage import model_use

log = structlog.get_logger(__name__)
MOLT = "molt"
PHASES = ("sandbox", "phase 1", "snapshot", "apply", "phase 2", "restart", "verify", "watch")
CHANGE_PHASES = ("sandbox", "implement", *PHASES[1:])
#: A change delivered as a pull request stops after phase 1 (MOLT_CHANGE_DELIVERY): the
#: live checkout is never touched, so there is no snapshot.
PROPOSAL_PHASES = (*CHANGE_PHASES[:3], "propose")
#: Entered as the update starts (its "starting" message, pipeline/requests/states.py).
FIRST_PHASE = PHASES[0]


def steps_of(settings: Settings, phases: tuple[str, ...]) -> tuple[str, ...]:
    """The phases an update goes through, as its progress counts them ("Step n of m") and
    its plan lists them: the watch only when there is a window."""
    return phases if settings.watch_seconds > 0 else tuple(p for p in phases if p != "watch")


#: How often a job waiting for its turn looks at the lock and the line again.
_TURN_POLL_SECONDS = 0.05


def run_update(request_id: str, target: str = "") -> str:
    """RQ entry point. ``request_id`` names the approval that put this job on the queue;
    the job runs whichever request heads the line once the lock is free (a turn, see
    pipeline/queue/queueing.py), so no job ever waits for a request queued behind it. In a
    fleet, ``target`` names whose line it is."""
    settings = load_settings().for_target(target)
    conn = connect(settings)
    turn = wait_for_turn(settings, conn)
    if turn is None:
        log.info("nothing waiting in the line", enqueued_for=request_id)
        return "not run"
    taken, codename = turn
    return Update(settings, conn, taken).run(codename)


def check_hold(request_id: str, since: float, target: str = "") -> str:
    """RQ entry point of a fix's hold check (pipeline/queue/queueing.py ``add_hold_check``):
    the incident it fixed held if its signature stayed quiet since the fix went live."""
    settings = load_settings().for_target(target)
    conn = connect(settings)
    failure = RequestStore(conn).get(request_id).incident
    return failures.settle(settings, conn, failure, request_id, since) if failure else "unknown"


def run_intake(
    request_id: str, target: str, step: str, retried_by: dict[str, Any] | None = None
) -> str:
    """RQ entry point of a fleet's pre-flight and planning (pipeline/intake/flow.py), run on the
    host that holds the target's checkout; the plan reaches chat as an event."""
    settings = load_settings().for_target(target)
    conn = connect(settings)
    waits_in = S.PLANNING if step == "plan" else S.PREFLIGHT
    found = RequestStore(conn).get(request_id)
    if found.state is not waits_in:  # ended meanwhile: cancelled, or no worker came in time
        return found.state.value
    who = None
    if retried_by is not None:
        who = Origin(**{**retried_by, "roles": tuple(retried_by.get("roles", ()))})
    if step == "plan":
        done = intake.plan_here(settings, conn, request_id)
    else:
        done = intake.check_and_plan(settings, conn, request_id, retried_by=who)
    # The pre-flight test run the plan did not wait for ends with this job, not with its
    # work horse; the approved update, queued behind it, finds it recorded.
    preflight.finish_background()
    return done.state.value


def wait_for_turn(settings: Settings, conn: redis.Redis) -> tuple[str, str] | None:
    """Block until the update lock is free, then take it for the head of the line; returns
    the request whose turn it is and the update's codename, or None once the line is empty.

    Before each try with the lock free, an update left abandoned is rolled back first. A
    worker asked to shut down stops waiting (pipeline/queue/workers.py ``stopping``). A pause
    holds the line, but for the rollback of a rollout's step at its head, which is never held.
    """
    target = Target(settings, conn)
    codename = ""
    while len(target.line) and not workers.stopping(conn):
        only = _unpaused_head(settings, conn, target)
        if only is not None:
            if target.lock.holder() is None:
                recover_abandoned(settings, conn)
            codename = codename or codenames.new_codename(conn)
            turn = queueing.take_turn(settings, conn, codename, only=only)
            if turn.taken:
                return turn.taken, codename
            if not turn.wait:
                return None
        time.sleep(_TURN_POLL_SECONDS)
    return None


def _unpaused_head(settings: Settings, conn: redis.Redis, target: Target) -> str | None:
    """Which head of the line may take its turn now: any ("") unless the target is paused;
    then only the rollback of a rollout's step (its id), else none (None)."""
    if not control.is_paused(settings, conn):
        return ""
    head = target.line.head()
    request = RequestStore(conn).find(head) if head else None
    if request is not None and steps.rolls_back_a_step(conn, request):
        return request.id
    return None


class Update:
    """One run of an approved request on this worker, once it is its turn."""

    def __init__(self, settings: Settings, conn: redis.Redis, request_id: str) -> None:
        self.settings = settings
        self.conn = conn
        self.store = RequestStore(conn)
        self.request_id = request_id
        self.live = Git(settings.target_dir)
        self.target = Target(settings, conn)
        self.lock = self.target.lock
        self.line = self.target.line
        self.spec = PhaseSpec.from_settings(
            settings, self.target.tests.limit(settings.phase_timeout)
        )
        self.trail = Trail(log_dir=Path(), started=time.monotonic())
        self.phases: tuple[str, ...] = steps_of(settings, PHASES)
        self.notes: list[str] = []  # extra lines for the final message (change requests)
        self.release: manifests.Manifest | None = None  # signed after phase 2
        self.heartbeat: Heartbeat | None = None
        self.flaky: list[str] = []  # tests that failed, then passed when run again
        self.command = RunningCommand(conn, self.target.keys.command)
        self.watched = ""  # what the watch window saw, for the success message
        self.queries: MetricWatch | None = None  # the service's metrics, read in the window
        self.clock = metrics.PhaseClock(settings.target_name)
        self.proof = ""  # a Fix it request's: its test reproduced the incident (reproduction.py)
        self.live_since = 0.0  # when the restarted service was verified live

    # -- starting, the lock taken for it ------------------------------------------------

    def run(self, codename: str) -> str:
        logs.bind(request_id=self.request_id, codename=codename, target=self.target.id)
        try:
            request = self._start(codename)
            if request is None:
                return "not run"
            return self._update(request)
        finally:
            control.clear_stop(self.settings, self.conn, self.request_id)
            self.lock.release(self.request_id)
            logs.unbind()

    def _start(self, codename: str) -> Request | None:
        """Mark the request running (or refused), then let it leave the line: a request
        is in the line until it runs, so a worker dying in between leaves it waiting."""
        try:
            return self._begin(self.store.get(self.request_id), codename)
        except IllegalTransition:  # cleared or failed since its turn was taken
            return None
        finally:
            self.line.leave(self.request_id)

    def _begin(self, request: Request, codename: str) -> Request | None:
        decision = autonomy.may_start(self.settings, self.conn, request)
        if not decision:
            self.lock.release(self.request_id)
            self.store.transition(
                self.request_id,
                S.FAILED,
                actor=MOLT,
                message=f"not started: {decision.reason}",
                phase="queued",
            )
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.trail.log_dir = self.settings.updates_dir / f"{codename}-{stamp}"
        self.trail.log_dir.mkdir(parents=True, exist_ok=True)
        self.trail.started = time.monotonic()
        self.clock = metrics.PhaseClock(self.settings.target_name)
        self.clock.enter(FIRST_PHASE)
        logs.bind(phase=FIRST_PHASE)
        autonomy.record_start(self.settings, self.conn, request)
        return self.store.transition(
            self.request_id,
            S.RUNNING,
            actor=MOLT,
            message=f"update {codename} started",
            phase=FIRST_PHASE,
            fields={"codename": codename, "update_dir": str(self.trail.log_dir)},
            data=self._progress(FIRST_PHASE),
        )

    # -- progress, checks and safe points (also lent to pipeline/update/change.py) --------------

    def _progress(self, phase: str) -> dict[str, Any]:
        progress: dict[str, Any] = {"elapsed": round(self.trail.elapsed, 2)}
        if phase in self.phases:
            progress |= {
                "phase_index": self.phases.index(phase) + 1,
                "phase_total": len(self.phases),
            }
        return progress

    def enter(self, phase: str, message: str, state: S = S.RUNNING) -> None:
        self.clock.enter(phase)
        logs.bind(phase=phase)
        self.store.transition(
            self.request_id,
            state,
            actor=MOLT,
            message=message,
            phase=phase,
            data=self._progress(phase),
        )

    def check(self, name: str, ok: bool, seconds: float, detail: str = "") -> None:
        self.trail.check(name, ok, seconds, detail)

    def guard(self) -> None:
        """A safe point: stop here if asked to, or if the lock is no longer ours."""
        stopper = control.stop_requested(self.settings, self.conn, self.request_id)
        if stopper:
            self.conn.delete(self.target.keys.stop)
            raise UpdateFailed(self._phase(), f"emergency stop by {stopper}")
        if self.heartbeat is not None and self.heartbeat.lost:
            raise UpdateFailed(self._phase(), "the update lock was lost (Redis unreachable?)")

    def _phase(self) -> str:
        return self.store.get(self.request_id).phase or "update"

    def _stop_asked(self) -> bool:
        """Asked by a validation phase's running test command, several times a second, so
        that an emergency stop kills it and reaches the next safe point at once."""
        try:
            return control.stop_requested(self.settings, self.conn, self.request_id) is not None
        except redis.RedisError:
            return False

    def stopping(self) -> bool:
        return self._stop_asked()

    def running(self, pid: int) -> None:
        self._running(pid)

    def _running(self, pid: int) -> None:
        """The test command started: its process group is recorded for whoever rolls this
        update back if this worker dies (pipeline/service/rollback.py kills it first)."""
        try:
            self.command.record(self.request_id, pid, self.spec.test_command)
        except redis.RedisError:
            log.warning("could not record the test command", request_id=self.request_id)

    # -- the way through ----------------------------------------------------------------

    def _update(self, request: Request) -> str:
        plan = Plan.from_dict(request.plan or {})
        if plan.kind == "change":
            self.phases = (
                PROPOSAL_PHASES if self._proposes(plan) else steps_of(self.settings, CHANGE_PHASES)
            )
            if request.incident:  # a Fix it reproduces its incident before phase 1
                at = self.phases.index("implement") + 1
                self.phases = (*self.phases[:at], "reproduce", *self.phases[at:])
        with self.lock.keep_alive(self.request_id) as heartbeat:
            self.heartbeat = heartbeat
            try:
                self._steps(request, plan)
            except Exception as exc:
                failure = (
                    exc if isinstance(exc, UpdateFailed) else UpdateFailed(self._phase(), str(exc))
                )
                log.warning("update failed", request_id=self.request_id, error=str(failure))
                self.clock.end("failed")
                undo(self.settings, self.conn, self.request_id, failure, self.trail)
                return "failed"
        self.clock.end("proposed" if self._proposes(plan) else "succeeded")
        return "succeeded"

    def _steps(self, request: Request, plan: Plan) -> None:
        if not self._proposes(plan):
            self._still_at_base(plan, transient("snapshot", self.live.head))
        known = self._tests_known(request, plan)
        baseline = self._baseline(known)
        one, changed = self._phase_one(request, plan, baseline)
        if known is None and intake.tests_first(request):
            baseline = self._baseline(self._tests_first(plan))
            self._still_passing("phase 1", one, baseline)
        if self._proposes(plan):
            self._propose(plan, one, len(changed))
            return
        self._not_frozen(request)
        self._snapshot(plan)
        self._apply(plan)
        two = self._phase_two(plan, changed, baseline)
        self._sign_release(plan)
        self._restart(plan)
        self._watch(plan)
        self._succeed(plan, one.test_seconds + two.test_seconds, len(changed))
        if request.incident:
            self._check_hold_later()

    def _check_hold_later(self) -> None:
        """A live fix's incident is held once its signature stays quiet for MOLT_FIX_HOLD
        after the watch window: checked then by a job of its own. The fix is live whatever
        happens here, so a failure to schedule it is logged, never rolled back."""
        try:
            queueing.add_hold_check(self.settings, self.request_id, self.live_since)
        except Exception as exc:
            log.warning("hold check not scheduled", request_id=self.request_id, error=str(exc))

    def _proposes(self, plan: Plan) -> bool:
        return plan.kind == "change" and self.settings.change_delivery == DELIVERY_PULL_REQUEST

    def _propose(self, plan: Plan, one: PhaseResult, changed: int) -> None:
        """MOLT_CHANGE_DELIVERY=pull-request: the change, written and through phase 1 in the
        sandbox, goes to a branch of its own on the remote, for the team's review and CI;
        the live checkout is never touched (pipeline/update/proposals.py follows it from there)."""
        codename = self.store.get(self.request_id).codename
        branch = proposals.branch_for(codename)
        self.enter("propose", f"pushing {plan.target_commit[:7]} to {branch}")
        began = time.monotonic()
        remote = transient("propose", proposals.push, self.settings, plan.target_commit, branch)
        self.check("push", True, time.monotonic() - began, f"{branch} on {remote}")
        proposals.follow(self.conn, self.request_id, plan.target_commit, branch)
        result = {
            "checks": self.trail.checks,
            "total_seconds": round(self.trail.elapsed, 3),
            "test_seconds": round(one.test_seconds, 3),
            "changed_files": changed,
            "from_commit": plan.base_commit,
            "to_commit": plan.target_commit,
            "branch": branch,
            "remote": remote,
            "merge_approves": self.settings.merge_approves,
            "proof": self.proof,
        }
        parts = (
            f"{plan.target_commit[:7]} is on {branch} at {remote}; the live checkout is untouched.",
            *self.notes,
            model_use(self.conn, self.request_id, result),
        )
        self.store.transition(
            self.request_id,
            S.PROPOSED,
            actor=MOLT,
            message=" ".join(part for part in parts if part),
            phase="done",
            fields={"result": result},
            data={"checks": self.trail.checks, "total_seconds": result["total_seconds"]},
        )

    def _tests_known(self, request: Request, plan: Plan) -> TestRecord | None:
        """The target's tests must pass at the commit it runs before anything is touched. A
        result already known is taken at once, and a failure fails the update before it
        starts; None while pre-flight's run is still going (the plan did not wait for it),
        which phase 1 need not wait for either: ``_tests_first`` does, after it."""
        if not intake.tests_first(request):
            return None
        record = self.target.tests.at(plan.base_commit)
        if record is not None:
            self._tests_passed(plan, record, 0.0)
        return record

    def _tests_first(self, plan: Plan) -> TestRecord:
        """Wait for pre-flight's run at the live commit, after phase 1 and before the
        snapshot; a failure fails the update without touching anything."""
        short = plan.base_commit[:7]
        began = time.monotonic()
        self.enter("preflight", f"waiting for the pre-flight test run at {short}")
        ticker = Ticker(
            self.settings.progress_interval,
            lambda: self.store.refresh(
                self.request_id,
                self._progress("preflight") | {"progress": {"seconds": time.monotonic() - began}},
            ),
        )
        with ticker:
            record = preflight.tests_at(
                self.settings, self.conn, plan.base_commit, self._stop_asked
            )
        self.guard()
        self._tests_passed(plan, record, time.monotonic() - began)
        return record

    def _tests_passed(self, plan: Plan, record: TestRecord, seconds: float) -> None:
        short = plan.base_commit[:7]
        if not record.passed:
            self.check("pre-flight tests", False, seconds, record.detail)
            raise UpdateFailed(
                "pre-flight",
                f"the tests fail at the current commit {short}, before the update: "
                f"{record.detail}. Nothing was touched; fix the service, then Retry",
            )
        countable = autonomy.tests_countable(self.settings, self.conn)  # MOLT_REQUIRE_TESTS
        if not countable:
            self.check("pre-flight tests", False, seconds, countable.reason)
            raise UpdateFailed("pre-flight", f"{countable.reason}. Nothing was touched")
        counted = f"{record.count} passed" if record.count is not None else "passed"
        self.check("pre-flight tests", True, seconds, f"{counted} at {short}")

    def _not_frozen(self, request: Request) -> None:
        """A freeze that began after the approval holds the update, checked last before the
        snapshot (the tests may have been waited for): it fails without touching anything.
        A rollback, or a deploy a second operator approved to break glass, goes on."""
        held = freezes.gate(self.settings, request)
        if not held:
            raise UpdateFailed("freeze", held.reason)

    def _still_at_base(self, plan: Plan, head: str) -> None:
        """The live checkout is where the plan was made; checked at the snapshot, and before
        phase 1 too, so that a plan the live checkout left behind (another update landed
        while it waited in line) fails at once rather than after running the tests."""
        if head != plan.base_commit:
            raise UpdateFailed(
                "snapshot",
                f"the live checkout moved to {head[:7]} since the plan was made "
                f"({plan.base_commit[:7]}): plan again",
            )

    def _snapshot(self, plan: Plan) -> None:
        self.enter("snapshot", "taking a snapshot of the live checkout before it is touched")
        began = time.monotonic()
        snapshot = transient("snapshot", snapshots.take, self.live)
        self._still_at_base(plan, snapshot.commit)
        self.trail.snapshot = snapshot
        self.store.update(self.request_id, snapshot=snapshot.to_dict())
        self.check("snapshot", True, time.monotonic() - began, snapshot.short)

    @staticmethod
    def _baseline(known: TestRecord | None) -> int | None:
        """How many tests passed at the live commit: no phase may pass fewer."""
        return known.count if known is not None and known.passed else None

    def _still_passing(self, phase: str, result: PhaseResult, baseline: int | None) -> None:
        """Phase 1 ran before pre-flight's count was known: the count is compared now."""
        if baseline is None or result.passed is None:
            return
        found = passing_tests(result.passed, baseline)
        self.check(f"{phase}: {found.name}", found.ok, found.seconds, found.detail)
        if not found.ok:
            raise UpdateFailed(phase, f"{found.name}: {found.detail}. Nothing was touched")

    def _phase_one(
        self, request: Request, plan: Plan, baseline: int | None
    ) -> tuple[PhaseResult, list[str]]:
        """The target in the sandbox (written there first for a change in words), then
        validated there; returns the phase and the files it changed."""
        sandbox = preflight.update_sandbox(self.settings)
        with sandbox.locked():
            if plan.kind == "change":
                writing = change.Writing(
                    self.settings,
                    self.conn,
                    self,
                    request,
                    plan,
                    sandbox,
                    self.trail.log_dir,
                    self.spec,
                )
                try:
                    written = change.write(writing)
                finally:
                    self.command.clear(self.request_id)
                path, changed = written.path, written.changed
                if written.note:
                    self.notes.append(written.note)
                if written.proof:
                    self.proof = written.proof
                    self.notes.append(f"Proof: {written.proof}.")
            else:
                path = self._sandbox(plan, sandbox)
                changed = [f["path"] for f in plan.files if f.get("status") != "D"]
            result = self._validate("phase 1", path, changed, baseline)
        return result, changed

    def _sandbox(self, plan: Plan, sandbox: snapshots.Sandbox) -> Path:
        """The update's first phase (entered as it started): the target in the sandbox."""
        began = time.monotonic()
        path = transient("sandbox", sandbox.checkout, plan.target_commit)
        self.check("sandbox", True, time.monotonic() - began, plan.target_commit[:7])
        self.enter("phase 1", "validating in the sandbox")
        return path

    def _validate(
        self, phase: str, path: Path, changed: list[str], baseline: int | None
    ) -> PhaseResult:
        """One validation phase, its status message refreshed while it runs, its checks and
        flaky tests recorded; a safe point after it. Its test command's process group is on
        record while it runs (a rollback after this worker died kills it)."""
        remembered = self._remembered(phase)
        if remembered is not None:
            for found in remembered.checks:
                self.check(f"{phase}: {found.name}", found.ok, found.seconds, found.detail)
            self.guard()
            return remembered
        seen = TestProgress()
        ticker = Ticker(self.settings.progress_interval, lambda: self._show_progress(phase, seen))
        try:
            with ticker:
                result = run_phase(
                    phase,
                    path,
                    self.spec,
                    changed_files=changed,
                    baseline_passed=baseline,
                    log_path=self.trail.log_dir / f"{phase.replace(' ', '')}.log",
                    stop=self._stop_asked,
                    watch=seen.feed,
                    started=self._running,
                )
        finally:
            self.command.clear(self.request_id)
        metrics.checks_done(self.settings.target_name, phase, result.checks)
        for found in result.checks:
            self.check(f"{phase}: {found.name}", found.ok, found.seconds, found.detail)
        if result.flaky:
            codename = self.store.get(self.request_id).codename
            self.target.flaky.record(result.flaky, codename, phase)
            self.flaky.extend(t for t in result.flaky if t not in self.flaky)
        self.guard()
        if not result.ok:
            raise UpdateFailed(phase, result.reason)
        return result

    def _remembered(self, phase: str) -> PhaseResult | None:
        """Molt's own rollback for an incident is the recovery, and must be fast: the release
        it returns to passed its tests on this target (a passed run is kept for 7 days), so
        its phases take that result instead of running the suite again."""
        request = self.store.get(self.request_id)
        if request.command != "rollback" or not raised_by_molt(request.origin):
            return None
        commit = str((request.plan or {}).get("target_commit", ""))
        record = self.target.tests.at(commit) if commit else None
        if record is None or not record.passed:
            return None
        detail = f"{record.count} passed at {commit[:7]} before: the recovery takes that result"
        return PhaseResult(phase, [Check("tests remembered", True, 0.0, detail)], record.count)

    def _show_progress(self, phase: str, seen: TestProgress) -> None:
        """A refresh of the status message while ``phase`` runs (its time, and pytest's
        share done and failures so far): an event, not a state change, so not audited."""
        self.store.refresh(self.request_id, self._progress(phase) | {"progress": seen.snapshot()})

    def _apply(self, plan: Plan) -> None:
        assert self.trail.snapshot is not None
        self.enter("apply", f"moving the live checkout to {plan.target_commit[:7]}")
        began = time.monotonic()
        self.trail.touched_live = True
        branch = self.trail.snapshot.branch
        transient("apply", snapshots.move_to, self.live, plan.target_commit, branch)
        self.check("apply", True, time.monotonic() - began, plan.target_commit[:7])

    def _phase_two(self, plan: Plan, changed: list[str], baseline: int | None) -> PhaseResult:
        self.enter("phase 2", "validating the live checkout")
        result = self._validate("phase 2", self.settings.target_dir, changed, baseline)
        record = TestRecord(True, result.passed, result.test_seconds, plan.target_commit)
        self.target.tests.record(record)
        return result

    def _sign_release(self, plan: Plan) -> None:
        """The release manifest of what passed phase 2, signed before the restart: the
        restarted Molt checks it at start-up."""
        assert self.trail.snapshot is not None
        began = time.monotonic()
        request = self.store.get(self.request_id)
        self.release = releases.record_update(
            self.settings,
            self.conn,
            request,
            kind=control.release_kind(self.settings, request),
            commit=plan.target_commit,
            parent=self.trail.snapshot.commit,
            checks=self.trail.checks,
        )
        detail = f"{self.release.describe()}, key {self.release.key_id}"
        self.check("release", True, time.monotonic() - began, detail)

    def _restart(self, plan: Plan) -> None:
        self.enter("restart", "restarting the service", state=S.RESTARTING)
        if self.settings.watch_seconds and self.settings.watch.queries:
            self.queries = MetricWatch(self.settings)
            self.queries.take_baseline()  # the values the window's are shown beside
        began = time.monotonic()
        self.trail.restarted = True
        log_path = self.trail.log_dir / "restart.log"
        short = plan.target_commit[:7]
        summary = restart.restart(
            self.settings,
            self.conn,
            plan.target_commit,
            log_path,
            verifying=lambda: self.enter(
                "verify", f"checking the service is healthy on {short}", state=S.RESTARTING
            ),
        )
        self.check("restart and verify", True, time.monotonic() - began, summary)
        self.live_since = time.time()

    def _watch(self, plan: Plan) -> None:
        """The watch window (pipeline/service/watching.py); a failure in it rolls back like
        any other."""
        if not self.settings.watch_seconds:
            return
        seconds = f"{self.settings.watch_seconds:g} s"
        count = len(self.queries.tracked) if self.queries else 0
        also = f" and {count} metric quer{'y' if count == 1 else 'ies'}" if count else ""
        self.enter("watch", f"live; watching its health{also} for {seconds}", state=S.WATCHING)
        began = time.monotonic()
        opened = oncall.news_since(self.settings, self.conn, self.live_since)
        failure = self.store.get(self.request_id).incident
        # A fix: its incident's signature coming back rolls it back too.
        back = failures.came_back(self.settings, self.conn, failure, self.live_since)

        def news() -> list[str]:
            return opened() + back()

        try:
            report = watching.watch(
                self.settings,
                self.conn,
                plan.target_commit,
                self.trail.log_dir / "watch.log",
                guard=self.guard,
                news=news,
                shown=lambda seen: self.store.refresh(
                    self.request_id, self._progress("watch") | {"watch": seen.summary()}
                ),
                metrics=self.queries,
            )
        except UpdateFailed as exc:
            if not self._recovering(exc):
                raise
            self.check("watch", False, time.monotonic() - began, exc.reason)
            return
        finally:
            try:
                self._tell_inconclusive()
            except redis.RedisError as exc:  # the watch's own outcome matters more
                log.warning("inconclusive metrics not told", error=str(exc))
        self.watched = report.summary()
        self.check("watch", True, time.monotonic() - began, self.watched)

    def _tell_inconclusive(self) -> None:
        """Queries Prometheus could not answer in the window counted neither way: the
        incident channel is told, since nobody else watches what the window could not."""
        unread = self.queries.inconclusive() if self.queries else []
        if not unread:
            return
        request = self.store.get(self.request_id)
        listed = [f"{one.query.name} ({one.problem})" for one in unread]
        message = (
            f"the watch of {request.codename or self.request_id} could not read "
            f"{', '.join(listed)}; they counted neither for nor against the update"
        )
        audit.append(
            self.conn,
            actor=MOLT,
            action="watch_inconclusive",
            request_id=self.request_id,
            detail={"queries": [one.query.name for one in unread], "message": message},
        )
        shown = [one.shown() for one in unread]
        data = {
            "request_id": self.request_id,
            "codename": request.codename,
            "target_name": request.target,
            "message": message,
            "queries": shown,
        }
        events.emit(
            self.conn,
            events.Event(
                self.request_id, "incident_inconclusive", "inconclusive", data=data, at=time.time()
            ),
        )

    def _recovering(self, exc: UpdateFailed) -> bool:
        """A watch that fails on Molt's own rollback for an incident does not undo the
        recovery (that would bring back the suspect): the circuit breaker turns automatic
        actions off for the target instead, and a person decides."""
        request = self.store.get(self.request_id)
        if exc.phase != "watch" or not raised_by_molt(request.origin):
            return False
        why = f"the watch of Molt's own rollback {request.codename} saw: {exc.reason}"
        IncidentBook(self.settings, self.conn).trip_breaker(why)
        self.watched = f"{why}; automatic actions are off for this target until `resume`"
        return True

    def _succeed(self, plan: Plan, test_seconds: float, changed: int) -> None:
        total = self.trail.elapsed
        self.target.durations.add(total)
        result = {
            "checks": self.trail.checks,
            "total_seconds": round(total, 3),
            "test_seconds": round(test_seconds, 3),
            "changed_files": len(plan.files) if plan.kind != "change" else changed,
            "from_commit": plan.base_commit,
            "to_commit": plan.target_commit,
            "release": self.release.release if self.release else None,
            "flaky": self.flaky,
            "watch": self.watched,
            "metrics": self.queries.shown() if self.queries else [],
            "proof": self.proof,
        }
        message = f"{plan.target_commit[:7]} is live and healthy"
        if self.release is not None:
            metrics.release_live(self.settings.target_name, self.release.release)
            message += f" as signed release {self.release.release}"
        if self.watched:
            message += f"; {self.watched}"
        if plan.kind == "change":
            parts = (f"{message}.", *self.notes, model_use(self.conn, self.request_id, result))
            message = " ".join(part for part in parts if part)
        self.store.transition(
            self.request_id,
            S.SUCCEEDED,
            actor=MOLT,
            message=message,
            phase="done",
            fields={"result": result},
            data={"checks": self.trail.checks, "total_seconds": result["total_seconds"]},
        )
