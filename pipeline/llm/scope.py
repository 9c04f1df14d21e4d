"""What the implementer changed, held against what was approved.

Deterministic, and run on the committed change in the sandbox, so it also sees files changed
some other way than through the tools (by the test command, say). A protected path changes
only when the approved plan lists it and its risk is high; a file outside the plan is a
deviation: reported always, and failing the update unless the plan allows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.planning.diffs import protected_paths
from pipeline.planning.plans import Plan

MAX_SHOWN = 8


def _first_few(paths: list[str]) -> str:
    shown = ", ".join(paths[:MAX_SHOWN])
    return shown if len(paths) <= MAX_SHOWN else f"{shown} and {len(paths) - MAX_SHOWN} more"


def protected_allowed(plan: Plan) -> frozenset[str]:
    """The protected paths an approved plan may change: those it lists, if its risk is high."""
    if (plan.risk or {}).get("level") != "high":
        return frozenset()
    return frozenset(plan.protected)


@dataclass(frozen=True)
class Scope:
    changed: list[str]  # every path the change touches (old and new names of a rename)
    unplanned: list[str]  # touched but not in the plan's files
    protected: list[str]  # protected paths touched that the plan does not allow
    unplanned_allowed: bool

    @property
    def deviation_ok(self) -> bool:
        return not self.unplanned or self.unplanned_allowed

    @property
    def protected_ok(self) -> bool:
        return not self.protected

    def deviation_detail(self) -> str:
        if not self.unplanned:
            return f"{len(self.changed)} changed, all in the plan"
        if self.unplanned_allowed:
            return f"outside the plan (allowed by it): {_first_few(self.unplanned)}"
        return f"changed outside the approved plan: {_first_few(self.unplanned)}"

    def protected_detail(self) -> str:
        if self.protected:
            return f"protected paths changed without approval: {_first_few(self.protected)}"
        return "no protected path changed without approval"


def check_scope(plan: Plan, files: list[dict[str, Any]]) -> Scope:
    """``files`` as ``diffs.changed_files`` gives them, between the base and the change."""
    changed = sorted(
        {f["path"] for f in files} | {f["old_path"] for f in files if f.get("old_path")}
    )
    planned = {f["path"] for f in plan.files}
    allowed = protected_allowed(plan)
    return Scope(
        changed=changed,
        unplanned=[path for path in changed if path not in planned],
        protected=[path for path in protected_paths(changed) if path not in allowed],
        unplanned_allowed=plan.allow_unplanned,
    )
