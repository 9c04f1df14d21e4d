"""The deploy planner: what ``deploy <ref>`` would change, how risky it is, and how it runs.

It reads real git in the live checkout (after a fetch) and past timings from
Redis; it never changes the checkout's work tree. No LLM is involved, so the
same ref on the same commits always gives the same plan. The import graph of a
commit is cached under ``molt:imports:<target_id>:<commit>`` for a day.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any

import redis

from pipeline.changes import changed_files, protected_paths, touched_paths
from pipeline.config import Settings
from pipeline.estimates import estimate, last_test_run
from pipeline.exceptions import GitError, PlanningError
from pipeline.git import Git
from pipeline.imports import ImportGraph, read_graph
from pipeline.plans import Plan
from pipeline.risk import assess_risk, plural

MAX_COMMITS = 50
MAX_FILES = 500
MAX_COMPONENTS = 50
MAX_REF_LENGTH = 200

FETCH_TIMEOUT = 60.0
#: Pauses between fetch attempts: a fetch failure is usually the network.
FETCH_BACKOFF = (0.2, 0.5, 1.0)

#: The import graph of a commit, cached: building it reads every Python file.
IMPORTS_KEY = "molt:imports:{target}:{commit}"
IMPORTS_TTL = 86400

_SHA = re.compile(r"[0-9a-fA-F]{7,40}")


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


# -- the commits ------------------------------------------------------------------------------


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


# -- criteria and tasks ------------------------------------------------------------------------


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
    paths = touched_paths(all_files)
    protected = protected_paths(paths)
    graph = import_graph(settings, conn, git, target)
    risk = assess_risk(all_files, diffstat, protected, removed=removed, downgrade=downgrade)

    rollback_point = f"{short_base} on {branch}" if branch else f"{short_base} (detached)"
    last_run = last_test_run(conn, settings.target_id, base)
    seconds, basis = estimate(conn, settings.target_id, last_run)
    baseline = int(last_run["count"]) if "count" in last_run else None

    name = short_target if _SHA.fullmatch(ref) else ref
    what = (
        f"Deploy {name} ({short_target}), a downgrade: removes {plural(total, 'commit')}"
        if downgrade
        else f"Deploy {name} ({short_target}): {plural(total, 'commit')}"
    )
    summary = (
        f"{what}, {plural(diffstat['files'], 'file')}, "
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
