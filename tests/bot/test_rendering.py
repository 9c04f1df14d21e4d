"""What people see: every template renders, plans show what an approver needs, and
refusals are themed and stable."""

from __future__ import annotations

from typing import Any

import pytest

from bot.rendering import duration, refusal_line, render, short, template_names, themes
from pipeline.config import TEMPLATES_DIR

EXPECTED_TEMPLATES = {
    "processing",
    "planning",
    "needs_info",
    "plan_ready",
    "queued",
    "starting",
    "working",
    "restarting",
    "success",
    "failure",
    "refused",
    "blocked",
    "rejected",
    "expired",
    "cancelled",
    "help",
    "status",
    "queue",
    "history",
    "not_allowed",
    "not_done",
}
PRIVATE = {"refused", "not_allowed", "not_done", "help", "status", "queue", "history"}

CHECKS = [
    {"name": "unit tests", "ok": True, "seconds": 42.3, "detail": ""},
    {"name": "boot check", "ok": False, "seconds": 0.85, "detail": "/healthz answered 500"},
]


def full_plan() -> dict[str, Any]:
    return {
        "kind": "deploy",
        "ref": "v1.4",
        "target_commit": "abcdef1234567890abcdef1234567890abcdef12",
        "base_commit": "1234567890abcdef1234567890abcdef12345678",
        "base_branch": "main",
        "summary": "Deploy v1.4 onto main: 7 commits, 12 files",
        "commits": [
            {"sha": f"{i:040x}", "short": f"c0ffee{i}", "subject": f"Subject {i}", "author": "ana"}
            for i in range(7)
        ],
        "diffstat": {"files": 12, "insertions": 340, "deletions": 25},
        "files": [
            {
                "path": "pipeline/planning/deploys.py",
                "status": "M",
                "insertions": 30,
                "deletions": 4,
            },
        ],
        "components": [f"component-{i}" for i in range(10)],
        "risk": {
            "level": "medium",
            "reasons": ["touches the planner", "adds a dependency"],
        },
        "protected": [],
        "test_command": "python -m pytest -q",
        "rollback_point": "1234567 on main",
        "estimated_seconds": 245.0,
        "estimate_basis": "median of the last 5 deploys",
        "success_criteria": ["all tests pass", "/healthz answers within 60 s"],
        # Out of order on purpose: people read the steps in step order.
        "tasks": [
            {"step": 2, "name": "Test in sandbox", "detail": "run tests", "checkpoint": "green"},
            {"step": 1, "name": "Take snapshot", "detail": "record HEAD", "checkpoint": "saved"},
            {"step": 3, "name": "Apply to live", "detail": "fast-forward", "checkpoint": "applied"},
        ],
        "downgrade": False,
    }


def full_context() -> dict[str, Any]:
    return {
        "request_id": "r1",
        "codename": "brave-lobster",
        "requester": "ana",
        "requester_id": "slack:U1",
        "platform": "slack",
        "text": "please bump the redis client",
        "command": "deploy",
        "argument": "v1.4",
        "state": "failed",
        "phase": "phase_two",
        "message": "unit tests failed: 3 failures",
        "attempt": 2,
        "update_dir": "/srv/molt/updates/r1",
        "approver": "bo",
        "refusal_line": "My shell is soft today.",
        "reason": "Only approvers may approve.",
        "position": 3,
        "ahead": 2,
        "phase_index": 4,
        "phase_total": 7,
        "elapsed": 65.2,
        "checks": CHECKS,
        "total_seconds": 312.4,
        "rolled_back_to": "1234567",
        "log_dir": "/srv/molt/updates/r1/logs",
        "questions": ["Which environment?", "Which branch?"],
        "expires_in": 3540.0,
        "help_lines": ["`deploy <ref>`: plan a deploy"],
        "paused": True,
        "current": {"request_id": "r0", "codename": "calm-crab", "state": "running"},
        "requests": [
            {
                "request_id": "r2",
                "codename": "shy-shrimp",
                "state": "queued",
                "phase": "",
                "requester": "cy",
                "argument": "main",
                "message": "",
                "updated_at": 1_700_000_000.0,
            }
        ],
        "entries": [
            {
                "seq": 1,
                "at": 1_700_000_000.0,
                "actor": "slack:U2",
                "action": "approve",
                "request_id": "r1",
                "detail": {},
            }
        ],
        "plan": full_plan(),
        "result": {
            "checks": CHECKS,
            "total_seconds": 312.4,
            "test_seconds": 42.3,
            "changed_files": 12,
            "from_commit": "1234567890abcdef",
            "to_commit": "abcdef1234567890",
        },
    }


def test_every_message_a_person_can_see_has_a_template() -> None:
    assert set(template_names()) >= EXPECTED_TEMPLATES


@pytest.mark.parametrize("name", template_names())
def test_template_renders_with_only_a_request_id(name: str) -> None:
    """Events carry only what a step knew; a missing key must never break a message."""
    message = render(name, {"request_id": "r1"})
    assert message.title.strip()
    assert "\n" not in message.title
    assert message.template == name
    assert message.request_id == "r1"
    assert all(field.value for field in message.fields)


@pytest.mark.parametrize("name", template_names())
def test_template_renders_with_every_key(name: str) -> None:
    message = render(name, full_context())
    assert message.title.strip()
    assert message.codename == "brave-lobster"
    assert message.text == message.text.strip()
    assert "\n\n\n" not in message.text


@pytest.mark.parametrize("name", sorted(EXPECTED_TEMPLATES))
def test_only_answers_to_one_person_are_private(name: str) -> None:
    assert render(name, {"request_id": "r1"}).private is (name in PRIVATE)


def test_plan_ready_shows_what_an_approver_needs() -> None:
    message = render("plan_ready", full_context())
    shown = message.plain()
    fields = {f.name: f.value for f in message.fields}

    assert "brave-lobster" in message.title
    assert "Deploy v1.4 onto main: 7 commits, 12 files" in message.text
    assert "MEDIUM" in fields["Risk"]
    assert "touches the planner" in fields["Risk"]
    assert "adds a dependency" in fields["Risk"]
    assert "Subject 4" in fields["Commits"]
    assert "Subject 5" not in fields["Commits"]
    assert "and 2 more" in fields["Commits"]
    assert "12 files, +340 -25" in fields["Files"]
    assert "pipeline/planning/deploys.py" in fields["Files"]
    assert "component-7" in fields["Components"]
    assert "component-8" not in fields["Components"]
    assert "and 2 more" in fields["Components"]
    assert "python -m pytest -q" in fields["Tests"]
    assert fields["Rollback point"] == "1234567 on main"
    assert "4 min 5 s" in fields["Estimated duration"]
    assert "all tests pass" in message.text
    assert "expires in 59 min" in shown


def test_plan_ready_lists_tasks_in_step_order_with_checkpoints() -> None:
    text = render("plan_ready", full_context()).text
    first = text.index("1. Take snapshot")
    second = text.index("2. Test in sandbox")
    third = text.index("3. Apply to live")
    assert first < second < third
    assert "checkpoint: saved" in text
    assert "checkpoint: applied" in text


def test_plan_ready_buttons_carry_the_request_id() -> None:
    buttons = render("plan_ready", full_context()).buttons
    assert [(b.label, b.action, b.style, b.value) for b in buttons] == [
        ("Approve", "approve", "primary", "r1"),
        ("Reject", "reject", "danger", "r1"),
        ("Request changes", "revise", "", "r1"),
    ]


def test_failure_says_why_where_the_logs_are_and_offers_retry() -> None:
    message = render("failure", full_context())
    assert "unit tests failed: 3 failures" in message.text
    assert "/srv/molt/updates/r1/logs" in message.text
    assert "phase two" in message.text
    assert "returned to its snapshot `1234567`" in message.text
    assert "/healthz answered 500" in message.text
    assert [(b.label, b.action, b.value) for b in message.buttons] == [("Retry", "retry", "r1")]


def test_blocked_offers_retry() -> None:
    message = render("blocked", {"request_id": "r9", "message": "the working tree is dirty"})
    assert "the working tree is dirty" in message.text
    assert [(b.action, b.value) for b in message.buttons] == [("retry", "r9")]


def test_success_shows_what_changed_each_check_and_the_total() -> None:
    message = render("success", full_context())
    fields = {f.name: f.value for f in message.fields}
    assert "`1234567` → `abcdef1`" in fields["Changed"]
    assert "12 files" in fields["Changed"]
    assert "unit tests — 42.3 s" in fields["Checks"]
    assert "boot check — 850 ms" in fields["Checks"]
    assert fields["Total time"] == "5 min 12 s"


@pytest.mark.parametrize("name", ["processing", "planning", "success"])
def test_a_rollback_reads_as_the_rollback_of_its_update_not_a_deploy(name: str) -> None:
    rollback = full_context() | {
        "command": "rollback",
        "text": "rollback amber-otter",
        "argument": "1234567" * 5,
        "rollback_of": "amber-otter",
    }
    rollback["plan"] = rollback["plan"] | {"summary": "Rollback of amber-otter: back to 1234567"}
    message = render(name, rollback)
    assert "amber-otter" in message.title + message.text and "1234567" in message.text
    assert "Deploy" not in message.title + message.text


def test_queued_shows_the_position() -> None:
    message = render("queued", {"request_id": "r1", "position": 3, "ahead": 2})
    assert "#3" in message.title
    assert "Position *3*" in message.text
    assert "2 updates ahead" in message.text


def test_working_shows_phase_progress_and_elapsed_time() -> None:
    message = render(
        "working",
        {"request_id": "r1", "phase": "apply", "phase_index": 4, "phase_total": 7, "elapsed": 65},
    )
    assert "apply" in message.title
    assert "4 of 7" in message.text
    assert "1 min 5 s" in message.text


def test_a_running_phase_shows_its_time_share_done_and_failures_when_refreshed() -> None:
    context = {"request_id": "r1", "phase": "phase 1", "phase_index": 3, "phase_total": 7}
    assert "Progress" not in [f.name for f in render("working", context).fields]
    progress = {"seconds": 330, "share": 45, "failed": 2}
    fields = {f.name: f.value for f in render("working", context | {"progress": progress}).fields}
    assert fields["Progress"] == (
        "phase 1 running for 5 min 30 s: 45% of tests done, 2 failed so far"
    )
    other_runner = {"progress": {"seconds": 20.0}}
    fields = {f.name: f.value for f in render("working", context | other_runner).fields}
    assert fields["Progress"] == "phase 1 running for 20.0 s"


def test_success_and_history_name_flaky_tests() -> None:
    flaky = "tests/test_a.py::test_sometimes"
    success = render("success", full_context() | {"result": {"flaky": [flaky]}})
    fields = {f.name: f.value for f in success.fields}
    assert fields["Flaky tests"] == f"• `{flaky}` failed, then passed when run again"
    seen = {"name": flaky, "count": 2, "last_at": 0, "codename": "amber-otter", "phase": "phase 2"}
    history = render("history", {"request_id": "", "requests": [], "flaky": [seen]})
    assert f"`{flaky}`: 2 times, last 1970-01-01 00:00 UTC in amber-otter (phase 2)" in (
        history.text
    )


def test_fields_that_render_empty_are_dropped() -> None:
    bare = render("plan_ready", {"request_id": "r1", "plan": {"risk": {"level": "low"}}})
    assert [f.name for f in bare.fields] == ["Risk"]
    assert render("queued", {"request_id": "r1"}).fields == ()


def test_refused_shows_the_themed_line() -> None:
    line = refusal_line("moult", "r1")
    message = render("refused", {"request_id": "r1", "refusal_line": line})
    assert message.text.startswith(line)


def test_not_allowed_shows_the_reason() -> None:
    message = render("not_allowed", {"request_id": "r1", "reason": "Already approved by bo."})
    assert "Already approved by bo." in message.text
    assert message.buttons == ()


def test_unknown_template_raises_key_error_naming_it() -> None:
    with pytest.raises(KeyError, match="no_such_message"):
        render("no_such_message", {"request_id": "r1"})


def test_default_theme_and_starship_exist() -> None:
    assert {"moult", "starship"} <= set(themes())


@pytest.mark.parametrize("theme", themes())
def test_every_theme_has_at_least_ten_distinct_lines(theme: str) -> None:
    lines = (TEMPLATES_DIR / "refusals" / f"{theme}.txt").read_text(encoding="utf-8").splitlines()
    distinct = {line.strip() for line in lines if line.strip()}
    assert len(distinct) >= 10
    assert all("{" not in line for line in distinct)


@pytest.mark.parametrize("theme", themes())
def test_refusal_line_is_stable_for_a_seed_and_varies_across_seeds(theme: str) -> None:
    assert refusal_line(theme, "request-42") == refusal_line(theme, "request-42")
    picked = {refusal_line(theme, f"request-{i}") for i in range(200)}
    assert len(picked) > 1
    assert all(line.strip() for line in picked)


def test_unknown_theme_raises_key_error() -> None:
    with pytest.raises(KeyError, match="no_such_theme"):
        refusal_line("no_such_theme", "r1")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, ""),
        (0.85, "850 ms"),
        (12.34, "12.3 s"),
        (245, "4 min 5 s"),
        (900, "15 min"),
        (3720, "1 h 2 min"),
    ],
)
def test_durations_read_naturally(seconds: float | None, shown: str) -> None:
    assert duration(seconds) == shown


def test_short_sha_is_seven_characters() -> None:
    assert short("abcdef1234567890") == "abcdef1"
    assert short(None) == ""
