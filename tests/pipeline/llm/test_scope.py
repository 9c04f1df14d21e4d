"""What was written, held against what was approved."""

from __future__ import annotations

from typing import Any

from pipeline.llm.scope import check_scope
from pipeline.planning.plans import Plan


def _plan(
    files: list[str], *, risk: str = "low", protected: tuple[str, ...] = (), allow: bool = False
) -> Plan:
    return Plan(
        kind="change",
        ref="",
        target_commit="",
        base_commit="a" * 40,
        base_branch="main",
        summary="s",
        commits=[],
        diffstat={},
        files=[{"path": p, "status": "M", "why": ""} for p in files],
        components=[],
        risk={"level": risk, "reasons": []},
        protected=list(protected),
        test_command="true",
        rollback_point="aaaaaaa on main",
        estimated_seconds=None,
        estimate_basis="",
        success_criteria=[],
        tasks=[],
        downgrade=False,
        allow_unplanned=allow,
    )


def _changed(*paths: str, renamed_from: str = "") -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = [{"path": p, "status": "M"} for p in paths]
    if renamed_from:
        files[0] |= {"status": "R", "old_path": renamed_from}
    return files


def test_planned_files_only_is_clean() -> None:
    scope = check_scope(_plan(["app.py"]), _changed("app.py"))
    assert scope.deviation_ok and scope.protected_ok and scope.unplanned == []


def test_a_file_outside_the_plan_is_a_deviation_unless_allowed() -> None:
    strict = check_scope(_plan(["app.py"]), _changed("app.py", "NOTES.md"))
    assert not strict.deviation_ok
    assert strict.deviation_detail() == "changed outside the approved plan: NOTES.md"
    allowed = check_scope(_plan(["app.py"], allow=True), _changed("app.py", "NOTES.md"))
    assert allowed.deviation_ok and "allowed by it" in allowed.deviation_detail()


def test_moving_a_file_away_touches_its_old_path() -> None:
    scope = check_scope(_plan(["new.py"]), _changed("new.py", renamed_from="app.py"))
    assert scope.unplanned == ["app.py"]


def test_a_protected_path_needs_a_high_risk_plan_that_lists_it() -> None:
    touched = _changed("molt.toml")
    assert check_scope(_plan(["molt.toml"]), touched).protected == ["molt.toml"]
    listed = _plan(["molt.toml"], risk="high", protected=("molt.toml",))
    assert check_scope(listed, touched).protected_ok
    assert check_scope(_plan(["molt.toml"], risk="high"), touched).protected == ["molt.toml"]
