"""The change planner: Claude reads a request in words and answers with a plan or questions.

The model sees the instructions, the tools and a map of the repository (the stable prefix,
marked for caching), then the request and everything said about it since, fenced as untrusted.
It may read files through the read tools and must call a tool every turn; it finishes by
calling ``submit_plan`` or ``ask_questions``. What it submits is checked here, and the code,
not the model, decides the paths, which of them are protected, the lowest risk, the checks
that run and the rollback point. A plan the checks refuse goes back to the model once more
with the reasons.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from pipeline import planning
from pipeline.changes import protected_paths
from pipeline.config import Settings
from pipeline.estimates import estimate, last_test_run
from pipeline.exceptions import GitError, LLMError, PlanningError
from pipeline.git import Git
from pipeline.imports import ImportGraph
from pipeline.llm import prompts, repomap
from pipeline.llm.client import Claude, Usage, record_usage
from pipeline.llm.tools import READ_TOOLS, CommitFiles, Refused, clean_path
from pipeline.plans import Plan
from pipeline.redaction import redact, redact_data
from pipeline.requests import Request
from pipeline.risk import assess_risk

log = structlog.get_logger(__name__)

PLAN_TURNS = 12
PLAN_OUTPUT = 8_000
#: Tokens of the prompt budget kept for the request and what was said about it since: at
#: most 9 texts of 2,000 characters (intake's MAX_TEXT, MAX_FOLLOW_UPS) and their fences,
#: at 3 characters a token.
REQUEST_RESERVE = 6_500
MAX_FILES = 50
MAX_TASKS = 15
MAX_ITEMS = 10
MAX_QUESTIONS = 5
RISKS = ("low", "medium", "high")
ROLES = ("implementer", "reviewer")
ACTIONS = {"modify": "M", "create": "A", "delete": "D"}
CACHE = {"type": "ephemeral"}


def _string(limit: int, description: str) -> dict[str, Any]:
    return {"type": "string", "maxLength": limit, "description": description}


def _strings(description: str, limit: int = 300) -> dict[str, Any]:
    return {
        "type": "array",
        "maxItems": MAX_ITEMS,
        "items": {"type": "string", "maxLength": limit},
        "description": description,
    }


SUBMIT_PLAN: dict[str, Any] = {
    "name": "submit_plan",
    "description": "Submit the plan of the change for a human approver and the implementer.",
    "input_schema": {
        "type": "object",
        "properties": {
            "summary": _string(200, "one line: what the change does"),
            "scope": _string(1000, "what changes, and what deliberately does not"),
            "impact": _string(1000, "who and what notices the change"),
            "components": _strings("affected modules or areas", 120),
            "files": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_FILES,
                "items": {
                    "type": "object",
                    "properties": {
                        "path": _string(400, "relative to the repository root"),
                        "action": {"type": "string", "enum": list(ACTIONS)},
                        "why": _string(300, "what changes in this file"),
                    },
                    "required": ["path", "action", "why"],
                },
                "description": "every file the implementer will create, modify or delete",
            },
            "allow_unplanned_files": {
                "type": "boolean",
                "description": "true only if the change cannot be bounded to the listed files",
            },
            "risk": {
                "type": "object",
                "properties": {
                    "level": {"type": "string", "enum": list(RISKS)},
                    "reasons": _strings("why this level"),
                },
                "required": ["level", "reasons"],
            },
            "tasks": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_TASKS,
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "name": _string(120, "short imperative"),
                        "detail": _string(600, "what exactly to do"),
                        "role": {"type": "string", "enum": list(ROLES)},
                        "depends_on": {"type": "array", "items": {"type": "integer"}},
                        "checkpoint": _string(300, "what shows the task is done"),
                    },
                    "required": ["id", "name", "role", "depends_on", "checkpoint"],
                },
                "description": "ordered; depends_on names ids of earlier tasks",
            },
            "validation": _strings("checkpoints that show the change works"),
            "rollback_points": _strings("where the change can be undone"),
            "effort": {
                "type": "object",
                "properties": {
                    "estimate": _string(80, "e.g. 'small: one function and its test'"),
                    "complexity": {"type": "string", "enum": list(RISKS)},
                },
                "required": ["estimate", "complexity"],
            },
            "prerequisites": _strings("what must hold before starting"),
            "constraints": _strings("limits the change must respect"),
            "success_criteria": _strings("how the approver can tell it worked"),
        },
        "required": [
            "summary",
            "scope",
            "impact",
            "files",
            "risk",
            "tasks",
            "effort",
            "success_criteria",
        ],
    },
}

ASK_QUESTIONS: dict[str, Any] = {
    "name": "ask_questions",
    "description": "Ask the requester what you need to know before you can plan.",
    "input_schema": {
        "type": "object",
        "properties": {
            "questions": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_QUESTIONS,
                "items": {"type": "string", "maxLength": 300},
            }
        },
        "required": ["questions"],
    },
}

TOOLS: list[dict[str, Any]] = [*READ_TOOLS, SUBMIT_PLAN, ASK_QUESTIONS]


class PlanProblems(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


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
    budget = max(500, settings.llm_prompt_budget - prefix_tokens() - REQUEST_RESERVE)
    drawn = repomap.build(git, commit, graph, budget)
    system: list[dict[str, Any]] = [
        {"type": "text", "text": prompts.PLANNER},
        {
            "type": "text",
            "text": prompts.fence("repository map", drawn.text),
            "cache_control": CACHE,
        },
    ]
    return system, drawn


def request_message(settings: Settings, text: str, follow_ups: list[str]) -> dict[str, Any]:
    intro = (
        "Plan this change request for the repository in the map. Whatever the plan says, "
        f"Molt runs the service's tests (`{settings.test_command}`), byte-compiles changed "
        "Python files, checks that only planned files change and has the diff reviewed."
    )
    body = f"{intro}\n\n{prompts.request_blocks(text, follow_ups)}"
    return {"role": "user", "content": [{"type": "text", "text": body}]}


def mark_last(messages: list[dict[str, Any]]) -> None:
    """Move the conversation's cache breakpoint to its newest block."""
    for message in messages:
        if isinstance(message["content"], list):
            for block in message["content"]:
                block.pop("cache_control", None)
    last = messages[-1]["content"]
    if isinstance(last, list) and last:
        last[-1]["cache_control"] = CACHE


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
    graph = planning.import_graph(settings, conn, git, base)
    system, _ = system_blocks(settings, git, base, graph)
    view = CommitFiles(git, base)
    messages = [request_message(settings, request.text, request.answers)]
    claude = Claude(settings, "planning", deadline=time.monotonic() + settings.llm_timeout)

    def build(raw: Any) -> Plan:
        return build_plan(settings, conn, view, base, branch, graph, raw)

    try:
        planned = converse(claude, view, system, messages, build, settings.llm_max_turns)
    finally:
        claude.close()
        record_usage(conn, request.id, "planning", settings.model, claude.usage)
    if planned.plan is not None:
        planned.plan.usage = claude.usage.to_dict()
    return planned


def converse(
    claude: Claude,
    view: CommitFiles,
    system: list[dict[str, Any]],
    messages: list[dict[str, Any]],
    build: Callable[[Any], Plan],
    max_turns: int,
) -> Planned:
    turns = max(1, min(PLAN_TURNS, max_turns))
    for turn in range(1, turns + 1):
        if turn == turns:
            messages[-1]["content"].append(
                {
                    "type": "text",
                    "text": "This is your last turn: call submit_plan or ask_questions now.",
                }
            )
        if turn > 1:
            mark_last(messages)
        reply = claude.send(
            system=system,
            messages=messages,
            tools=TOOLS,
            tool_choice={"type": "any"},
            max_output=PLAN_OUTPUT,
        )
        messages.append({"role": "assistant", "content": reply.content})
        results: list[dict[str, Any]] = []
        for use in reply.tool_uses():
            if use["name"] == "ask_questions":
                try:
                    return Planned(None, questions(use["input"], claude), claude.usage)
                except PlanProblems as exc:
                    results.append(_result(use, f"not accepted: {exc}", error=True))
            elif use["name"] == "submit_plan":
                try:
                    return Planned(build(use["input"]), [], claude.usage)
                except PlanProblems as exc:
                    message = "the plan was not accepted: " + "; ".join(exc.problems[:12])
                    results.append(_result(use, message, error=True))
            else:
                outcome = view.call(use["name"], use["input"])
                given = use["input"] if isinstance(use["input"], dict) else {}
                log.info(
                    "planner tool call",
                    tool=use["name"],
                    path=str(given.get("path", ""))[:200],
                    refused=outcome.is_error,
                )
                results.append(_result(use, outcome.content, error=outcome.is_error))
        if not results:
            results.append({"type": "text", "text": "Call submit_plan or ask_questions."})
        messages.append({"role": "user", "content": results})
    raise LLMError(f"planning did not finish within {turns} model calls")


def _result(use: dict[str, Any], content: str, *, error: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": use["id"], "content": content}
    if error:
        block["is_error"] = True
    return block


# -- checking what the model said ---------------------------------------------------------------


def _line(value: Any, limit: int) -> str:
    if not isinstance(value, str):
        return ""
    text = " ".join(value.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _lines(value: Any, limit: int = 300, count: int = MAX_ITEMS) -> list[str]:
    if not isinstance(value, list):
        return []
    found = [_line(item, limit) for item in value[:count]]
    return [item for item in found if item]


def questions(raw: Any, claude: Claude | None = None) -> list[str]:
    asked = _lines(raw.get("questions") if isinstance(raw, dict) else None, 300, MAX_QUESTIONS)
    if not asked:
        raise PlanProblems(["questions must be a list of one to five short questions"])
    known = tuple(claude.settings.secrets()) if claude else ()
    return [redact(q, known) for q in asked]


def _files(raw: Any, view: CommitFiles, problems: list[str]) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        problems.append("files must list every file to create, modify or delete")
        return []
    existing = view.entries()
    files: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in raw[:MAX_FILES]:
        if not isinstance(item, dict):
            problems.append("each file must be an object with path, action and why")
            continue
        try:
            path = clean_path(item.get("path"))
        except Refused as exc:
            problems.append(f"file {str(item.get('path'))[:80]!r}: {exc}")
            continue
        action = item.get("action")
        if action not in ACTIONS:
            problems.append(f"{path}: action must be one of {', '.join(ACTIONS)}")
            continue
        if path in seen:
            problems.append(f"{path} is listed twice")
            continue
        if action == "create" and path in existing:
            problems.append(f"{path} already exists: modify it instead")
            continue
        if action != "create" and path not in existing:
            problems.append(f"{path} does not exist: create it instead")
            continue
        seen.add(path)
        files.append({"path": path, "status": ACTIONS[action], "why": _line(item.get("why"), 300)})
    if len(raw) > MAX_FILES:
        problems.append(f"at most {MAX_FILES} files: split the change")
    return files


def _tasks(raw: Any, problems: list[str]) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        problems.append("tasks must list at least one task")
        return []
    tasks: list[dict[str, Any]] = []
    ids: set[int] = set()
    for item in raw[:MAX_TASKS]:
        if not isinstance(item, dict):
            problems.append("each task must be an object")
            continue
        ident = item.get("id")
        name = _line(item.get("name"), 120)
        if isinstance(ident, bool) or not isinstance(ident, int) or ident in ids:
            problems.append(f"task {name or '?'}: id must be a number no other task has")
            continue
        if not name:
            problems.append(f"task {ident}: a name is needed")
            continue
        role = item.get("role")
        if role not in ROLES:
            problems.append(f"task {ident}: role must be one of {', '.join(ROLES)}")
            continue
        after = item.get("depends_on", [])
        if not isinstance(after, list) or any(a not in ids for a in after):
            problems.append(f"task {ident}: depends_on may only name earlier tasks")
            continue
        ids.add(ident)
        tasks.append(
            {
                "id": ident,
                "name": name,
                "detail": _line(item.get("detail"), 600),
                "role": role,
                "depends_on": list(dict.fromkeys(after)),
                "checkpoint": _line(item.get("checkpoint"), 300),
            }
        )
    if len(raw) > MAX_TASKS:
        problems.append(f"at most {MAX_TASKS} tasks")
    return tasks


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _choice(value: Any, allowed: tuple[str, ...], what: str, problems: list[str]) -> str:
    if value not in allowed:
        problems.append(f"{what} must be one of {', '.join(allowed)}")
        return allowed[0]
    return str(value)


def build_plan(
    settings: Settings,
    conn: redis.Redis,
    view: CommitFiles,
    base: str,
    branch: str,
    graph: ImportGraph,
    raw: Any,
) -> Plan:
    """The plan, from what the model submitted and what the code decides; PlanProblems if the
    submission does not hold up."""
    if not isinstance(raw, dict):
        raise PlanProblems(["the plan must be an object"])
    problems: list[str] = []
    summary = _line(raw.get("summary"), 200)
    scope = _line(raw.get("scope"), 1000)
    if not summary:
        problems.append("summary is needed")
    if not scope:
        problems.append("scope is needed")
    files = _files(raw.get("files"), view, problems)
    tasks = _tasks(raw.get("tasks"), problems)
    risk_raw = _object(raw.get("risk"))
    model_level = _choice(risk_raw.get("level"), RISKS, "risk.level", problems)
    effort_raw = _object(raw.get("effort"))
    complexity = _choice(effort_raw.get("complexity"), RISKS, "effort.complexity", problems)
    if problems:
        raise PlanProblems(problems)

    known = tuple(settings.secrets())
    paths = [f["path"] for f in files]
    protected = protected_paths(paths)
    counted = [{**f, "insertions": 0, "deletions": 0} for f in files]
    diffstat = {"files": len(files), "insertions": 0, "deletions": 0}
    risk = assess_risk(counted, diffstat, protected, removed=0, downgrade=False)
    allow_unplanned = raw.get("allow_unplanned_files") is True
    if allow_unplanned:
        _raise_risk(risk, "medium", "the plan allows changing files it does not list")
    model_reasons = _lines(risk_raw.get("reasons"))
    _raise_risk(risk, model_level, "")
    risk["reasons"].extend(f"planner: {reason}" for reason in model_reasons)

    changed = {m for m in (graph.module_for(p) for p in paths) if m}
    dependents = sorted(graph.importers(changed) - changed)
    named = _lines(raw.get("components"), 120)
    dirs = [p.split("/", 1)[0] for p in paths if "/" in p and not graph.module_for(p)]
    components = list(dict.fromkeys([*named, *sorted(changed), *dirs]))[:50]

    short_base = base[:7]
    rollback_point = f"{short_base} on {branch}" if branch else f"{short_base} (detached)"
    last_run = last_test_run(conn, settings.target_id, base)
    seconds, basis = estimate(conn, settings.target_id, last_run)
    baseline = int(last_run["count"]) if "count" in last_run else None
    criteria = [
        "the reviewer finds that the diff does what this plan says, and nothing else",
        "only the planned files change"
        if not allow_unplanned
        else "files outside the plan are reported",
        *planning.success_criteria(counted, last_run, "the change"),
        *_lines(raw.get("success_criteria")),
    ]
    plan = Plan(
        kind="change",
        ref="",
        target_commit="",
        base_commit=base,
        base_branch=branch,
        summary=summary,
        commits=[],
        diffstat={},
        files=files,
        components=components,
        risk=risk,
        protected=protected,
        test_command=settings.test_command,
        rollback_point=rollback_point,
        estimated_seconds=seconds,
        estimate_basis=f"{basis}, plus up to {_minutes(settings.llm_timeout)} to write the change",
        success_criteria=list(dict.fromkeys(criteria)),
        tasks=change_tasks(settings, short_base, rollback_point, tasks, baseline),
        downgrade=False,
        scope=scope,
        impact=_line(raw.get("impact"), 1000),
        dependents=dependents[:50],
        prerequisites=_lines(raw.get("prerequisites")),
        constraints=_lines(raw.get("constraints")),
        validation=_lines(raw.get("validation")),
        rollback_points=[
            f"until the change is applied: the sandbox is discarded; live stays at "
            f"{rollback_point}",
            f"after it is applied: the live checkout returns to the snapshot {rollback_point}, "
            "and the service is restarted again if it had been",
            *_lines(raw.get("rollback_points")),
        ],
        effort={"estimate": _line(effort_raw.get("estimate"), 80), "complexity": complexity},
        allow_unplanned=allow_unplanned,
    )
    return _redacted(plan, known)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _raise_risk(risk: dict[str, Any], level: str, reason: str) -> None:
    order = {name: n for n, name in enumerate(RISKS)}
    if order[level] > order[risk["level"]]:
        risk["level"] = level
    if reason:
        risk["reasons"].append(reason)


def _redacted(plan: Plan, known: tuple[str, ...]) -> Plan:
    return Plan.from_dict(redact_data(plan.to_dict(), known))


def change_tasks(
    settings: Settings,
    short_base: str,
    rollback_point: str,
    planned: list[dict[str, Any]],
    baseline: int | None,
) -> list[dict[str, Any]]:
    """The planner's tasks between Molt's own steps, numbered in order, each with its role."""
    untouched = "discard the sandbox; the live checkout was not touched"
    steps: list[dict[str, Any]] = []

    def add(
        name: str,
        role: str,
        detail: str,
        checkpoint: str,
        on_failure: str,
        after: list[int] | None = None,
    ) -> int:
        step = len(steps) + 1
        steps.append(
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

    add(
        "plan",
        "planner",
        f"this plan, from the request and the repository at {short_base}",
        "an approver approves it",
        "nothing changes",
    )
    add(
        "snapshot",
        "checks",
        f"record {rollback_point} as the point to return to",
        f"the snapshot of {short_base} is saved",
        "stop; nothing has changed",
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
    for task in planning.tasks(settings, short_base, "the change", rollback_point, baseline)[2:]:
        add(task["name"], "checks", task["detail"], task["checkpoint"], task["on_failure"])
    return steps
