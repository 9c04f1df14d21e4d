"""The deploy planner against real git repositories (origin, a developer clone, the live
checkout) and a real embedded Redis."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline import store
from pipeline.config import Settings, load_settings
from pipeline.exceptions import PlanningError
from pipeline.git import Git
from pipeline.keyspace import TargetKeys
from pipeline.planning import deploys as planning
from pipeline.planning.deploys import plan_deploy
from pipeline.planning.imports import ImportGraph, module_name, parse_imports
from pipeline.planning.plans import Plan
from pipeline.queue.targets import Target
from pipeline.sandbox.records import TestRecord


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return result.stdout.strip()


class Workspace:
    """A developer's clone of origin: commit here, then push."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def commit(self, message: str, files: dict[str, str | bytes | None]) -> str:
        """Write (or, for None, delete) files and commit them; returns the new sha."""
        for name, content in files.items():
            path = self.path / name
            if content is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        git(self.path, "add", "--all")
        git(self.path, "commit", "--quiet", "-m", message)
        return git(self.path, "rev-parse", "HEAD")

    def branch(self, name: str, start: str = "main") -> None:
        git(self.path, "checkout", "--quiet", "-B", name, start)

    def push(self, *refs: str) -> None:
        git(self.path, "push", "--quiet", "origin", *(refs or ("HEAD",)))


INITIAL = {
    "README.md": "# service\n",
    "app.py": "import pkg.api\n\nprint(pkg.api.handler())\n",
    "pkg/__init__.py": "",
    "pkg/core.py": "VERSION = 1\n",
    "pkg/api.py": "from .core import VERSION\n\n\ndef handler():\n    return VERSION\n",
    "pkg/other.py": "import json\n\nVALUE = json.dumps(1)\n",
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the user's git config, molt.toml and MOLT_* variables out of the tests."""
    for name in list(os.environ):
        if name.startswith("MOLT_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("MOLT_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Dev Eloper")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "dev@example.com")


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    path = tmp_path / "origin.git"
    git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(path))
    return path


@pytest.fixture
def dev(tmp_path: Path, origin: Path) -> Workspace:
    """A clone with the first commit of the service pushed to origin's main."""
    path = tmp_path / "dev"
    git(tmp_path, "init", "--quiet", "-b", "main", str(path))
    git(path, "remote", "add", "origin", str(origin))
    workspace = Workspace(path)
    workspace.commit("First version", INITIAL)
    workspace.push("main")
    return workspace


@pytest.fixture
def live(tmp_path: Path, dev: Workspace, origin: Path) -> Path:
    """The live checkout: cloned from origin before any of a test's own commits."""
    path = tmp_path / "live"
    git(tmp_path, "clone", "--quiet", str(origin), str(path))
    return path


@pytest.fixture(scope="module")
def redis_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One embedded Redis for the module: each test's target has its own keys."""
    path = tmp_path_factory.mktemp("redis")
    try:
        yield path
    finally:
        store.stop_embedded(path)


@pytest.fixture
def settings(redis_dir: Path, live: Path) -> Settings:
    return load_settings(data_dir=redis_dir, target_dir=live, test_command="true")


@pytest.fixture
def conn(settings: Settings) -> Iterator[redis.Redis]:
    client = store.connect(settings)
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def test_branch_pushed_after_the_clone_lists_its_commits_files_and_diffstat(
    dev: Workspace, live: Path, settings: Settings, conn: redis.Redis
) -> None:
    base = git(live, "rev-parse", "HEAD")
    dev.branch("feature")
    first = dev.commit("Add a health endpoint", {"pkg/health.py": "OK = True\n"})
    second = dev.commit(
        "Bump the version and drop the readme",
        {"pkg/core.py": "VERSION = 2\nNAME = 'svc'\n", "README.md": None},
    )
    dev.push("feature")

    plan = plan_deploy(settings, conn, "feature")

    assert plan.kind == "deploy"
    assert plan.ref == "feature"
    assert plan.target_commit == second
    assert plan.base_commit == base
    assert plan.base_branch == "main"
    assert not plan.downgrade
    assert [c["sha"] for c in plan.commits] == [second, first]
    assert plan.commits[0]["subject"] == "Bump the version and drop the readme"
    assert plan.commits[0]["author"] == "Dev Eloper"
    assert second.startswith(plan.commits[0]["short"])
    assert plan.files == [
        {"path": "README.md", "status": "D", "insertions": 0, "deletions": 1},
        {"path": "pkg/core.py", "status": "M", "insertions": 2, "deletions": 1},
        {"path": "pkg/health.py", "status": "A", "insertions": 1, "deletions": 0},
    ]
    assert plan.diffstat == {"files": 3, "insertions": 3, "deletions": 2}
    short = second[:7]
    assert plan.summary == f"Deploy feature ({short}): 2 commits, 3 files, +3 -2"
    assert plan.rollback_point == f"{base[:7]} on main"
    assert plan.risk == {"level": "low", "reasons": sandbox_reasons(plan.risk)}
    assert plan.protected == []
    assert plan.test_command == "true"


def test_an_annotated_tag_is_deployed_as_the_commit_it_points_to(
    dev: Workspace, settings: Settings, conn: redis.Redis
) -> None:
    dev.branch("release")
    sha = dev.commit("Release 1.1", {"pkg/core.py": "VERSION = 11\n"})
    git(dev.path, "tag", "-a", "v1.1", "-m", "Version 1.1")
    dev.push("refs/tags/v1.1")

    plan = plan_deploy(settings, conn, "v1.1")

    assert plan.target_commit == sha
    assert plan.summary.startswith(f"Deploy v1.1 ({sha[:7]}): 1 commit, 1 file")


def test_a_full_or_short_sha_is_deployed(
    dev: Workspace, settings: Settings, conn: redis.Redis
) -> None:
    dev.branch("fix")
    sha = dev.commit("Fix", {"pkg/core.py": "VERSION = 3\n"})
    dev.push("fix")

    assert plan_deploy(settings, conn, sha).target_commit == sha
    plan = plan_deploy(settings, conn, sha[:8])
    assert plan.target_commit == sha
    assert plan.summary.startswith(f"Deploy {sha[:7]} ({sha[:7]}):")


def test_an_unknown_ref_is_refused_with_a_readable_reason(
    settings: Settings, conn: redis.Redis
) -> None:
    with pytest.raises(PlanningError) as caught:
        plan_deploy(settings, conn, "no-such-branch")
    assert str(caught.value) == (
        "unknown ref 'no-such-branch' (not a branch of origin, a tag or a commit)"
    )


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("--upload-pack=touch pwned", "it contains whitespace"),
        ("--upload-pack=x", "it starts with '-'"),
        ("-c", "it starts with '-'"),
        ("foo bar", "it contains whitespace"),
        ("main\n", "it contains whitespace"),
        ("tab\there", "it contains whitespace"),
        ("bell\x07", "it contains control characters"),
        ("a" * 201, "it is longer than 200 characters"),
    ],
)
def test_option_like_or_spaced_refs_are_refused_before_git_runs(
    ref: str, reason: str, settings: Settings, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_git(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"git ran: {args}")

    monkeypatch.setattr(Git, "run", no_git)
    monkeypatch.setattr(Git, "run_bytes", no_git)
    with pytest.raises(PlanningError, match="is not a git ref") as caught:
        plan_deploy(settings, conn, ref)
    assert str(caught.value).endswith(reason)
    assert "\n" not in str(caught.value)


def test_an_empty_ref_asks_for_one(settings: Settings, conn: redis.Redis) -> None:
    with pytest.raises(PlanningError, match="a ref is needed"):
        plan_deploy(settings, conn, "")


@pytest.mark.parametrize("ref", ["a..b", "v1.4^", "topic.lock", "@{-1}", "x~2"])
def test_names_git_rejects_as_refs_are_refused(
    ref: str, settings: Settings, conn: redis.Redis
) -> None:
    with pytest.raises(PlanningError) as caught:
        plan_deploy(settings, conn, ref)
    assert str(caught.value).startswith(f"'{ref}' is not a git ref: git does not accept it")


def test_the_commit_already_live_has_nothing_to_deploy(
    live: Path, settings: Settings, conn: redis.Redis
) -> None:
    short = git(live, "rev-parse", "--short", "HEAD")
    with pytest.raises(PlanningError) as caught:
        plan_deploy(settings, conn, "main")
    assert str(caught.value) == f"already running {short}: nothing to deploy"


def test_deploying_an_older_commit_is_flagged_as_a_downgrade(
    dev: Workspace, live: Path, settings: Settings, conn: redis.Redis
) -> None:
    old = git(live, "rev-parse", "HEAD")
    second = dev.commit("Second", {"pkg/core.py": "VERSION = 2\n"})
    third = dev.commit("Third", {"pkg/core.py": "VERSION = 3\n"})
    dev.push("main")
    git(live, "pull", "--quiet", "--ff-only")

    plan = plan_deploy(settings, conn, old)

    assert plan.downgrade
    assert plan.base_commit == third
    assert [c["sha"] for c in plan.commits] == [third, second]
    assert "a downgrade: removes 2 commits" in plan.summary
    assert plan.risk["level"] == "medium"
    assert "rolls back 2 commits" in plan.risk["reasons"]


def test_a_target_that_lacks_live_commits_says_what_it_drops(
    dev: Workspace, live: Path, settings: Settings, conn: redis.Redis
) -> None:
    dev.branch("side")
    dev.commit("Side work", {"pkg/other.py": "VALUE = 2\n"})
    dev.push("side")
    git(live, "commit", "--quiet", "--allow-empty", "-m", "Hotfix made on the server")

    plan = plan_deploy(settings, conn, "side")

    assert not plan.downgrade
    assert plan.risk["level"] == "medium"
    assert "drops 1 commit live has that the target lacks" in plan.risk["reasons"]


def test_components_follow_the_reverse_import_graph(
    dev: Workspace, settings: Settings, conn: redis.Redis
) -> None:
    dev.branch("core")
    sha = dev.commit("Change the core", {"pkg/core.py": "VERSION = 4\n"})
    dev.push("core")

    plan = plan_deploy(settings, conn, "core")

    # pkg.api imports pkg.core (relatively); app imports pkg.api; pkg.other imports neither.
    assert plan.components == ["app", "pkg.api", "pkg.core"]
    cached = conn.get(f"molt:imports:{settings.target_id}:{sha}")
    assert isinstance(cached, str)
    assert ImportGraph.from_json(cached).modules["pkg.core"] == "pkg/core.py"
    assert 0 < int(conn.ttl(f"molt:imports:{settings.target_id}:{sha}")) <= 86400
    # The cached graph gives the same answer.
    assert plan_deploy(settings, conn, "core").components == plan.components


def test_components_include_changed_non_python_top_level_dirs(
    dev: Workspace, settings: Settings, conn: redis.Redis
) -> None:
    dev.branch("docs")
    dev.commit(
        "Docs and CI",
        {"docs/guide.md": "# Guide\n", ".github/workflows/ci.yml": "on: push\n"},
    )
    dev.push("docs")

    plan = plan_deploy(settings, conn, "docs")

    assert plan.components == [".github", "docs"]


def test_touching_a_protected_path_is_high_risk_and_names_it(
    dev: Workspace, settings: Settings, conn: redis.Redis
) -> None:
    dev.branch("ci")
    dev.commit("Change CI", {".ci/run": "#!/bin/sh\nexit 0\n"})
    dev.push("ci")

    plan = plan_deploy(settings, conn, "ci")

    assert plan.protected == [".ci/run"]
    assert plan.risk["level"] == "high"
    assert "touches protected path .ci/run" in plan.risk["reasons"]


def test_more_than_twenty_files_is_medium_risk(
    dev: Workspace, settings: Settings, conn: redis.Redis
) -> None:
    dev.branch("many")
    dev.commit("Many pages", {f"docs/page{n:02}.md": f"page {n}\n" for n in range(21)})
    dev.push("many")

    plan = plan_deploy(settings, conn, "many")

    assert plan.risk == {"level": "medium", "reasons": ["21 files changed"]}
    assert plan.diffstat == {"files": 21, "insertions": 21, "deletions": 0}


def test_dependency_manifests_and_migrations_raise_risk(
    dev: Workspace, settings: Settings, conn: redis.Redis
) -> None:
    dev.branch("deps")
    dev.commit(
        "Upgrade and migrate",
        {"requirements-dev.txt": "pytest\n", "db/migrations/0002_add.sql": "select 1;\n"},
    )
    dev.push("deps")

    plan = plan_deploy(settings, conn, "deps")

    assert plan.risk["level"] == "medium"
    assert "changes dependencies: requirements-dev.txt" in plan.risk["reasons"]
    assert "includes migrations: db/migrations/0002_add.sql" in plan.risk["reasons"]


def test_paths_with_spaces_renames_and_binary_files_are_listed(
    dev: Workspace, settings: Settings, conn: redis.Redis
) -> None:
    dev.commit("Notes", {"notes/old name.txt": "one\ntwo\nthree\nfour\n"})
    dev.push("main")
    git(settings.target_dir, "pull", "--quiet", "--ff-only")
    dev.branch("files")
    git(dev.path, "mv", "notes/old name.txt", "notes/new name.txt")
    dev.commit("Rename and add", {"logo.png": b"\x89PNG\r\n\x1a\n\x00\x01\x02"})
    dev.push("files")

    plan = plan_deploy(settings, conn, "files")

    assert plan.files == [
        {"path": "logo.png", "status": "A", "insertions": 0, "deletions": 0},
        {
            "path": "notes/new name.txt",
            "status": "R",
            "insertions": 0,
            "deletions": 0,
            "old_path": "notes/old name.txt",
        },
    ]


def test_estimate_is_the_median_of_recent_update_durations(
    dev: Workspace, settings: Settings, conn: redis.Redis
) -> None:
    dev.branch("timed")
    dev.commit("Timed", {"pkg/core.py": "VERSION = 5\n"})
    dev.push("timed")
    key = TargetKeys(settings.target_id).durations
    conn.rpush(key, "30", "10", "20", "oops", *(["900"] * 10))

    plan = plan_deploy(settings, conn, "timed")

    # Only the newest ten count: 30, 10, 20 and seven 900s; "oops" is skipped.
    assert plan.estimated_seconds == 900
    assert plan.estimate_basis == "median of the last 9 updates"
    conn.delete(key)
    conn.rpush(key, "30", "10", "20")
    plan = plan_deploy(settings, conn, "timed")
    assert plan.estimated_seconds == 20
    assert plan.estimate_basis == "median of the last 3 updates"


def test_estimate_falls_back_to_the_last_test_run_and_then_to_nothing(
    dev: Workspace, settings: Settings, conn: redis.Redis
) -> None:
    dev.branch("timed")
    dev.commit("Timed", {"pkg/core.py": "VERSION = 5\n"})
    dev.push("timed")

    plan = plan_deploy(settings, conn, "timed")
    assert plan.estimated_seconds is None
    assert plan.estimate_basis == "no past runs"
    assert not any("drop below" in c for c in plan.success_criteria)

    Target(settings, conn).tests.record(TestRecord(True, 40, 12.0, plan.base_commit))
    plan = plan_deploy(settings, conn, "timed")
    # Two test runs, the restart and the rest, and the watch window (60 s here).
    assert plan.estimated_seconds == 2 * 12 + 15 + 60
    assert plan.estimate_basis == (
        "two test runs like the last (12 s), the restart and the 60 s watch window"
    )
    assert "passing tests do not drop below 40" in plan.success_criteria
    assert "tests pass (40 or more passing)" in plan.tasks[1]["checkpoint"]


def test_success_criteria_and_tasks_say_what_must_hold(
    dev: Workspace, settings: Settings, conn: redis.Redis
) -> None:
    dev.branch("steps")
    sha = dev.commit("Steps", {"pkg/core.py": "VERSION = 6\n"})
    dev.push("steps")

    plan = plan_deploy(settings, conn, "steps")

    assert plan.success_criteria == [
        "tests pass in the sandbox (phase 1) and on the live checkout (phase 2)",
        "all changed Python files byte-compile",
        f"the service restarts and its health check passes on {sha[:7]}",
    ]
    assert [(t["step"], t["name"]) for t in plan.tasks] == [
        (1, "prepare sandbox"),
        (2, "phase 1 validation"),
        (3, "snapshot"),
        (4, "apply to live"),
        (5, "phase 2 validation"),
        (6, "restart"),
        (7, "verify"),
        (8, "watch"),
    ]
    assert f"check out {sha[:7]}" in plan.tasks[0]["detail"]
    assert plan.base_commit[:7] in plan.tasks[2]["detail"]  # the snapshot, once tests pass there
    assert all(t["checkpoint"] for t in plan.tasks)
    assert "roll back to the snapshot" in plan.tasks[3]["on_failure"]


def test_a_plan_survives_a_round_trip_through_json(
    dev: Workspace, settings: Settings, conn: redis.Redis
) -> None:
    dev.branch("trip")
    dev.commit("Trip", {"pkg/core.py": "VERSION = 7\n"})
    dev.push("trip")
    plan = plan_deploy(settings, conn, "trip")

    stored = json.loads(json.dumps(plan.to_dict()))

    assert Plan.from_dict({**stored, "from_a_newer_version": 1}) == plan


def test_a_fetch_that_keeps_failing_names_the_remote(
    redis_dir: Path, live: Path, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planning, "FETCH_BACKOFF", (0.0, 0.0, 0.0))
    settings = load_settings(
        data_dir=redis_dir, target_dir=live, test_command="true", target_remote="nowhere"
    )
    with pytest.raises(PlanningError, match=r"^fetching nowhere: git fetch"):
        plan_deploy(settings, conn, "main")


def test_imports_are_parsed_across_lines_relatively_and_with_aliases() -> None:
    source = (
        "import os, pkg.a as a\n"
        "from . import (b,  # the b module\n    c as see,\n)\n"
        "from ..top import thing\n"
        "from .d import *\n"
        "def later():\n    import pkg.e\n"
        "from_date = 1\n"
    )
    assert parse_imports(source, "pkg.sub.mod") == {
        "pkg.a",
        "pkg.sub",
        "pkg.sub.b",
        "pkg.sub.c",
        "pkg.top",
        "pkg.top.thing",
        "pkg.sub.d",
        "pkg.e",
    }
    assert parse_imports("from . import x\n", "pkg", is_package=True) == {"pkg", "pkg.x"}


def test_file_paths_map_to_module_names() -> None:
    assert module_name("pkg/__init__.py") == "pkg"
    assert module_name("pkg/sub/mod.py") == "pkg.sub.mod"
    assert module_name("src/pkg/mod.py", src_layout=True) == "pkg.mod"
    assert module_name("scripts/my-tool.py") is None
    assert module_name("docs/index.md") is None


def test_the_graph_reaches_importers_of_a_deleted_module() -> None:
    graph = ImportGraph(
        modules={"app": "app.py", "pkg.api": "pkg/api.py"},
        imports={"app": ["pkg.api"], "pkg.api": ["pkg.gone", "pkg.gone.name"]},
    )
    assert graph.importers({"pkg.gone"}) == {"pkg.gone", "pkg.api", "app"}


def sandbox_reasons(risk: dict[str, Any]) -> list[str]:
    """The risk reasons that say where the tests run (these tests run them unsandboxed)."""
    return [r for r in risk["reasons"] if "sandbox" in r]
