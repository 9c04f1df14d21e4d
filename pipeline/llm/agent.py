"""The implementer: Claude writes an approved change plan in the sandbox worktree.

It has the sandbox's file tools and the test command (``tools.SandboxFiles``), nothing else,
and hard limits: MOLT_LLM_MAX_TURNS model calls, MOLT_LLM_MAX_TOKENS tokens and
MOLT_LLM_TIMEOUT seconds (both kept by ``Claude``). Every tool call is written, redacted, to
the update's implement.log. What it leaves behind is checked by ``scope`` and ``review``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import structlog

from pipeline.config import Settings
from pipeline.git import Git
from pipeline.llm import prompts, repomap
from pipeline.llm.client import Claude, Reply
from pipeline.llm.scope import protected_allowed
from pipeline.llm.tools import SandboxFiles
from pipeline.llm.turns import Done, converse, text, tool, tool_result
from pipeline.planning.imports import ImportGraph
from pipeline.planning.plans import Plan
from pipeline.redaction import redact
from pipeline.requests.store import Request
from pipeline.sandbox.confinement import Confinement

log = structlog.get_logger(__name__)

AGENT_OUTPUT = 16_000
MAX_SUMMARY = 500

FINISH = tool(
    "finish",
    "Say the change is complete (the tests pass), with a short summary.",
    {"summary": {"type": "string", "maxLength": MAX_SUMMARY}},
    ["summary"],
)


@dataclass
class Implemented:
    summary: str
    turns: int
    tool_calls: int
    refused: int
    files: SandboxFiles


def implement(
    settings: Settings,
    claude: Claude,
    root: Path,
    plan: Plan,
    request: Request,
    graph: ImportGraph,
    *,
    log_path: Path,
    guard: Callable[[], None] = lambda: None,
    refused: str = "",
) -> Implemented:
    """Run the implementer in ``root`` (checked out at the plan's base commit).
    ``refused``: why Molt refused its last attempt (a Fix it whose test did not reproduce
    the incident), told as Molt's own instruction, with the test output fenced."""
    if claude.deadline is None:
        claude.deadline = time.monotonic() + settings.llm_timeout
    files = SandboxFiles(
        root=root,
        planned=frozenset(f["path"] for f in plan.files),
        protected_ok=protected_allowed(plan),
        allow_unplanned=plan.allow_unplanned,
        test_command=settings.test_command,
        test_timeout=settings.phase_timeout,
        deadline=claude.deadline,
        log_path=log_path.with_name("implement-tests.log"),
        confinement=Confinement.of(settings),
    )
    tools = [*files.tools, FINISH]
    budget = max(
        500,
        settings.llm_prompt_budget
        - repomap.estimate_tokens(prompts.IMPLEMENTER + json.dumps(tools))
        - prompts.REQUEST_RESERVE,
    )
    drawn = repomap.build(Git(root), plan.base_commit, graph, budget)
    intro = (
        "Write this approved change. The approved plan and the original request follow. "
        "When the tests pass, call finish."
    )
    body = "\n\n".join(
        [
            intro,
            prompts.fence("approved plan", prompts.describe_plan(plan.to_dict())),
            prompts.request_blocks(request.text, request.answers),
            *([prompts.incident_block(request.incident)] if request.incident else []),
            *([_again(refused)] if refused else []),
        ]
    )
    with open(log_path, "a", encoding="utf-8") as trail:
        work = _Work(files, trail, tuple(settings.secrets()))
        return converse(
            claude,
            system=prompts.with_map(prompts.IMPLEMENTER, drawn.text),
            messages=[{"role": "user", "content": [text(body)]}],
            tools=tools,
            tool_choice={"type": "auto"},
            max_output=AGENT_OUTPUT,
            limit=settings.llm_max_turns,
            respond=work.respond,
            what="implementation",
            setting="MOLT_LLM_MAX_TURNS",
            before=guard,
        )


def _again(refused: str) -> str:
    """Molt's instruction after it refused a fix: outside the fence, as it is Molt's; what
    the test run printed inside it, as it is not."""
    return (
        "Molt ran your tests on the current code and on your change, and refused the change. "
        "Add or change a test that reproduces the incident: it must fail on the current code "
        "with the incident's error and pass with the fix. Why it was refused:\n"
        + prompts.fence("refusal", refused)
    )


@dataclass
class _Work:
    """The implementer's side of the conversation: it runs the tools and counts the calls."""

    files: SandboxFiles
    trail: TextIO  # implement.log
    known: tuple[str, ...]  # secrets to redact
    calls: int = 0
    refused: int = 0

    def respond(self, turn: int, reply: Reply) -> Done[Implemented] | list[dict[str, Any]]:
        uses = reply.tool_uses()
        if not uses:
            if reply.stop_reason == "max_tokens":
                return [text("Your answer was cut at the output limit: work in smaller steps.")]
            return self._done(turn, redact(reply.text()[:MAX_SUMMARY], self.known) or "done")
        results: list[dict[str, Any]] = []
        finished: str | None = None
        for use in uses:
            if use["name"] == "finish":
                given = use["input"].get("summary")
                finished = " ".join(str(given or "done").split())[:MAX_SUMMARY]
                results.append(tool_result(use, "finished"))
                continue
            outcome = self.files.call(use["name"], use["input"])
            self.calls += 1
            self.refused += outcome.is_error
            _log_call(self.trail, turn, use, outcome.content, outcome.is_error, self.known)
            results.append(tool_result(use, outcome.content, error=outcome.is_error))
        if finished is not None:
            return self._done(turn, redact(finished, self.known))
        return results

    def _done(self, turn: int, summary: str) -> Done[Implemented]:
        return Done(Implemented(summary, turn, self.calls, self.refused, self.files))


def _log_call(
    trail: Any, turn: int, use: dict[str, Any], content: str, error: bool, known: tuple[str, ...]
) -> None:
    given = use["input"] if isinstance(use["input"], dict) else {}
    shown = {
        k: (v if len(str(v)) <= 200 else f"<{len(str(v))} characters>") for k, v in given.items()
    }
    entry = {
        "turn": turn,
        "tool": use["name"],
        "input": shown,
        "refused" if error else "result": content[:300],
    }
    line = redact(json.dumps(entry, ensure_ascii=False), known)
    trail.write(line + "\n")
    trail.flush()
    log.info(
        "tool call", tool=use["name"], turn=turn, refused=error, path=str(given.get("path", ""))
    )
