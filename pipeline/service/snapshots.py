"""Snapshots of the live checkout, the sandbox worktree, applying and rolling back.

A snapshot is the exact commit and branch of a clean live checkout. Returning
to it is a hard reset plus removing untracked files (ignored ones, such as a
virtualenv or Molt's data dir, stay), and is verified: HEAD is the snapshot's
commit, on its branch, and nothing is left dirty.
"""

from __future__ import annotations

import fcntl
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.exceptions import GitError, RollbackFailed, UpdateFailed
from pipeline.git import Git


@dataclass(frozen=True)
class Snapshot:
    commit: str
    branch: str  # "" when the live checkout was on a detached HEAD
    taken_at: float

    @property
    def short(self) -> str:
        return self.commit[:7]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        return cls(commit=data["commit"], branch=data.get("branch", ""), taken_at=data["taken_at"])


def take(live: Git) -> Snapshot:
    """Record what to return to; the checkout must be clean to be restorable."""
    dirty = live.dirty()
    if dirty:
        shown = ", ".join(line[3:] for line in dirty[:5])
        raise UpdateFailed("snapshot", f"the live checkout has uncommitted changes: {shown}")
    return Snapshot(commit=live.head(), branch=live.branch(), taken_at=time.time())


def move_to(live: Git, commit: str, branch: str) -> None:
    """Point the live checkout at ``commit``, keeping it on ``branch`` if it had one."""
    if branch:
        if live.branch() != branch:
            live.run("checkout", "--force", "--quiet", branch)
        live.run("reset", "--hard", "--quiet", commit)
    else:
        live.run("checkout", "--force", "--quiet", "--detach", commit)
    live.run("clean", "-fd", "--quiet")


def restore(live: Git, snapshot: Snapshot) -> float:
    """Return the live checkout to ``snapshot`` and prove it; returns the seconds taken."""
    started = time.monotonic()
    try:
        move_to(live, snapshot.commit, snapshot.branch)
        head, branch, dirty = live.head(), live.branch(), live.dirty()
    except GitError as exc:
        raise RollbackFailed("rollback", f"restoring snapshot {snapshot.short}: {exc}") from exc
    if head != snapshot.commit or branch != snapshot.branch or dirty:
        raise RollbackFailed(
            "rollback",
            f"restoring snapshot {snapshot.short}: HEAD is {head[:7]} on {branch or 'detached'}"
            f" with {len(dirty)} dirty paths",
        )
    return time.monotonic() - started


class Sandbox:
    """A git worktree of the target, reused across updates (creating one is slow).

    Only the holder of its file lock uses it, so a pre-flight test run and an
    update never share a working tree.
    """

    def __init__(self, live: Git, path: Path) -> None:
        self.live = live
        self.path = path
        self.git = Git(path)

    @contextmanager
    def locked(self) -> Iterator[Sandbox]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.path}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield self

    def busy(self) -> bool:
        """Whether someone holds its lock now (without waiting for it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.path}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
            return False

    def prepare(self) -> None:
        """Create the worktree ahead of the first update (``git worktree add`` is the slow part)."""
        if (self.path / ".git").exists():
            return
        with self.locked():
            if not (self.path / ".git").exists():
                self.checkout(self.live.head())

    def checkout(self, commit: str) -> Path:
        """Make the sandbox an exact, pristine copy of ``commit``."""
        if not (self.path / ".git").exists():
            if self.path.exists():
                shutil.rmtree(self.path)
            self.live.run("worktree", "prune")
            self.live.run("worktree", "add", "--force", "--detach", str(self.path), commit)
        else:
            self.git.run("checkout", "--force", "--quiet", "--detach", commit)
        self.git.run("clean", "-fdxq")
        if self.git.head() != commit:
            raise UpdateFailed("sandbox", f"sandbox is at {self.git.head()[:7]}, not {commit[:7]}")
        return self.path
