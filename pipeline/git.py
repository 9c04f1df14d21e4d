"""Running git: every call has a timeout and fails with the command and its output."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from pipeline.exceptions import GitError

#: Keep git from asking anyone anything, and from reading the user's hooks.
_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "true",
    "SSH_ASKPASS": "true",
    "GIT_OPTIONAL_LOCKS": "0",
    "LC_ALL": "C",
}
#: git's own housekeeping (``gc --auto``, ``maintenance run --auto``) starts after a commit,
#: fetch or push and goes on in the background: it would outlive the work Molt started git
#: for, and make a step take as long as a repository's repacking.
_NO_HOUSEKEEPING = ("-c", "maintenance.auto=false", "-c", "gc.auto=0")


class Git:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def run(
        self,
        *args: str,
        timeout: float = 60,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> str:
        encoded = input.encode() if input is not None else None
        out = self.run_bytes(*args, timeout=timeout, check=check, input=encoded, env=env)
        return out.decode("utf-8", "replace")

    def run_bytes(
        self,
        *args: str,
        timeout: float = 60,
        check: bool = True,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> bytes:
        """The raw output, for byte counts that matter (cat-file) or text that may not be UTF-8."""
        try:
            result = subprocess.run(
                ["git", "-C", str(self.path), *_NO_HOUSEKEEPING, *args],
                capture_output=True,
                timeout=timeout,
                env={**os.environ, **_ENV, **(env or {})},
                input=input,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise GitError(list(args), -1, f"timed out after {timeout:.0f}s") from exc
        if check and result.returncode != 0:
            output = result.stderr or result.stdout
            raise GitError(list(args), result.returncode, output.decode("utf-8", "replace"))
        return result.stdout

    def ok(self, *args: str, timeout: float = 60) -> bool:
        try:
            self.run(*args, timeout=timeout)
        except GitError:
            return False
        return True

    def head(self) -> str:
        return self.run("rev-parse", "HEAD").strip()

    def branch(self) -> str:
        """The checked-out branch, or "" when HEAD is detached."""
        out = self.run("symbolic-ref", "--quiet", "--short", "HEAD", check=False).strip()
        return out

    def dirty(self) -> list[str]:
        """Changed or untracked (not ignored) paths, as git status shows them."""
        out = self.run("status", "--porcelain", "--untracked-files=all")
        return [line for line in out.splitlines() if line.strip()]

    def resolve(self, rev: str) -> str:
        return self.run("rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}").strip()
