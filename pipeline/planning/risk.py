"""How risky a change is: a level (low, medium, high) and the reasons a person should weigh.

The code decides the level from what the change touches; a planner may raise it (the LLM
planner adds its model's level and reasons) but never lower it.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import NETWORK_HOST
from pipeline.planning.diffs import matches, touched_paths
from pipeline.sandbox.confinement import Confinement

LEVELS = ("low", "medium", "high")

#: Files that change what gets installed (matched like diffs.PROTECTED_PATHS).
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


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _first_few(paths: list[str], limit: int = 5) -> str:
    shown = ", ".join(paths[:limit])
    return shown if len(paths) <= limit else f"{shown} and {len(paths) - limit} more"


def raise_level(risk: dict[str, Any], level: str, reason: str = "") -> None:
    """Raise ``risk`` to ``level`` if that is higher, and add the reason if there is one."""
    if LEVELS.index(level) > LEVELS.index(risk["level"]):
        risk["level"] = level
    if reason:
        risk["reasons"].append(reason)


def assess_risk(
    files: list[dict[str, Any]],
    diffstat: dict[str, int],
    protected: list[str],
    *,
    removed: int,
    downgrade: bool,
) -> dict[str, Any]:
    """Start low; each reason a person should weigh raises the level and says why."""
    risk: dict[str, Any] = {"level": "low", "reasons": []}
    if protected:
        noun = "protected path" if len(protected) == 1 else "protected paths"
        raise_level(risk, "high", f"touches {noun} {_first_few(protected)}")
    count = diffstat["files"]
    if count > HIGH_FILES:
        raise_level(risk, "high", f"{count} files changed")
    elif count > MEDIUM_FILES:
        raise_level(risk, "medium", f"{count} files changed")
    lines = diffstat["insertions"] + diffstat["deletions"]
    if lines > HIGH_LINES:
        raise_level(risk, "high", f"{lines} lines changed")
    elif lines > MEDIUM_LINES:
        raise_level(risk, "medium", f"{lines} lines changed")
    if downgrade:
        raise_level(risk, "medium", f"rolls back {plural(removed, 'commit')}")
    elif removed:
        dropped = f"drops {plural(removed, 'commit')} live has that the target lacks"
        raise_level(risk, "medium", dropped)
    paths = touched_paths(files)
    manifests = [p for p in paths if matches(p, DEPENDENCY_MANIFESTS)]
    if manifests:
        raise_level(risk, "medium", f"changes dependencies: {_first_few(manifests)}")
    migrations = [p for p in paths if MIGRATION_DIRS & set(p.split("/")[:-1])]
    if migrations:
        raise_level(risk, "medium", f"includes migrations: {_first_few(migrations)}")
    return risk


def sandbox_risk(risk: dict[str, Any], confinement: Confinement) -> None:
    """Where the tests will run, when it is not the whole sandbox: a person weighs it."""
    if not confinement.sandboxed:
        raise_level(risk, "low", confinement.describe())
    elif confinement.network == NETWORK_HOST:
        raise_level(risk, "low", 'its tests run with the host\'s network (test_network = "host")')
