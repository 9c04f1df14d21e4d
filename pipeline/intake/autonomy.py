"""How much Molt does without a person, and the limits around it.

MOLT_AUTONOMY:
  observe   plans are made and shown; nothing can be approved, nothing runs
  assisted  every plan needs an approver (the default)
  semi      phase 1 runs in a sandbox before approval, so the plan shows its results;
            applying still needs an approver and still runs both phases
  auto      Molt approves low-risk plans itself (actor ``molt:auto``); others need a person

Limits and switches, each checked at intake (the request ends blocked), at approval (the
click is refused, the plan stays) and when an update is about to start (it ends failed):
MOLT_MAX_CHANGES_PER_DAY, MOLT_ALLOW_DEPLOYS, MOLT_ALLOW_CHANGES, MOLT_ALLOW_GITHUB.
Each answers with a Decision (pipeline/requests/decisions.py) whose check is "observe", "switch",
"daily limit" or "tests". A rollback (a request of command ``rollback``,
pipeline/intake/control.py; operators only) is exempt from the deploy switch and the daily
limit: it returns to a release that ran before. The rollback of a rollout's step
(pipeline/update/rollouts.py) is exempt from every one of them, observe mode included.
MOLT_REQUIRE_TESTS is checked at pre-flight here and in every validation phase
(pipeline/sandbox/validation.py).

Updates that began are counted in the target's ``started`` key (pipeline/keyspace.py).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import redis

from pipeline.config import SANDBOX_AUTO, Settings
from pipeline.git import Git
from pipeline.intake import preflight
from pipeline.keyspace import TargetKeys
from pipeline.planning.plans import Plan
from pipeline.queue.targets import Target
from pipeline.requests import steps
from pipeline.requests.authorisation import raised_by_molt
from pipeline.requests.decisions import ALLOWED, Decision
from pipeline.requests.store import Request
from pipeline.sandbox import validation
from pipeline.sandbox.confinement import Confinement
from pipeline.service.snapshots import Sandbox

#: Who approves a plan when MOLT_AUTONOMY=auto does it.
AUTO_APPROVER = "molt:auto"
DAY_SECONDS = 86400


def switched_on(settings: Settings, request: Request) -> Decision:
    """Whether this kind of request is taken here; a refusal names the setting."""
    if request.origin.platform == "github" and not settings.allow_github:
        return _switch("requests from GitHub are switched off here (MOLT_ALLOW_GITHUB=false)")
    if request.command == "deploy" and not settings.allow_deploys:
        return _switch(
            "deploys are switched off here (MOLT_ALLOW_DEPLOYS=false); "
            "operators can still `rollback`"
        )
    if not request.deploys and not settings.allow_changes:
        return _switch("change requests in words are switched off here (MOLT_ALLOW_CHANGES=false)")
    if not request.deploys and settings.sandbox == SANDBOX_AUTO:
        confinement = Confinement.of(settings)
        if not confinement.sandboxed:
            return _switch(
                "change requests in words are refused here: code the model writes runs only "
                f"in a sandbox, and this host cannot make one ({confinement.why_unsandboxed}). "
                "Install bubblewrap, or set MOLT_SANDBOX=off to run tests unsandboxed; "
                "deploys of a ref still run"
            )
    return ALLOWED


def _switch(reason: str) -> Decision:
    return Decision(False, reason, "switch")


# -- the daily limit ----------------------------------------------------------------------------


def record_start(settings: Settings, conn: redis.Redis, request: Request) -> None:
    """Count an update that is starting, for MOLT_MAX_CHANGES_PER_DAY."""
    key = TargetKeys(settings.target_id).started
    now = time.time()
    conn.zadd(key, {f"{request.id}:{request.attempt}": now})
    conn.zremrangebyscore(key, "-inf", now - DAY_SECONDS)


def started_today(settings: Settings, conn: redis.Redis) -> int:
    """Updates started in the last 24 hours on this target."""
    key = TargetKeys(settings.target_id).started
    return int(conn.zcount(key, time.time() - DAY_SECONDS, "+inf"))


def within_daily_limit(settings: Settings, conn: redis.Redis, request: Request) -> Decision:
    """Whether a further update may start today; a refusal names the setting."""
    limit = settings.max_changes_per_day
    if not limit or request.command == "rollback":
        return ALLOWED
    key = TargetKeys(settings.target_id).started
    since = time.time() - DAY_SECONDS
    started = conn.zrangebyscore(key, since, "+inf", withscores=True)
    if len(started) < limit:
        return ALLOWED
    # The window frees up when the oldest start still counted turns 24 hours old.
    oldest = float(started[len(started) - limit][1])
    free_at = datetime.fromtimestamp(oldest + DAY_SECONDS, UTC).strftime("%Y-%m-%d %H:%M UTC")
    updates = "update" if limit == 1 else "updates"
    return Decision(
        False,
        f"the daily limit is reached (MOLT_MAX_CHANGES_PER_DAY={limit}): {len(started)} "
        f"{updates} started in the last 24 hours; the next may start after {free_at}",
        "daily limit",
    )


# -- gates ----------------------------------------------------------------------------------------


def may_act(settings: Settings) -> Decision:
    """Whether anything may run at all: not in observe mode."""
    if settings.autonomy == "observe":
        return Decision(
            False,
            "Molt is in observe mode (MOLT_AUTONOMY=observe): plans are shown, nothing runs",
            "observe",
        )
    return ALLOWED


def limits_allow(settings: Settings, conn: redis.Redis, request: Request) -> Decision:
    """Whether a plan may be approved now (by anyone): the mode, the switches, the limit.
    The rollback of a rollout's step is never held by them."""
    if steps.rolls_back_a_step(conn, request):
        return ALLOWED
    return (
        may_act(settings)
        and switched_on(settings, request)
        and within_daily_limit(settings, conn, request)
    )


def may_start(settings: Settings, conn: redis.Redis, request: Request) -> Decision:
    """Whether an approved update may start (settings may have changed since approval)."""
    return limits_allow(settings, conn, request)


def tests_countable(settings: Settings, conn: redis.Redis) -> Decision:
    """MOLT_REQUIRE_TESTS at pre-flight: the target's tests at its current commit must have
    reported at least one passing test that can be counted (pre-flight ran them)."""
    if not settings.require_tests:
        return ALLOWED
    commit = Git(settings.target_dir).head()
    record = Target(settings, conn).tests.at(commit)
    if record is None or not record.passed or record.count:
        return ALLOWED
    return Decision(
        False,
        f"{validation.no_countable_tests(settings.test_command)} (at {commit[:7]}): "
        "make the test command report its tests, or set MOLT_REQUIRE_TESTS=false",
        "tests",
    )


def recovers_itself(settings: Settings, request: Request) -> bool:
    """MOLT_AUTONOMY=auto approves the rollback Molt raised for an incident, whatever its
    risk: returning to the release before the suspect is the recovery
    (pipeline/incidents/oncall.py)."""
    recovery = request.command == "rollback" and raised_by_molt(request.origin)
    return settings.autonomy == "auto" and recovery


def approves_itself(settings: Settings, plan: dict[str, Any]) -> bool:
    """MOLT_AUTONOMY=auto approves low-risk plans; everything else waits for a person."""
    return settings.autonomy == "auto" and plan.get("risk", {}).get("level") == "low"


# -- semi: phase 1 before approval ------------------------------------------------------------


def phase_one_before_approval(
    settings: Settings, conn: redis.Redis, request_id: str, plan: Plan
) -> dict[str, Any]:
    """Run a deploy's phase 1 now, so the approver sees its result (MOLT_AUTONOMY=semi).

    It runs in the caller's thread like pre-flight's test run, in pre-flight's worktree
    (so it never waits for an update that holds the update sandbox), and changes nothing
    live. The same phase runs again after approval: this one only informs.
    """
    baseline = preflight.tests_at(settings, conn, plan.base_commit)
    changed = [f["path"] for f in plan.files if f.get("status") != "D"]
    logs = settings.data_dir / "plans"
    logs.mkdir(parents=True, exist_ok=True)
    sandbox = Sandbox(Git(settings.target_dir), settings.worktrees_dir / "preflight")
    with sandbox.locked():
        path = sandbox.checkout(plan.target_commit)
        result = validation.run_phase(
            "phase 1",
            path,
            validation.PhaseSpec.from_settings(
                settings, Target(settings, conn).tests.limit(settings.phase_timeout)
            ),
            changed_files=changed,
            baseline_passed=baseline.count if baseline.passed else None,
            log_path=logs / f"{request_id}-phase1.log",
        )
    return result.to_dict() | {
        "ok": result.ok,
        "reason": result.reason,
        "commit": plan.target_commit,
        "seconds": round(result.test_seconds, 3),
        "log": str(logs / f"{request_id}-phase1.log"),
    }
