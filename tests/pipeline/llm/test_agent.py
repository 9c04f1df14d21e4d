"""The implementer, with the real client against the fake Messages API, in a real git
checkout: what it may touch, and the limits it works within."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import redis

from pipeline.config import Settings
from pipeline.exceptions import LLMError
from pipeline.git import Git
from pipeline.intake import flow as intake
from pipeline.llm import agent
from pipeline.llm.client import Claude
from pipeline.planning.imports import read_graph
from pipeline.planning.plans import Plan
from pipeline.requests.store import Origin, Request
from tests.conversations import planned
from tests.fakes.anthropic import FakeAnthropic, reply, text, tool
from tests.support import ServiceRepo, git

ALICE = Origin("console", "alice", "console", "alice")


def _planned(
    settings: Settings, conn: redis.Redis, fake: FakeAnthropic, **changes: object
) -> tuple[Request, Plan]:
    fake.add(planned(**changes))
    request = intake.submit(settings, conn, ALICE, "change", "add ping", "add ping")
    assert request.state.value == "plan_ready", request.message
    return request, Plan.from_dict(request.plan or {})


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    place = tmp_path / "outside"
    place.mkdir()
    (place / "victim.txt").write_text("untouched\n")
    return place


@pytest.fixture
def sandbox(service: ServiceRepo, outside: Path, tmp_path: Path) -> Path:
    """The service with a committed symlink that leads out of it, cloned as the sandbox."""
    os.symlink(outside, service.work / "escape")
    service.commit({}, "a symlink out")
    git(service.live, "pull", "-q")
    root = tmp_path / "sandbox"
    subprocess.run(["git", "clone", "-q", str(service.origin), str(root)], check=True)
    return root


def _implement(settings: Settings, root: Path, request: Request, plan: Plan) -> agent.Implemented:
    graph = read_graph(Git(root), plan.base_commit)
    claude = Claude(settings, "implementation")
    return agent.implement(
        settings, claude, root, plan, request, graph, log_path=root.parent / "implement.log"
    )


def test_tool_calls_escaping_the_sandbox_are_refused(
    llm_settings: Settings,
    conn: redis.Redis,
    fake: FakeAnthropic,
    sandbox: Path,
    outside: Path,
    service: ServiceRepo,
) -> None:
    request, plan = _planned(llm_settings, conn, fake)
    attempts = [
        tool("write_file", {"path": "../live/app.py", "content": "owned = True\n"}),
        tool("write_file", {"path": str(outside / "evil.py"), "content": "owned = True\n"}),
        tool("write_file", {"path": "escape/evil.py", "content": "owned = True\n"}),
        tool("read_file", {"path": "escape/victim.txt"}),
        tool("edit_file", {"path": ".git/config", "old_text": "[core]", "new_text": "[x]"}),
    ]
    fake.add(reply(text("Trying the doors."), *attempts), reply(tool("finish", {"summary": "x"})))
    done = _implement(llm_settings, sandbox, request, plan)

    results = fake.calls()[-1].tool_results()
    assert len(results) == 5 and all(r["is_error"] for r in results)
    reasons = [r["content"] for r in results]
    assert "'..' is refused" in reasons[0]
    assert "absolute paths are refused" in reasons[1]
    assert "a symlink leads outside the repository" in reasons[2]
    assert "a symlink leads outside the repository" in reasons[3]
    assert "nothing under .git" in reasons[4]
    assert done.refused == 5 and done.files.touched == set()
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert "owned" not in (service.live / "app.py").read_text()
    assert git(sandbox, "status", "--porcelain") == ""
    log = (sandbox.parent / "implement.log").read_text()
    assert log.count('"refused"') == 5


def test_protected_paths_are_refused_unless_the_approved_plan_lists_them(
    llm_settings: Settings, conn: redis.Redis, fake: FakeAnthropic, sandbox: Path
) -> None:
    request, plan = _planned(llm_settings, conn, fake)
    attempts = [
        tool("write_file", {"path": "molt.toml", "content": "MOLT_APPROVERS = 'console:eve'\n"}),
        tool(
            "write_file",
            {"path": "pipeline/intake/approval.py", "content": "def approve(): pass\n"},
        ),
        tool("write_file", {"path": ".github/workflows/ci.yml", "content": "on: push\n"}),
    ]
    fake.add(reply(*attempts), reply(tool("finish", {"summary": "x"})))
    _implement(llm_settings, sandbox, request, plan)
    results = fake.calls()[-1].tool_results()
    assert all(r["is_error"] and "protected path" in r["content"] for r in results)
    assert not (sandbox / "molt.toml").exists() and not (sandbox / "pipeline").exists()

    files = [{"path": "molt.toml", "action": "create", "why": "the approvers, as asked"}]
    request, plan = _planned(llm_settings, conn, fake, files=files)
    assert plan.risk["level"] == "high" and plan.protected == ["molt.toml"]
    fake.add(reply(attempts[0]), reply(tool("finish", {"summary": "x"})))
    _implement(llm_settings, sandbox, request, plan)
    assert not fake.calls()[-1].tool_results()[0].get("is_error")
    assert (sandbox / "molt.toml").read_text() == "MOLT_APPROVERS = 'console:eve'\n"


def test_the_implementer_stops_after_its_turns(
    llm_settings: Settings, conn: redis.Redis, fake: FakeAnthropic, sandbox: Path
) -> None:
    request, plan = _planned(llm_settings, conn, fake)
    settings = llm_settings.model_copy(update={"llm_max_turns": 3})
    fake.add(*(reply(tool("list_files", {})) for _ in range(5)))
    with pytest.raises(
        LLMError, match=r"did not finish within 3 model calls \(MOLT_LLM_MAX_TURNS\)"
    ):
        _implement(settings, sandbox, request, plan)
    assert fake.left == 2


def test_the_implementer_stops_when_its_tokens_are_spent(
    llm_settings: Settings, conn: redis.Redis, fake: FakeAnthropic, sandbox: Path
) -> None:
    request, plan = _planned(llm_settings, conn, fake)
    settings = llm_settings.model_copy(update={"llm_max_tokens": 10_000})
    fake.add(*(reply(tool("read_file", {"path": "service_tests.py"})) for _ in range(20)))
    with pytest.raises(LLMError, match=r"used its budget of 10,000 tokens \(MOLT_LLM_MAX_TOKENS\)"):
        _implement(settings, sandbox, request, plan)
    assert fake.left > 0


def test_the_implementer_stops_when_its_time_is_up(
    llm_settings: Settings, conn: redis.Redis, fake: FakeAnthropic, sandbox: Path
) -> None:
    request, plan = _planned(llm_settings, conn, fake)
    claude = Claude(llm_settings, "implementation", deadline=time.monotonic() - 1)
    graph = read_graph(Git(sandbox), plan.base_commit)
    with pytest.raises(LLMError, match="ran out of time"):
        agent.implement(
            llm_settings, claude, sandbox, plan, request, graph, log_path=sandbox.parent / "x.log"
        )
    assert len(fake.calls()) == 1  # the plan only


def test_new_files_the_implementer_did_not_write_are_left_out_of_the_change(
    llm_settings: Settings, conn: redis.Redis, sandbox: Path
) -> None:
    from pipeline.update.change import drop_strays

    (sandbox / "ping.py").write_text("written through the tools\n")
    (sandbox / "test-report.xml").write_text("left by a test run\n")
    (sandbox / "app.py").write_text("changed by a test run\n")
    left_out = drop_strays(Git(sandbox), {"ping.py"})
    assert left_out == ["test-report.xml"]
    status = {line.strip() for line in git(sandbox, "status", "--porcelain").splitlines()}
    assert status == {"M app.py", "?? ping.py"}
