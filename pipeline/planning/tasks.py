"""The tasks a plan lists: the worker's steps, each with what must hold before the next one
starts and what happens if it fails, and the criteria an approver reads as "it worked".

A deploy runs Molt's steps only; a change in words puts the planner's tasks (written by the
implementer, checked by scope and review) between the sandbox and phase 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.config import Settings


def rollback_to(short_base: str, branch: str) -> str:
    """The rollback point as a person reads it: "a1b2c3d on main" or "a1b2c3d (detached)"."""
    return f"{short_base} on {branch}" if branch else f"{short_base} (detached)"


def rollback_points(rollback_point: str) -> list[str]:
    """Where a change in words can be undone, before and after it reaches the live checkout."""
    return [
        f"until the change is applied: the sandbox is discarded; live stays at {rollback_point}",
        f"after it is applied: the live checkout returns to the snapshot {rollback_point}, "
        "and the service is restarted again if it had been",
    ]


def success_criteria(
    files: list[dict[str, Any]], last_run: dict[str, float], short_target: str
) -> list[str]:
    criteria = ["tests pass in the sandbox (phase 1) and on the live checkout (phase 2)"]
    if "count" in last_run:
        criteria.append(f"passing tests do not drop below {int(last_run['count'])}")
    if any(f["path"].endswith(".py") and f["status"] != "D" for f in files):
        criteria.append("all changed Python files byte-compile")
    criteria.append(f"the service restarts and its health check passes on {short_target}")
    return criteria


def deploy_tasks(
    settings: Settings,
    short_base: str,
    short_target: str,
    rollback_point: str,
    baseline: int | None = None,
) -> list[dict[str, Any]]:
    """The worker's steps, each with what must hold before the next one starts."""
    passing = "tests pass" if baseline is None else f"tests pass ({baseline} or more passing)"
    validated = f"{passing} and every changed Python file compiles"
    back = f"roll back to the snapshot ({rollback_point})"
    untouched = "discard the sandbox; the live checkout was not touched"
    steps = [
        (
            "prepare sandbox",
            f"check out {short_target} in the sandbox worktree",
            f"the sandbox is at {short_target} and clean",
            untouched,
        ),
        (
            "phase 1 validation",
            f"run {settings.test_command!r} and byte-compile changed files in the sandbox",
            validated,
            untouched,
        ),
        (
            "snapshot",
            f"once the tests at {short_base} are known to pass, record {rollback_point} as "
            "the point to return to",
            f"the snapshot of {short_base} is saved",
            untouched,
        ),
        (
            "apply to live",
            f"move the live checkout to {short_target}",
            f"the live checkout is at {short_target} and clean",
            back,
        ),
        (
            "phase 2 validation",
            f"run {settings.test_command!r} and byte-compile changed files on the live checkout",
            validated,
            back,
        ),
        (
            "restart",
            f"run {settings.restart_command!r}"
            if settings.restart_command
            else "restart the service",
            "the service is running again",
            back,
        ),
        (
            "verify",
            "health check: the new version reports healthy",
            f"{short_target} is live and healthy",
            back,
        ),
    ]
    if settings.watch_seconds > 0:
        window = f"{settings.watch_seconds:g} s"
        steps.append(
            (
                "watch",
                f"probe its health every {settings.watch_interval:g} s for {window} and watch "
                "for incidents",
                f"{short_target} stayed healthy for {window}",
                back,
            )
        )
    return [
        {"step": n, "name": name, "detail": detail, "checkpoint": checkpoint, "on_failure": fail}
        for n, (name, detail, checkpoint, fail) in enumerate(steps, start=1)
    ]


@dataclass
class _Steps:
    """Steps numbered in the order they are added; ``after`` names earlier step numbers."""

    listed: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        name: str,
        role: str,
        detail: str,
        checkpoint: str,
        on_failure: str,
        after: list[int] | None = None,
    ) -> int:
        step = len(self.listed) + 1
        self.listed.append(
            {
                "step": step,
                "name": name,
                "role": role,
                "detail": detail,
                "checkpoint": checkpoint,
                "on_failure": on_failure,
                "after": after or [],
            }
        )
        return step


def change_tasks(
    settings: Settings,
    short_base: str,
    rollback_point: str,
    planned: list[dict[str, Any]],
    baseline: int | None,
    reproduce: str = "",
) -> list[dict[str, Any]]:
    """The planner's tasks between Molt's own steps, numbered in order, each with its role;
    ``reproduce``, for a fix of an incident, what its reproduce step runs."""
    untouched = "discard the sandbox; the live checkout was not touched"
    steps = _Steps()
    add = steps.add
    add(
        "plan",
        "planner",
        f"this plan, from the request and the repository at {short_base}",
        "an approver approves it",
        "nothing changes",
    )
    sandbox = add(
        "prepare sandbox",
        "checks",
        f"check out {short_base} in the sandbox worktree",
        f"the sandbox is at {short_base} and clean",
        untouched,
    )
    numbers: dict[int, int] = {}
    for task in planned:
        after = [numbers[i] for i in task["depends_on"] if i in numbers] or [sandbox]
        numbers[task["id"]] = add(
            task["name"], task["role"], task["detail"], task["checkpoint"], untouched, after
        )
    written = list(numbers.values()) or [sandbox]
    if reproduce:
        written = [
            add(
                "reproduce",
                "checks",
                reproduce,
                "the tests fail on the base as production did, and pass on the change",
                untouched,
                written,
            )
        ]
    scope = add(
        "scope check",
        "checks",
        "every changed file is in this plan; protected paths only as approved",
        "no unapproved file or protected path changed",
        untouched,
        written,
    )
    add(
        "review",
        "reviewer",
        "a second model call reads the diff against this plan",
        "the reviewer approves the change",
        untouched,
        [scope],
    )
    for task in deploy_tasks(settings, short_base, "the change", rollback_point, baseline)[1:]:
        add(task["name"], "checks", task["detail"], task["checkpoint"], task["on_failure"])
    return steps.listed
