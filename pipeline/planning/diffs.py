"""What changes between two commits, and which of the changed paths are protected.

Both planners and the worker's scope check read changes through here: the paths a change
touches (old and new names of a move) and the protected ones among them.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from pipeline.git import Git

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
    "pipeline/intake/approval.py",
    "pipeline/queue/locking.py",
    "pipeline/service/snapshots.py",
    "pipeline/audit.py",
    "pipeline/config.py",
    "pipeline/requests/states.py",
    "pipeline/requests/store.py",
    "pipeline/requests/authorisation.py",
    "pipeline/requests/decisions.py",
    "pipeline/update/jobs.py",
    "pipeline/update/change.py",
    "pipeline/service/rollback.py",
    "pipeline/update/recovery.py",
    "pipeline/update/repair.py",
    "pipeline/update/backups.py",
    "pipeline/redaction.py",
    "pipeline/releases/signing.py",
    "pipeline/releases/manifests.py",
    "pipeline/releases/keys.py",
    "pipeline/releases/trees.py",
    "pipeline/releases/ledger.py",
    "pipeline/releases/verification.py",
    "pipeline/update/release_rollback.py",
    "pipeline/update/bootguard.py",
    "pipeline/releases/boots.py",
    "pipeline/service/restart.py",
    "pipeline/keyspace.py",
    "pipeline/queue/targets.py",
    "pipeline/processes.py",
    "pipeline/queue/workers.py",
    "pipeline/llm/tools.py",
    "pipeline/llm/agent.py",
    "pipeline/llm/turns.py",
    "pipeline/llm/scope.py",
)


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


def touched_paths(files: list[dict[str, Any]]) -> list[str]:
    """New and old paths: moving a protected file away touches it too."""
    paths = {f["path"] for f in files} | {f["old_path"] for f in files if f.get("old_path")}
    return sorted(paths)


def matches(path: str, patterns: tuple[str, ...]) -> bool:
    """fnmatch on the whole path, and on the file name for a pattern without "/"."""
    name = path.rsplit("/", 1)[-1]
    return any(
        fnmatch.fnmatchcase(path, pattern)
        or ("/" not in pattern and fnmatch.fnmatchcase(name, pattern))
        for pattern in patterns
    )


def protected_paths(paths: list[str]) -> list[str]:
    return [path for path in paths if matches(path, PROTECTED_PATHS)]
