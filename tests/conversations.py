"""Scripted conversations with the model for the change-request tests: plans, questions, the
implementer's tool calls and the reviewer's verdicts, as the fake Messages API replays them."""

from __future__ import annotations

import copy
from typing import Any

from tests.fakes.anthropic import Turn, reply, text, tool

PING = "\n\ndef ping():\n    return 'pong'\n"
PING_TEST = "from app import ping\n\n\ndef test_ping():\n    assert ping() == 'pong'\n"
BROKEN_PING_TEST = "from app import ping\n\n\ndef test_ping():\n    assert ping() == 'PONG'\n"


def ping_plan(**changes: Any) -> dict[str, Any]:
    """What submit_plan gets for "add a ping function that answers pong" on the test service."""
    plan: dict[str, Any] = {
        "summary": "Add ping(), which answers pong",
        "scope": "a new function ping() in app.py and its test; greet() stays as it is",
        "impact": "callers gain ping(); nothing else changes",
        "components": ["app"],
        "files": [
            {"path": "app.py", "action": "modify", "why": "add ping()"},
            {"path": "checks/test_ping.py", "action": "create", "why": "a test for ping()"},
        ],
        "risk": {"level": "low", "reasons": ["one new function and its test"]},
        "tasks": [
            {
                "id": 1,
                "name": "add ping()",
                "detail": "def ping() returning 'pong' in app.py",
                "role": "implementer",
                "depends_on": [],
                "checkpoint": "ping() returns 'pong'",
            },
            {
                "id": 2,
                "name": "test ping()",
                "detail": "checks/test_ping.py asserts ping() == 'pong'",
                "role": "implementer",
                "depends_on": [1],
                "checkpoint": "the new test passes",
            },
        ],
        "validation": ["the new test runs and passes"],
        "rollback_points": ["revert the commit that adds ping()"],
        "effort": {"estimate": "small: one function and one test", "complexity": "low"},
        "prerequisites": ["the tests pass before the change"],
        "constraints": ["do not change greet()"],
        "success_criteria": ["ping() returns 'pong'"],
    }
    plan.update(copy.deepcopy(changes))
    return plan


def fix_plan(handler: str = "app.py") -> dict[str, Any]:
    """What submit_plan gets for a Fix it of handle() dividing by a zero count in
    ``handler``: the guard and a test that reproduces the incident."""
    return {
        "summary": "handle() answers 0 for an empty order",
        "scope": f"handle() in {handler} and a test that reproduces the incident",
        "impact": "an empty order no longer fails",
        "components": [handler.removesuffix(".py").split("/")[0]],
        "files": [
            {"path": handler, "action": "modify", "why": "no division by a zero count"},
            {"path": "checks/test_handlers.py", "action": "create", "why": "reproduces it"},
        ],
        "risk": {"level": "low", "reasons": ["one guarded division"]},
        "tasks": [
            {
                "id": 1,
                "name": "reproduce and fix",
                "detail": "test_zero_count, then guard the division",
                "role": "implementer",
                "depends_on": [],
                "checkpoint": "the test passes",
            }
        ],
        "validation": ["test_zero_count fails before and passes after"],
        "rollback_points": ["revert the commit"],
        "effort": {"estimate": "small", "complexity": "low"},
        "prerequisites": [],
        "constraints": [],
        "success_criteria": ["no ZeroDivisionError for an empty order"],
    }


def planned(**changes: Any) -> Turn:
    return reply(text("Planning."), tool("submit_plan", ping_plan(**changes)))


def implemented(test: str = PING_TEST, *extra: Turn) -> list[Turn]:
    """The implementer reads, writes ping() and its test, runs the tests, then finishes."""
    return [
        reply(tool("read_file", {"path": "app.py"})),
        reply(
            text("Adding ping() and its test."),
            tool(
                "edit_file",
                {
                    "path": "app.py",
                    "old_text": "    return 'hello'\n",
                    "new_text": "    return 'hello'\n" + PING,
                },
            ),
            tool("write_file", {"path": "checks/test_ping.py", "content": test}),
        ),
        *extra,
        reply(tool("run_tests", {})),
        reply(tool("finish", {"summary": "added ping() and its test"})),
    ]


def reviewed(verdict: str = "approve", *reasons: str) -> Turn:
    given = list(reasons) or ["adds ping() and its test, as the plan says"]
    return reply(tool("submit_review", {"verdict": verdict, "reasons": given}))
