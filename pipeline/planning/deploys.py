"""The deploy planner: what ``deploy <ref>`` would change, how risky it is, and how it runs.

It reads real git in the live checkout (after a fetch) and past timings from
Redis; it never changes the checkout's work tree. No LLM is involved, so the
same ref on the same commits always gives the same plan. The import graph of a
commit is cached for a day under the target's ``imports`` key (pipeline/keyspace.py).
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from pipeline.config import Settings
from pipeline.exceptions import GitError, PlanningError
from pipeline.git import Git
from pipeline.keyspace import TargetKeys
from pipeline.planning.diffs import changed_files, protected_paths, touched_paths
from pipeline.planning.estimates import past_runs
from pipeline.planning.imports import ImportGraph, read_graph
from pipeline.planning.plans import Plan
from pipeline.planning.risk import assess_risk, plural, sandbox_risk
from pipeline.planning.tasks import deploy_tasks, rollback_to, success_criteria
from pipeline.releases import ledger
from pipeline.sandbox.confinement import Confinement

MAX_COMMITS = 50
MAX_FILES = 500
MAX_COMPONENTS = 50
MAX_REF_LENGTH = 200

FETCH_TIMEOUT = 60.0
#: Pauses between fetch attempts: a fetch failure is usually the network.
FETCH_BACKOFF = (0.2, 0.5, 1.0)

#: The import graph of a commit, cached: building it reads every Python file.
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


@dataclass(frozen=True)
class _Between:
    """The commits between live and the target, read in the direction the deploy goes."""

    downgrade: bool  # the target is an ancestor of live: rolling back in history
    total: int  # commits the deploy adds, or for a downgrade removes
    removed: int  # commits live has that the target lacks
    commits: list[dict[str, str]]


def _between(git: Git, base: str, target: str) -> _Between:
    downgrade = git.ok("merge-base", "--is-ancestor", target, base)
    if downgrade:
        commit_range = f"{target}..{base}"
        removed = _count(git, commit_range)
        return _Between(True, removed, removed, _commits(git, commit_range))
    commit_range = f"{base}..{target}"
    added, removed = _count(git, commit_range), _count(git, f"{target}..{base}")
    return _Between(False, added, removed, _commits(git, commit_range))


# -- components ---------------------------------------------------------------------------------


def import_graph(settings: Settings, conn: redis.Redis, git: Git, commit: str) -> ImportGraph:
    """The graph of ``commit``, from Redis when another plan already built it."""
    key = TargetKeys(settings.target_id).imports(commit)
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


# -- the plan -----------------------------------------------------------------------------------


def _summary(
    ref: str, short_target: str, between: _Between, diffstat: dict[str, int], back: str = ""
) -> str:
    """The plan's first line: what is deployed, or for a rollback what it undoes
    (``back``: "Rollback of dapper-puffin: back to fba5a17 (release 2)")."""
    name = short_target if _SHA.fullmatch(ref) else ref
    total = plural(between.total, "commit")
    if back:
        what = f"{back}: removes {total}" if between.downgrade else f"{back}: {total}"
    elif between.downgrade:
        what = f"Deploy {name} ({short_target}), a downgrade: removes {total}"
    else:
        what = f"Deploy {name} ({short_target}): {total}"
    return (
        f"{what}, {plural(diffstat['files'], 'file')}, "
        f"+{diffstat['insertions']} -{diffstat['deletions']}"
    )


def rollback_title(rollback_of: str, short_target: str, release: int) -> str:
    """How a rollback is named everywhere: what it undoes, and where it returns."""
    to = f"{short_target} (release {release})" if release else short_target
    return f"Rollback of {rollback_of}: back to {to}" if rollback_of else f"Rollback to {to}"


def _release_of(settings: Settings, conn: redis.Redis, commit: str) -> int:
    """The newest signed release of ``commit`` on this target (0: none)."""
    if not ledger.stored(settings, conn):
        return 0
    found = ledger.read(settings, conn).newest_for(commit)
    return found.release if found else 0


def plan_deploy(settings: Settings, conn: redis.Redis, ref: str, rollback_of: str = "") -> Plan:
    """Plan deploying ``ref`` to the live checkout; PlanningError says why it cannot be.
    ``rollback_of`` names the update a rollback undoes."""
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

    between = _between(git, base, target)
    all_files = changed_files(git, base, target)
    diffstat = {
        "files": len(all_files),
        "insertions": sum(f["insertions"] for f in all_files),
        "deletions": sum(f["deletions"] for f in all_files),
    }
    paths = touched_paths(all_files)
    protected = protected_paths(paths)
    graph = import_graph(settings, conn, git, target)
    risk = assess_risk(
        all_files, diffstat, protected, removed=between.removed, downgrade=between.downgrade
    )
    sandbox_risk(risk, Confinement.of(settings))

    rollback_point = rollback_to(short_base, branch)
    past = past_runs(settings, conn, base)
    release = _release_of(settings, conn, target) if rollback_of else 0
    back = rollback_title(rollback_of, short_target, release) if rollback_of else ""

    return Plan(
        kind="deploy",
        ref=ref,
        target_commit=target,
        base_commit=base,
        base_branch=branch,
        summary=_summary(ref, short_target, between, diffstat, back),
        commits=between.commits,
        diffstat=diffstat,
        files=all_files[:MAX_FILES],
        components=components(graph, paths),
        risk=risk,
        protected=protected,
        test_command=settings.test_command,
        rollback_point=rollback_point,
        estimated_seconds=past.seconds,
        estimate_basis=past.basis,
        success_criteria=success_criteria(all_files, past.last_run, short_target),
        tasks=deploy_tasks(settings, short_base, short_target, rollback_point, past.baseline),
        downgrade=between.downgrade,
        rollback_of=rollback_of,
        release=release,
    )
