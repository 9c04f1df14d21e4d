"""The deploy planner: what ``deploy <ref>`` would change, how risky it is, and how it runs.

It reads real git in the live checkout (after a fetch) and past timings from
Redis; it never changes the checkout's work tree. No LLM is involved, so the
same ref on the same commits always gives the same plan.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
import statistics
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import redis

from pipeline.config import Settings
from pipeline.exceptions import GitError, PlanningError
from pipeline.git import Git
from pipeline.imports import ImportGraph, read_graph

MAX_COMMITS = 50
MAX_FILES = 500
MAX_COMPONENTS = 50
MAX_REF_LENGTH = 200

FETCH_TIMEOUT = 60.0
#: Pauses between fetch attempts: a fetch failure is usually the network.
FETCH_BACKOFF = (0.2, 0.5, 1.0)

#: Key formats. Durations (seconds, newest first) and test results are written by the worker.
DURATIONS_KEY = "molt:durations:{target}"
TESTS_KEY = "molt:tests:{target}:{commit}"
IMPORTS_KEY = "molt:imports:{target}:{commit}"
IMPORTS_TTL = 86400
RECENT_DURATIONS = 10

#: Paths a deploy must not change without a high-risk warning (fnmatch; a pattern
#: without "/" also matches the file name in any directory). The managed
#: service may be Molt itself, so its own safety machinery is here too.
PROTECTED_PATHS = (
    "molt.toml",
    ".molt/*",
    ".env*",
    "*.pem",
    "*.key",
    "id_rsa*",
    "*.p12",
    ".github/*",
    ".ci/*",
    ".gitlab-ci.yml",
    "Procfile",
    "pipeline/approval.py",
    "pipeline/locking.py",
    "pipeline/snapshots.py",
    "pipeline/audit.py",
    "pipeline/config.py",
    "pipeline/states.py",
    "pipeline/requests.py",
    "pipeline/authorisation.py",
    "pipeline/jobs.py",
    "pipeline/recovery.py",
    "pipeline/redaction.py",
    "pipeline/releases.py",
    "pipeline/bootguard.py",
    "pipeline/restart.py",
    "pipeline/workers.py",
    "pipeline/llm/tools.py",
    "pipeline/llm/agent.py",
    "pipeline/llm/scope.py",
)

#: Files that change what gets installed (matched like PROTECTED_PATHS).
DEPENDENCY_MANIFESTS = (
    "pyproject.toml",
    "requirements*.txt",
    "requirements/*.txt",
    "setup.py",
    "setup.cfg",
    "package.json",
    "poetry.lock",
    "uv.lock",
)
#: A path with one of these directories in it holds schema or data migrations.
MIGRATION_DIRS = frozenset({"migrations", "alembic"})

MEDIUM_FILES, HIGH_FILES = 20, 100
MEDIUM_LINES, HIGH_LINES = 500, 3000

_SHA = re.compile(r"[0-9a-fA-F]{7,40}")
_RISK_ORDER = {"low": 0, "medium": 1, "high": 2}


@dataclass
class Plan:
    """Everything an approver needs to decide, and the worker needs to run, one deploy."""

    kind: str  # "deploy"
    ref: str  # what the requester asked for
    target_commit: str  # full sha to deploy
    base_commit: str  # full sha live runs now: the rollback point
    base_branch: str  # branch checked out in the live checkout ("" if detached)
    summary: str  # one line a person reads first
    commits: list[dict[str, str]]  # {sha, short, subject, author}, newest first
    diffstat: dict[str, int]  # {files, insertions, deletions}
    files: list[dict[str, Any]]  # {path, status, insertions, deletions[, old_path]}
    components: list[str]  # affected modules (with their importers) and top-level dirs
    risk: dict[str, Any]  # {level, reasons}
    protected: list[str]  # protected paths the change touches
    test_command: str
    rollback_point: str  # "a1b2c3d on main" / "a1b2c3d (detached)"
    estimated_seconds: float | None
    estimate_basis: str
    success_criteria: list[str]
    tasks: list[dict[str, Any]]  # {step, name, detail, checkpoint, on_failure[, role, after]}
    downgrade: bool  # target is an ancestor of base: rolling back in history
    # A change described in words (kind "change") also has these; a deploy leaves them empty.
    # ``files`` then lists the planned files ({path, status, why}) and ``target_commit``
    # stays "" until the worker has written the change.
    scope: str = ""  # what changes, and what does not
    impact: str = ""  # who and what notices the change
    dependents: list[str] = field(default_factory=list)  # modules importing the affected ones
    prerequisites: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)  # checkpoints the reviewer looks for
    rollback_points: list[str] = field(default_factory=list)
    effort: dict[str, str] = field(default_factory=dict)  # {estimate, complexity}
    allow_unplanned: bool = False  # files outside ``files`` are allowed (and reported)
    usage: dict[str, int] = field(default_factory=dict)  # model tokens spent on planning

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """Rebuild a stored plan; keys this version does not know are ignored, and keys
        an older version did not write take their defaults."""
        required = [f for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [f.name for f in required if f.name not in d]
        if missing:
            raise ValueError(f"stored plan lacks {', '.join(missing)}")
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


# -- the ref ------------------------------------------------------------------------------------


def _shown(ref: str) -> str:
    """The ref quoted for a message, with anything unprintable escaped and long ones cut."""
    text = ref if ref.isprintable() else repr(ref)[1:-1]
    if len(text) > 60:
        text = text[:57] + "…"
    return f"'{text}'"


def _ref_format_ok(ref: str) -> bool:
    # check-ref-format reads no repository; "/" is only somewhere to run it.
    return Git(Path("/")).ok("check-ref-format", "--allow-onelevel", ref, timeout=10)


def validate_ref(ref: str) -> str:
    """Refuse anything that is not plainly a ref name or a sha, before git sees it."""
    if not isinstance(ref, str) or not ref:
        raise PlanningError("a ref is needed: a branch, a tag or a commit sha")
    problem = ""
    if len(ref) > MAX_REF_LENGTH:
        problem = f"it is longer than {MAX_REF_LENGTH} characters"
    elif any(c.isspace() for c in ref):
        problem = "it contains whitespace"
    elif any(not c.isprintable() for c in ref):
        problem = "it contains control characters"
    elif ref.startswith("-"):
        problem = "it starts with '-'"
    elif not _SHA.fullmatch(ref) and not _ref_format_ok(ref):
        problem = "git does not accept it as a ref name (see 'git help check-ref-format')"
    if problem:
        raise PlanningError(f"{_shown(ref)} is not a git ref: {problem}")
    return ref


def fetch(git: Git, remote: str) -> None:
    """Fetch branches into refs/remotes/<remote>/* and tags, retrying a flaky network."""
    args = (
        "fetch",
        "--quiet",
        "--tags",
        "--force",
        "--prune",
        "--no-recurse-submodules",
        "--end-of-options",
        remote,
        f"+refs/heads/*:refs/remotes/{remote}/*",
    )
    for attempt in range(len(FETCH_BACKOFF) + 1):
        try:
            git.run(*args, timeout=FETCH_TIMEOUT)
            return
        except GitError as exc:
            if attempt == len(FETCH_BACKOFF):
                raise PlanningError(f"fetching {remote}: {exc}") from exc
            time.sleep(FETCH_BACKOFF[attempt])


def _commit_of(git: Git, rev: str) -> str | None:
    out = git.run(
        "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}", check=False
    )
    return out.strip() or None


def resolve(git: Git, remote: str, ref: str) -> str:
    """A branch of the remote first, then a tag, then any commit the checkout knows."""
    for rev in (f"refs/remotes/{remote}/{ref}", f"refs/tags/{ref}", ref):
        sha = _commit_of(git, rev)
        if sha:
            return sha
    raise PlanningError(f"unknown ref {_shown(ref)} (not a branch of {remote}, a tag or a commit)")


# -- what changes -------------------------------------------------------------------------------


def _commits(git: Git, revs: str) -> list[dict[str, str]]:
    out = git.run_bytes(
        "log",
        "--no-color",
        "--no-show-signature",
        f"--max-count={MAX_COMMITS}",
        "--format=%H%x00%h%x00%an%x00%s%x1e",
        "--end-of-options",
        revs,
        "--",
    ).decode("utf-8", "replace")
    commits = []
    for record in out.split("\x1e"):
        parts = record.strip("\n").split("\0")
        if len(parts) == 4:
            sha, short, author, subject = parts
            commits.append({"sha": sha, "short": short, "subject": subject, "author": author})
    return commits


def _count(git: Git, revs: str) -> int:
    return int(git.run("rev-list", "--count", "--end-of-options", revs, "--").strip() or 0)


def _diff(git: Git, base: str, target: str, *how: str) -> list[str]:
    options = ("--no-color", "--no-ext-diff", "--no-textconv", "--no-relative", "-M", "-z")
    out = git.run_bytes("diff", *options, *how, base, target, "--")
    return out.decode("utf-8", "replace").split("\0")


def changed_files(git: Git, base: str, target: str) -> list[dict[str, Any]]:
    """Every changed path with its status and line counts (binary files count 0), by path."""
    statuses: dict[str, tuple[str, str]] = {}  # new path -> (status, old path)
    items = _diff(git, base, target, "--name-status")
    i = 0
    while i < len(items) and items[i]:
        letter = items[i][0]
        if letter in "RC":
            old, new = items[i + 1], items[i + 2]
            statuses[new] = ("R" if letter == "R" else "A", old if letter == "R" else "")
            i += 3
        else:
            statuses[items[i + 1]] = (letter if letter in "ADM" else "M", "")
            i += 2

    counts: dict[str, tuple[int, int]] = {}
    items = _diff(git, base, target, "--numstat")
    i = 0
    while i < len(items) and items[i]:
        added, deleted, path = items[i].split("\t", 2)
        if path:
            i += 1
        else:  # a rename: "added\tdeleted\t" then old and new paths
            path = items[i + 2]
            i += 3
        counts[path] = (
            int(added) if added.isdigit() else 0,
            int(deleted) if deleted.isdigit() else 0,
        )

    files = []
    for path in sorted(statuses.keys() | counts.keys()):
        status, old = statuses.get(path, ("M", ""))
        insertions, deletions = counts.get(path, (0, 0))
        entry: dict[str, Any] = {
            "path": path,
            "status": status,
            "insertions": insertions,
            "deletions": deletions,
        }
        if old:
            entry["old_path"] = old
        files.append(entry)
    return files


def _touched_paths(files: list[dict[str, Any]]) -> list[str]:
    """New and old paths: moving a protected file away touches it too."""
    paths = {f["path"] for f in files} | {f["old_path"] for f in files if f.get("old_path")}
    return sorted(paths)


def _matches(path: str, patterns: tuple[str, ...]) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(
        fnmatch.fnmatchcase(path, pattern)
        or ("/" not in pattern and fnmatch.fnmatchcase(name, pattern))
        for pattern in patterns
    )


def protected_paths(paths: list[str]) -> list[str]:
    return [path for path in paths if _matches(path, PROTECTED_PATHS)]


# -- components ---------------------------------------------------------------------------------


def import_graph(settings: Settings, conn: redis.Redis, git: Git, commit: str) -> ImportGraph:
    """The graph of ``commit``, from Redis when another plan already built it."""
    key = IMPORTS_KEY.format(target=settings.target_id, commit=commit)
    try:
        cached = conn.get(key)
    except redis.RedisError:
        cached = None
    if isinstance(cached, (str, bytes)):
        try:
            return ImportGraph.from_json(cached.decode() if isinstance(cached, bytes) else cached)
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # written by another version: rebuild it
    graph = read_graph(git, commit)
    with contextlib.suppress(redis.RedisError):  # the cache only saves time
        conn.set(key, graph.to_json(), ex=IMPORTS_TTL)
    return graph


def components(graph: ImportGraph, paths: list[str]) -> list[str]:
    """Changed modules, every module importing them (transitively), and changed top-level dirs."""
    changed: set[str] = set()
    dirs: set[str] = set()
    for path in paths:
        module = graph.module_for(path)
        if module:
            changed.add(module)
        elif "/" in path:
            dirs.add(path.split("/", 1)[0])
    names = sorted(graph.importers(changed) | dirs)
    if len(names) > MAX_COMPONENTS:
        more = len(names) - MAX_COMPONENTS
        names = [*names[:MAX_COMPONENTS], f"… and {more} more"]
    return names


# -- risk, estimate, criteria, tasks ------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _listed(paths: list[str], limit: int = 5) -> str:
    shown = ", ".join(paths[:limit])
    return shown if len(paths) <= limit else f"{shown} and {len(paths) - limit} more"


def assess_risk(
    files: list[dict[str, Any]],
    diffstat: dict[str, int],
    protected: list[str],
    *,
    removed: int,
    downgrade: bool,
) -> dict[str, Any]:
    """Start low; each reason a person should weigh raises the level and says why."""
    level = "low"
    reasons: list[str] = []

    def escalate(to: str, reason: str) -> None:
        nonlocal level
        if _RISK_ORDER[to] > _RISK_ORDER[level]:
            level = to
        reasons.append(reason)

    if protected:
        noun = "protected path" if len(protected) == 1 else "protected paths"
        escalate("high", f"touches {noun} {_listed(protected)}")
    count = diffstat["files"]
    if count > HIGH_FILES:
        escalate("high", f"{count} files changed")
    elif count > MEDIUM_FILES:
        escalate("medium", f"{count} files changed")
    lines = diffstat["insertions"] + diffstat["deletions"]
    if lines > HIGH_LINES:
        escalate("high", f"{lines} lines changed")
    elif lines > MEDIUM_LINES:
        escalate("medium", f"{lines} lines changed")
    if downgrade:
        escalate("medium", f"rolls back {_plural(removed, 'commit')}")
    elif removed:
        escalate("medium", f"drops {_plural(removed, 'commit')} live has that the target lacks")
    paths = _touched_paths(files)
    manifests = [p for p in paths if _matches(p, DEPENDENCY_MANIFESTS)]
    if manifests:
        escalate("medium", f"changes dependencies: {_listed(manifests)}")
    migrations = [p for p in paths if MIGRATION_DIRS & set(p.split("/")[:-1])]
    if migrations:
        escalate("medium", f"includes migrations: {_listed(migrations)}")
    return {"level": level, "reasons": reasons}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _number(value: Any) -> float | None:
    try:
        number = float(_text(value))
    except ValueError:
        return None
    return number if number >= 0 and number != float("inf") else None


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def last_test_run(conn: redis.Redis, target_id: str, commit: str) -> dict[str, float]:
    """The worker's record of the tests on ``commit``: ``seconds`` and passing ``count``."""
    raw: Any = conn.hgetall(TESTS_KEY.format(target=target_id, commit=commit))
    found = {}
    for name, value in dict(raw or {}).items():
        number = _number(value)
        if number is not None:
            found[_text(name)] = number
    return found


def estimate(
    conn: redis.Redis, target_id: str, last_run: dict[str, float]
) -> tuple[float | None, str]:
    """How long the update should take, and what the guess rests on."""
    raw: Any = conn.lrange(DURATIONS_KEY.format(target=target_id), 0, RECENT_DURATIONS - 1)
    durations = [n for n in (_number(v) for v in raw or []) if n is not None]
    if durations:
        basis = (
            "the last update"
            if len(durations) == 1
            else f"median of the last {len(durations)} updates"
        )
        return float(statistics.median(durations)), basis
    if "seconds" in last_run:
        seconds = last_run["seconds"]
        return 2 * seconds + 5, f"the last test run ({_seconds(seconds)}) plus overhead"
    return None, "no past runs"


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


def tasks(
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
            "snapshot",
            f"record {rollback_point} as the point to return to",
            f"the snapshot of {short_base} is saved",
            "stop; nothing has changed",
        ),
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
    return [
        {"step": n, "name": name, "detail": detail, "checkpoint": checkpoint, "on_failure": fail}
        for n, (name, detail, checkpoint, fail) in enumerate(steps, start=1)
    ]


# -- the plan -----------------------------------------------------------------------------------


def plan_deploy(settings: Settings, conn: redis.Redis, ref: str) -> Plan:
    """Plan deploying ``ref`` to the live checkout; PlanningError says why it cannot be."""
    validate_ref(ref)
    git = Git(settings.target_dir)
    remote = settings.target_remote
    try:
        base = git.head()
        branch = git.branch()
    except GitError as exc:
        raise PlanningError(f"reading the live checkout {settings.target_dir}: {exc}") from exc
    fetch(git, remote)
    target = resolve(git, remote, ref)
    short_base, short_target = (
        git.run("rev-parse", "--short", sha).strip() for sha in (base, target)
    )
    if target == base:
        raise PlanningError(f"already running {short_target}: nothing to deploy")

    downgrade = git.ok("merge-base", "--is-ancestor", target, base)
    if downgrade:
        commit_range = f"{target}..{base}"
        added, removed = 0, _count(git, commit_range)
        total = removed
    else:
        commit_range = f"{base}..{target}"
        added, removed = _count(git, commit_range), _count(git, f"{target}..{base}")
        total = added
    commits = _commits(git, commit_range)

    all_files = changed_files(git, base, target)
    diffstat = {
        "files": len(all_files),
        "insertions": sum(f["insertions"] for f in all_files),
        "deletions": sum(f["deletions"] for f in all_files),
    }
    paths = _touched_paths(all_files)
    protected = protected_paths(paths)
    graph = import_graph(settings, conn, git, target)
    risk = assess_risk(all_files, diffstat, protected, removed=removed, downgrade=downgrade)

    rollback_point = f"{short_base} on {branch}" if branch else f"{short_base} (detached)"
    last_run = last_test_run(conn, settings.target_id, base)
    seconds, basis = estimate(conn, settings.target_id, last_run)
    baseline = int(last_run["count"]) if "count" in last_run else None

    name = short_target if _SHA.fullmatch(ref) else ref
    what = (
        f"Deploy {name} ({short_target}), a downgrade: removes {_plural(total, 'commit')}"
        if downgrade
        else f"Deploy {name} ({short_target}): {_plural(total, 'commit')}"
    )
    summary = (
        f"{what}, {_plural(diffstat['files'], 'file')}, "
        f"+{diffstat['insertions']} -{diffstat['deletions']}"
    )
    return Plan(
        kind="deploy",
        ref=ref,
        target_commit=target,
        base_commit=base,
        base_branch=branch,
        summary=summary,
        commits=commits,
        diffstat=diffstat,
        files=all_files[:MAX_FILES],
        components=components(graph, paths),
        risk=risk,
        protected=protected,
        test_command=settings.test_command,
        rollback_point=rollback_point,
        estimated_seconds=seconds,
        estimate_basis=basis,
        success_criteria=success_criteria(all_files, last_run, short_target),
        tasks=tasks(settings, short_base, short_target, rollback_point, baseline),
        downgrade=downgrade,
    )
