"""The change planner: Claude reads a request in words and answers with a plan or questions.

The model sees the instructions, the tools and a map of the repository (the stable prefix,
marked for caching), then the request and everything said about it since, fenced as untrusted.
It may read files through the read tools and must call a tool every turn; it finishes by
calling ``submit_plan`` or ``ask_questions``. What it submits is checked by ``proposal``, and
a plan the checks refuse goes back to the model with the reasons while it has turns left.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from pipeline.config import Settings
from pipeline.exceptions import GitError, LLMError, PlanningError
from pipeline.git import Git
from pipeline.llm import prompts, repomap
from pipeline.llm.client import Claude, Reply
from pipeline.llm.proposal import ASK_QUESTIONS, SUBMIT_PLAN, PlanProblems, build_plan, questions
from pipeline.llm.tools import READ_TOOLS, CommitFiles
from pipeline.llm.turns import Done, converse, text, tool_result
from pipeline.planning.deploys import import_graph
from pipeline.planning.imports import ImportGraph
from pipeline.planning.plans import Plan
from pipeline.requests.store import Request
from pipeline.usage import Usage, record_usage

log = structlog.get_logger(__name__)

PLAN_TURNS = 12
PLAN_OUTPUT = 8_000

TOOLS: list[dict[str, Any]] = [*READ_TOOLS, SUBMIT_PLAN, ASK_QUESTIONS]


@dataclass
class Planned:
    """A plan, or the questions to ask first."""

    plan: Plan | None
    questions: list[str]
    usage: Usage


# -- the prompt ---------------------------------------------------------------------------------


def prefix_tokens() -> int:
    """Estimated tokens of the instructions and tool definitions."""
    return repomap.estimate_tokens(prompts.PLANNER) + repomap.estimate_tokens(json.dumps(TOOLS))


def system_blocks(
    settings: Settings, git: Git, commit: str, graph: ImportGraph
) -> tuple[list[dict[str, Any]], repomap.RepoMap]:
    """Instructions and the repository map: the same for every request on one commit."""
    budget = max(500, settings.llm_prompt_budget - prefix_tokens() - prompts.REQUEST_RESERVE)
    drawn = repomap.build(git, commit, graph, budget)
    return prompts.with_map(prompts.PLANNER, drawn.text), drawn


def request_message(settings: Settings, text: str, follow_ups: list[str]) -> dict[str, Any]:
    intro = (
        "Plan this change request for the repository in the map. Whatever the plan says, "
        f"Molt runs the service's tests (`{settings.test_command}`), byte-compiles changed "
        "Python files, checks that only planned files change and has the diff reviewed."
    )
    body = f"{intro}\n\n{prompts.request_blocks(text, follow_ups)}"
    return {"role": "user", "content": [{"type": "text", "text": body}]}


# -- the conversation ---------------------------------------------------------------------------


def plan_change(settings: Settings, conn: redis.Redis, request: Request) -> Planned:
    """Plan ``request`` against the live checkout's HEAD; LLMError when the model fails."""
    if not settings.llm_enabled:
        raise LLMError("change requests in words need ANTHROPIC_API_KEY, which is not set")
    git = Git(settings.target_dir)
    try:
        base, branch = git.head(), git.branch()
    except GitError as exc:
        raise PlanningError(f"reading the live checkout {settings.target_dir}: {exc}") from exc
    graph = import_graph(settings, conn, git, base)
    system, _ = system_blocks(settings, git, base, graph)
    view = CommitFiles(git, base)
    messages = [request_message(settings, request.text, request.answers)]
    if request.incident:  # a Fix it: the plan must list the test that reproduces it
        messages[0]["content"].append(text(prompts.incident_block(request.incident)))
    claude = Claude(settings, "planning", deadline=time.monotonic() + settings.llm_timeout)

    def build(raw: Any) -> Plan:
        return build_plan(settings, conn, view, base, branch, graph, raw, request.incident)

    try:
        planned = converse(
            claude,
            system=system,
            messages=messages,
            tools=TOOLS,
            tool_choice={"type": "any"},
            max_output=PLAN_OUTPUT,
            limit=max(1, min(PLAN_TURNS, settings.llm_max_turns)),
            respond=_Planning(claude, view, build).respond,
            what="planning",
            last_call="This is your last turn: call submit_plan or ask_questions now.",
        )
    finally:
        claude.close()
        record_usage(conn, request.id, "planning", settings.model, claude.usage)
    if planned.plan is not None:
        planned.plan.usage = claude.usage.to_dict()
    return planned


@dataclass
class _Planning:
    """The planner's side of the conversation: it reads files and checks what is submitted."""

    claude: Claude
    view: CommitFiles
    build: Callable[[Any], Plan]

    def respond(self, turn: int, reply: Reply) -> Done[Planned] | list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for use in reply.tool_uses():
            if use["name"] == "ask_questions":
                try:
                    asked = questions(use["input"], self.claude)
                    return Done(Planned(None, asked, self.claude.usage))
                except PlanProblems as exc:
                    results.append(tool_result(use, f"not accepted: {exc}", error=True))
            elif use["name"] == "submit_plan":
                try:
                    return Done(Planned(self.build(use["input"]), [], self.claude.usage))
                except PlanProblems as exc:
                    message = "the plan was not accepted: " + "; ".join(exc.problems[:12])
                    results.append(tool_result(use, message, error=True))
            else:
                outcome = self.view.call(use["name"], use["input"])
                given = use["input"] if isinstance(use["input"], dict) else {}
                log.info(
                    "planner tool call",
                    tool=use["name"],
                    path=str(given.get("path", ""))[:200],
                    refused=outcome.is_error,
                )
                results.append(tool_result(use, outcome.content, error=outcome.is_error))
        return results or [text("Call submit_plan or ask_questions.")]
