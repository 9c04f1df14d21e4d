"""What the planner model submits, checked, and the plan the code makes of it.

The schemas of ``submit_plan`` and ``ask_questions`` state the limits the checks hold the
submission to. The code, not the model, decides the paths, which of them are protected, the
lowest risk, the checks that run and the rollback point; a submission that does not hold up
raises PlanProblems, whose reasons go back to the model.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import redis

from pipeline.config import Settings
from pipeline.llm.client import Claude
from pipeline.llm.tools import CommitFiles, Refused, clean_path
from pipeline.llm.turns import tool
from pipeline.planning.diffs import protected_paths
from pipeline.planning.estimates import past_runs
from pipeline.planning.imports import ImportGraph
from pipeline.planning.plans import Plan
from pipeline.planning.risk import LEVELS, assess_risk, raise_level, sandbox_risk
from pipeline.planning.tasks import change_tasks, rollback_points, rollback_to, success_criteria
from pipeline.redaction import redact, redact_data
from pipeline.sandbox.confinement import Confinement

MAX_FILES = 50
MAX_TASKS = 15
MAX_ITEMS = 10
MAX_QUESTIONS = 5
ROLES = ("implementer", "reviewer")
ACTIONS = {"modify": "M", "create": "A", "delete": "D"}


def _string(limit: int, description: str) -> dict[str, Any]:
    return {"type": "string", "maxLength": limit, "description": description}


def _strings(description: str, limit: int = 300) -> dict[str, Any]:
    return {
        "type": "array",
        "maxItems": MAX_ITEMS,
        "items": {"type": "string", "maxLength": limit},
        "description": description,
    }


SUBMIT_PLAN = tool(
    "submit_plan",
    "Submit the plan of the change for a human approver and the implementer.",
    {
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
                "level": {"type": "string", "enum": list(LEVELS)},
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
                "complexity": {"type": "string", "enum": list(LEVELS)},
            },
            "required": ["estimate", "complexity"],
        },
        "prerequisites": _strings("what must hold before starting"),
        "constraints": _strings("limits the change must respect"),
        "success_criteria": _strings("how the approver can tell it worked"),
    },
    [
        "summary",
        "scope",
        "impact",
        "files",
        "risk",
        "tasks",
        "effort",
        "success_criteria",
    ],
)

ASK_QUESTIONS = tool(
    "ask_questions",
    "Ask the requester what you need to know before you can plan.",
    {
        "questions": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_QUESTIONS,
            "items": {"type": "string", "maxLength": 300},
        }
    },
    ["questions"],
)


def is_test_path(path: str) -> bool:
    """A file of the service's tests, by the names test runners collect."""
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


class PlanProblems(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


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


@dataclass(frozen=True)
class _Listing:
    """A list the submission must give: how long it may be, and what to say when it is wrong."""

    limit: int
    missing: str
    not_object: str
    too_many: str

    def objects(self, raw: Any, problems: list[str]) -> Iterator[dict[str, Any]]:
        """The objects of ``raw``, at most ``limit``; what is wrong goes to ``problems`` in the
        order it is found."""
        if not isinstance(raw, list) or not raw:
            problems.append(self.missing)
            return
        for item in raw[: self.limit]:
            if isinstance(item, dict):
                yield item
            else:
                problems.append(self.not_object)
        if len(raw) > self.limit:
            problems.append(self.too_many)


_FILES = _Listing(
    MAX_FILES,
    missing="files must list every file to create, modify or delete",
    not_object="each file must be an object with path, action and why",
    too_many=f"at most {MAX_FILES} files: split the change",
)
_TASKS = _Listing(
    MAX_TASKS,
    missing="tasks must list at least one task",
    not_object="each task must be an object",
    too_many=f"at most {MAX_TASKS} tasks",
)


def _files(raw: Any, view: CommitFiles, problems: list[str]) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = []
    for item in _FILES.objects(raw, problems):
        found = _file(item, view.entries(), {f["path"] for f in files})
        if isinstance(found, str):
            problems.append(found)
        else:
            files.append(found)
    return files


def _file(item: dict[str, Any], existing: Collection[str], seen: set[str]) -> dict[str, Any] | str:
    """One planned file, or what is wrong with it."""
    try:
        path = clean_path(item.get("path"))
    except Refused as exc:
        return f"file {str(item.get('path'))[:80]!r}: {exc}"
    action: Any = item.get("action")
    wrong = _not_one_of(action, ACTIONS, f"{path}: action")
    if wrong:
        return wrong
    if path in seen:
        return f"{path} is listed twice"
    if action == "create" and path in existing:
        return f"{path} already exists: modify it instead"
    if action != "create" and path not in existing:
        return f"{path} does not exist: create it instead"
    return {"path": path, "status": ACTIONS[action], "why": _line(item.get("why"), 300)}


def _tasks(raw: Any, problems: list[str]) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    for item in _TASKS.objects(raw, problems):
        found = _task(item, {t["id"] for t in tasks})
        if isinstance(found, str):
            problems.append(found)
        else:
            tasks.append(found)
    return tasks


def _task(item: dict[str, Any], ids: set[int]) -> dict[str, Any] | str:
    """One planned task, or what is wrong with it; ``ids`` are the tasks before it."""
    ident = item.get("id")
    name = _line(item.get("name"), 120)
    if isinstance(ident, bool) or not isinstance(ident, int) or ident in ids:
        return f"task {name or '?'}: id must be a number no other task has"
    if not name:
        return f"task {ident}: a name is needed"
    role = item.get("role")
    wrong = _not_one_of(role, ROLES, f"task {ident}: role")
    if wrong:
        return wrong
    after = item.get("depends_on", [])
    if not isinstance(after, list) or any(a not in ids for a in after):
        return f"task {ident}: depends_on may only name earlier tasks"
    return {
        "id": ident,
        "name": name,
        "detail": _line(item.get("detail"), 600),
        "role": role,
        "depends_on": list(dict.fromkeys(after)),
        "checkpoint": _line(item.get("checkpoint"), 300),
    }


def _not_one_of(value: Any, allowed: Collection[str], what: str) -> str:
    """What is wrong when ``value`` is not one of ``allowed``, else ""."""
    return "" if value in allowed else f"{what} must be one of {', '.join(allowed)}"


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _choice(value: Any, allowed: tuple[str, ...], what: str, problems: list[str]) -> str:
    wrong = _not_one_of(value, allowed, what)
    if wrong:
        problems.append(wrong)
        return allowed[0]
    return str(value)


@dataclass(frozen=True)
class _Submitted:
    """The parts of a submission that must hold up before a plan is made of it."""

    summary: str
    scope: str
    files: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    level: str  # the model's risk level
    complexity: str


def _submitted(raw: Any, view: CommitFiles) -> _Submitted:
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
    level = _choice(_object(raw.get("risk")).get("level"), LEVELS, "risk.level", problems)
    effort = _object(raw.get("effort"))
    complexity = _choice(effort.get("complexity"), LEVELS, "effort.complexity", problems)
    if problems:
        raise PlanProblems(problems)
    return _Submitted(summary, scope, files, tasks, level, complexity)


def _risk(raw: dict[str, Any], submitted: _Submitted, protected: list[str]) -> dict[str, Any]:
    """The code's level first; the model may raise it, and its reasons are added as its own."""
    counted = [{**f, "insertions": 0, "deletions": 0} for f in submitted.files]
    diffstat = {"files": len(counted), "insertions": 0, "deletions": 0}
    risk = assess_risk(counted, diffstat, protected, removed=0, downgrade=False)
    if raw.get("allow_unplanned_files") is True:
        raise_level(risk, "medium", "the plan allows changing files it does not list")
    model_reasons = _lines(_object(raw.get("risk")).get("reasons"))
    raise_level(risk, submitted.level)
    risk["reasons"].extend(f"planner: {reason}" for reason in model_reasons)
    return risk


def _components(
    graph: ImportGraph, paths: list[str], named: list[str]
) -> tuple[list[str], list[str]]:
    """The components (named, changed modules, top-level dirs) and the modules importing them."""
    changed = {m for m in (graph.module_for(p) for p in paths) if m}
    dependents = sorted(graph.importers(changed) - changed)
    dirs = [p.split("/", 1)[0] for p in paths if "/" in p and not graph.module_for(p)]
    return list(dict.fromkeys([*named, *sorted(changed), *dirs]))[:50], dependents[:50]


def _criteria(
    raw: dict[str, Any],
    files: list[dict[str, Any]],
    last_run: dict[str, float],
    allow_unplanned: bool,
) -> list[str]:
    criteria = [
        "the reviewer finds that the diff does what this plan says, and nothing else",
        "only the planned files change"
        if not allow_unplanned
        else "files outside the plan are reported",
        *success_criteria(files, last_run, "the change"),
        *_lines(raw.get("success_criteria")),
    ]
    return list(dict.fromkeys(criteria))


def build_plan(
    settings: Settings,
    conn: redis.Redis,
    view: CommitFiles,
    base: str,
    branch: str,
    graph: ImportGraph,
    raw: Any,
    incident: dict[str, Any] | None = None,
) -> Plan:
    """The plan, from what the model submitted and what the code decides; PlanProblems if the
    submission does not hold up. A fix of ``incident`` must list a test that reproduces it."""
    submitted = _submitted(raw, view)
    reproduce = _reproduction(incident, submitted.files, base[:7]) if incident else ""
    paths = [f["path"] for f in submitted.files]
    protected = protected_paths(paths)
    components, dependents = _components(graph, paths, _lines(raw.get("components"), 120))
    allow_unplanned = raw.get("allow_unplanned_files") is True
    risk = _risk(raw, submitted, protected)
    sandbox_risk(risk, Confinement.of(settings))
    short_base = base[:7]
    rollback_point = rollback_to(short_base, branch)
    past = past_runs(settings, conn, base)
    plan = Plan(
        kind="change",
        ref="",
        target_commit="",
        base_commit=base,
        base_branch=branch,
        summary=submitted.summary,
        commits=[],
        diffstat={},
        files=submitted.files,
        components=components,
        risk=risk,
        protected=protected,
        test_command=settings.test_command,
        rollback_point=rollback_point,
        estimated_seconds=past.seconds,
        estimate_basis=f"{past.basis}, plus up to {_minutes(settings.llm_timeout)} to write "
        "the change",
        success_criteria=_criteria(raw, submitted.files, past.last_run, allow_unplanned),
        tasks=change_tasks(
            settings, short_base, rollback_point, submitted.tasks, past.baseline, reproduce
        ),
        downgrade=False,
        scope=submitted.scope,
        impact=_line(raw.get("impact"), 1000),
        dependents=dependents,
        prerequisites=_lines(raw.get("prerequisites")),
        constraints=_lines(raw.get("constraints")),
        validation=_lines(raw.get("validation")),
        rollback_points=[
            *rollback_points(rollback_point),
            *_lines(raw.get("rollback_points")),
        ],
        effort={
            "estimate": _line(_object(raw.get("effort")).get("estimate"), 80),
            "complexity": submitted.complexity,
        },
        allow_unplanned=allow_unplanned,
    )
    return _redacted(plan, tuple(settings.secrets()))


def _reproduction(incident: dict[str, Any], files: list[dict[str, Any]], short_base: str) -> str:
    """What the reproduce step runs and expects, for the plan's steps."""
    tests = [f["path"] for f in files if f.get("status") != "D" and is_test_path(f["path"])]
    if not tests:
        raise PlanProblems(
            ["a fix of an incident must list a test that reproduces it (a test file)"]
        )
    kind, frame = incident.get("kind") or "", incident.get("frame") or ""
    how = (f" with {kind}" + (f" at {frame}" if frame else "")) if kind else ""
    return (
        f"run {', '.join(tests)} on {short_base}, where they must fail{how}, "
        "then on the change, where they must pass"
    )


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _redacted(plan: Plan, known: tuple[str, ...]) -> Plan:
    return Plan.from_dict(redact_data(plan.to_dict(), known))
