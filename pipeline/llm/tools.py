"""The narrow tools the model may call, each confined to one repository.

Reading (planner and implementer): list_files, read_file, search. Writing (the implementer
only, in the sandbox worktree): write_file, edit_file, delete_file, and run_tests, which runs
the configured test command and nothing else. Paths are relative to the repository root;
absolute paths, ``..``, anything under ``.git``, and anything a symlink leads out of the root
to are refused, and so are protected paths unless the approved plan lists them and its risk is
high. A refusal goes back to the model as an error result: it is not a fault.
"""

from __future__ import annotations

import errno
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.exceptions import GitError
from pipeline.git import Git
from pipeline.llm.prompts import fence
from pipeline.planning.diffs import protected_paths
from pipeline.redaction import MASK, redact
from pipeline.sandbox.confinement import Confinement
from pipeline.sandbox.validation import run_tests

MAX_PATH = 400
MAX_LIST = 300
MAX_LINES = 400
MAX_READ_CHARS = 40_000
MAX_READ_BYTES = 2_000_000
MAX_WRITE_CHARS = 300_000
MAX_PATTERN = 200
MAX_MATCHES = 80
MAX_MATCH_LINE = 240
SEARCH_TIMEOUT = 20.0
TEST_TAIL_LINES = 60
TEST_TAIL_CHARS = 6_000

_DRIVE = re.compile(r"^[A-Za-z]:")


class Refused(Exception):
    """A call the tools do not allow; ``str(exc)`` is the reason the model reads."""


@dataclass(frozen=True)
class Result:
    content: str
    is_error: bool = False


def _schema(properties: dict[str, Any], required: Iterable[str] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_PATH = {"type": "string", "description": "relative to the repository root, e.g. pkg/app.py"}

READ_TOOLS: list[dict[str, Any]] = [
    {
        "name": "list_files",
        "description": "List the files under a directory of the repository (recursively).",
        "input_schema": _schema(
            {"path": {"type": "string", "description": "a directory; empty for the root"}}
        ),
    },
    {
        "name": "read_file",
        "description": f"Read a text file, with line numbers, at most {MAX_LINES} lines a call.",
        "input_schema": _schema(
            {
                "path": _PATH,
                "start_line": {"type": "integer", "minimum": 1, "description": "default 1"},
                "max_lines": {"type": "integer", "minimum": 1, "maximum": MAX_LINES},
            },
            ["path"],
        ),
    },
    {
        "name": "search",
        "description": "Search text files for an extended regular expression (git grep -E); "
        f"returns at most {MAX_MATCHES} matching lines as path:line:text.",
        "input_schema": _schema(
            {
                "pattern": {"type": "string", "maxLength": MAX_PATTERN},
                "path": {"type": "string", "description": "limit to a file or directory"},
            },
            ["pattern"],
        ),
    },
]

WRITE_TOOLS: list[dict[str, Any]] = [
    {
        "name": "write_file",
        "description": "Create a file, or replace a whole file, with the given text.",
        "input_schema": _schema(
            {"path": _PATH, "content": {"type": "string", "maxLength": MAX_WRITE_CHARS}},
            ["path", "content"],
        ),
    },
    {
        "name": "edit_file",
        "description": "Replace one exact occurrence of old_text in a file with new_text. "
        "old_text must occur exactly once: include enough context.",
        "input_schema": _schema(
            {"path": _PATH, "old_text": {"type": "string"}, "new_text": {"type": "string"}},
            ["path", "old_text", "new_text"],
        ),
    },
    {
        "name": "delete_file",
        "description": "Delete a file.",
        "input_schema": _schema({"path": _PATH}, ["path"]),
    },
    {
        "name": "run_tests",
        "description": "Run the service's test command in the repository; returns the exit "
        "code and the end of its output. It is the only command you can run.",
        "input_schema": _schema({}),
    },
]


def clean_path(raw: Any, *, root_ok: bool = False) -> str:
    """A repository-relative path in normal form, or ``Refused`` saying why not."""
    if not isinstance(raw, str):
        raise Refused("the path must be a string")
    text = raw.strip()
    shown = repr(text[:80])
    if len(text) > MAX_PATH:
        raise Refused(f"{shown}…: the path is longer than {MAX_PATH} characters")
    if any(not ch.isprintable() for ch in text):
        raise Refused(f"{shown}: control characters are refused in paths")
    if "\\" in text:
        raise Refused(f"{shown}: write paths with '/'")
    if text.startswith(("/", "~")) or _DRIVE.match(text):
        raise Refused(
            f"{shown}: absolute paths are refused; paths are relative to the repository root"
        )
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise Refused(f"{shown}: '..' is refused; paths stay inside the repository")
    if any(part.lower() == ".git" for part in parts):
        raise Refused(f"{shown}: nothing under .git may be read or changed")
    if not parts and not root_ok:
        raise Refused("a file path is needed")
    return "/".join(parts)


def _numbered(path: str, text: str, start: int, count: int) -> str:
    lines = text.splitlines()
    total = len(lines)
    first = min(max(1, start), max(total, 1))
    chosen = lines[first - 1 : first - 1 + count]
    body, used = [], 0
    for n, line in enumerate(chosen, start=first):
        row = f"{n:>5}  {line}"
        if used + len(row) > MAX_READ_CHARS:
            break
        body.append(row)
        used += len(row) + 1
    last = first + len(body) - 1
    more = f"; continue with start_line={last + 1}" if last < total else ""
    return fence("file", "\n".join(body), path=path, lines=f"{first}-{last} of {total}") + more


def _integer(args: dict[str, Any], name: str, default: int, top: int) -> int:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refused(f"{name} must be an integer")
    return max(1, min(top, value))


def _text(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str):
        raise Refused(f"{name} must be a string")
    return value


class Files(ABC):
    """The read tools over one repository; ``call`` is what the model's tool use runs."""

    tools: list[dict[str, Any]] = READ_TOOLS

    def call(self, name: str, args: Any) -> Result:
        if not isinstance(args, dict):
            return Result("the tool input must be an object", True)
        handler = getattr(self, f"_tool_{name}", None)
        schema = next((t["input_schema"] for t in self.tools if t["name"] == name), None)
        if handler is None or schema is None:
            return Result(f"there is no tool {name!r} here", True)
        unknown = sorted(set(args) - set(schema["properties"]))
        if unknown:
            return Result(f"refused: {name} takes no {', '.join(unknown)}", True)
        try:
            return Result(handler(args))
        except Refused as exc:
            return Result(f"refused: {exc}", True)

    def _tool_list_files(self, args: dict[str, Any]) -> str:
        where = clean_path(args.get("path", ""), root_ok=True)
        found = self.listing(where)
        if not found:
            return f"no files under {where or 'the root'}"
        lines = [f"{path} ({size} B)" for path, size in found[:MAX_LIST]]
        if len(found) > MAX_LIST:
            lines.append(f"… and {len(found) - MAX_LIST} more: list a subdirectory")
        return fence("file list", "\n".join(lines), path=where or ".")

    def _tool_read_file(self, args: dict[str, Any]) -> str:
        path = clean_path(args.get("path"))
        start = _integer(args, "start_line", 1, 10**7)
        count = _integer(args, "max_lines", MAX_LINES, MAX_LINES)
        data = self.read(path)
        if b"\0" in data[:8000]:
            return f"{path} is a binary file of {len(data)} bytes"
        return _numbered(path, data.decode("utf-8", "replace"), start, count)

    def _tool_search(self, args: dict[str, Any]) -> str:
        pattern = _text(args, "pattern")
        if not pattern or len(pattern) > MAX_PATTERN:
            raise Refused(f"the pattern must have 1 to {MAX_PATTERN} characters")
        where = clean_path(args.get("path", ""), root_ok=True)
        lines = self.grep(pattern, where)
        if not lines:
            return "no matches"
        shown = [line[:MAX_MATCH_LINE] for line in lines[:MAX_MATCHES]]
        if len(lines) > MAX_MATCHES:
            shown.append("… more matches: narrow the pattern or the path")
        return fence("search results", "\n".join(shown), pattern=pattern[:60])

    def _grep(self, git: Git, args: list[str], prefix: str = "") -> list[str]:
        try:
            out = git.run_bytes("grep", *args, timeout=SEARCH_TIMEOUT)
        except GitError as exc:
            if exc.returncode == 1:
                return []
            raise Refused(f"search failed: {exc.output.strip()[-200:]}") from exc
        lines = out.decode("utf-8", "replace").splitlines()
        return [line.removeprefix(prefix) for line in lines if line]

    @abstractmethod
    def listing(self, where: str) -> list[tuple[str, int]]: ...

    @abstractmethod
    def read(self, path: str) -> bytes: ...

    @abstractmethod
    def grep(self, pattern: str, where: str) -> list[str]: ...


class CommitFiles(Files):
    """The repository at one commit, read from git objects (the planner's view)."""

    def __init__(self, git: Git, commit: str) -> None:
        self.git = git
        self.commit = commit
        self._entries: dict[str, tuple[str, int]] | None = None

    def entries(self) -> dict[str, tuple[str, int]]:
        """path -> (mode, size) of every file at the commit."""
        if self._entries is None:
            out = self.git.run_bytes(
                "ls-tree", "-r", "-l", "-z", "--full-tree", "--end-of-options", self.commit
            )
            found = {}
            for entry in out.split(b"\0"):
                meta, tab, raw = entry.partition(b"\t")
                parts = meta.split()
                if tab and len(parts) == 4 and parts[1] == b"blob":
                    size = int(parts[3]) if parts[3].isdigit() else 0
                    found[raw.decode("utf-8", "replace")] = (parts[0].decode(), size)
            self._entries = found
        return self._entries

    def listing(self, where: str) -> list[tuple[str, int]]:
        prefix = f"{where}/" if where else ""
        return [
            (path, size)
            for path, (_, size) in sorted(self.entries().items())
            if path.startswith(prefix) or path == where
        ]

    def read(self, path: str) -> bytes:
        found = self.entries().get(path)
        if found is None:
            raise Refused(f"{path}: no such file")
        mode, size = found
        if mode == "120000":
            raise Refused(f"{path} is a symlink; read the file it points to")
        if size > MAX_READ_BYTES:
            raise Refused(f"{path} has {size} bytes, more than can be read")
        return self.git.run_bytes("cat-file", "blob", f"{self.commit}:{path}")

    def grep(self, pattern: str, where: str) -> list[str]:
        spec = [f":(literal){where}"] if where else []
        args = ["-n", "-I", "-E", "--no-color", "-e", pattern, self.commit, "--", *spec]
        return self._grep(self.git, args, prefix=f"{self.commit}:")


@dataclass
class SandboxFiles(Files):
    """The sandbox worktree, read and written through the implementer's tools.

    ``planned`` are the files of the approved plan; ``protected_ok`` the protected paths it
    may change (listed in a high-risk plan). Every changed path is kept in ``touched``.
    """

    root: Path
    planned: frozenset[str]
    protected_ok: frozenset[str] = frozenset()
    allow_unplanned: bool = False
    test_command: str = ""
    test_timeout: float = 900.0
    deadline: float | None = None
    log_path: Path | None = None
    #: The sandbox the model's test runs run in (the target's, as in the phases).
    confinement: Confinement | None = None
    touched: set[str] = field(default_factory=set)
    tests_run: int = 0
    last_tests_ok: bool | None = None

    tools = READ_TOOLS + WRITE_TOOLS

    def __post_init__(self) -> None:
        self.root = Path(os.path.realpath(self.root))
        self.git = Git(self.root)

    # -- where a path leads --------------------------------------------------

    def resolve(self, path: str) -> tuple[Path, str]:
        """The real location of ``path`` and its real repository-relative name."""
        full = os.path.realpath(self.root / path)
        root = str(self.root)
        if full != root and not full.startswith(root + os.sep):
            raise Refused(f"{path}: a symlink leads outside the repository")
        inner = Path(os.path.relpath(full, root)).as_posix()
        inner = "" if inner == "." else inner
        if any(part.lower() == ".git" for part in inner.split("/")):
            raise Refused(f"{path}: nothing under .git may be read or changed")
        return Path(full), inner

    def _writable(self, path: str) -> tuple[Path, str, str]:
        """Where a write of ``path`` lands, its real name, and a note for the model."""
        if (self.root / path).is_symlink():
            raise Refused(f"{path} is a symlink; change the file it points to instead")
        full, inner = self.resolve(path)
        return full, inner, self._may_change(path, inner)

    def _may_change(self, path: str, inner: str) -> str:
        """Refuse protected paths the plan does not cover; a note for unplanned ones."""
        for name in dict.fromkeys((path, inner)):
            if protected_paths([name]) and name not in self.protected_ok:
                raise Refused(
                    f"{name} is a protected path (credentials, access control, CI or Molt's "
                    "own safety code); the approved plan does not list it, with high risk"
                )
        if inner not in self.planned and path not in self.planned:
            if self.allow_unplanned:
                return f" Note: {inner} is not in the approved plan; it will be reported."
            return (
                f" Warning: {inner} is not in the approved plan; changing it is a deviation "
                "and fails the update. Undo it unless the plan really needs it."
            )
        return ""

    # -- reading ---------------------------------------------------------------

    def listing(self, where: str) -> list[tuple[str, int]]:
        base, inner = self.resolve(where) if where else (self.root, "")
        if where and not base.is_dir():
            raise Refused(f"{where}: no such directory")
        out = self.git.run_bytes(
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
            *([f":(literal){inner}"] if inner else []),
        )
        found = []
        for raw in sorted(set(out.decode("utf-8", "replace").split("\0"))):
            if not raw:
                continue
            path = self.root / raw
            if path.is_file() or path.is_symlink():
                found.append((raw, path.lstat().st_size))
        return found

    def read(self, path: str) -> bytes:
        full, _ = self.resolve(path)
        if not full.is_file():
            raise Refused(f"{path}: no such file")
        size = full.stat().st_size
        if size > MAX_READ_BYTES:
            raise Refused(f"{path} has {size} bytes, more than can be read")
        return full.read_bytes()

    def grep(self, pattern: str, where: str) -> list[str]:
        inner = self.resolve(where)[1] if where else ""
        spec = [f":(literal){inner}"] if inner else []
        args = ["-n", "-I", "-E", "--no-color", "--untracked", "-e", pattern, "--", *spec]
        return self._grep(self.git, args)

    # -- writing ---------------------------------------------------------------

    def _write(self, full: Path, data: bytes) -> None:
        full.parent.mkdir(parents=True, exist_ok=True)
        parent = os.path.realpath(full.parent)
        if parent != str(self.root) and not parent.startswith(str(self.root) + os.sep):
            raise Refused(f"{full.name}: a symlink leads outside the repository")
        try:
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Refused(f"{full.name} is a symlink; it is not written through") from exc
            if exc.errno in (errno.EISDIR, errno.ENOTDIR):
                raise Refused(f"{full.name}: {exc.strerror}") from exc
            raise
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)

    def _tool_write_file(self, args: dict[str, Any]) -> str:
        path = clean_path(args.get("path"))
        content = _text(args, "content")
        if len(content) > MAX_WRITE_CHARS:
            raise Refused(f"the content is longer than {MAX_WRITE_CHARS} characters")
        if MASK in content:
            raise Refused(f"the content contains {MASK}: secrets cannot be written back")
        full, inner, note = self._writable(path)
        if full.is_file() and redact(full.read_text("utf-8", "replace")) != full.read_text(
            "utf-8", "replace"
        ):
            raise Refused(f"{inner} holds secrets shown to you as {MASK}; use edit_file")
        existed = full.exists()
        self._write(full, content.encode())
        self.touched.add(inner)
        verb = "replaced" if existed else "created"
        return f"{verb} {inner} ({len(content.encode())} bytes).{note}"

    def _tool_edit_file(self, args: dict[str, Any]) -> str:
        path = clean_path(args.get("path"))
        old, new = _text(args, "old_text"), _text(args, "new_text")
        if not old:
            raise Refused("old_text is empty")
        if MASK in new:
            raise Refused(f"new_text contains {MASK}: secrets cannot be written back")
        full, inner, note = self._writable(path)
        if not full.is_file():
            raise Refused(f"{path}: no such file; create it with write_file")
        text = full.read_text("utf-8", "replace")
        found = text.count(old)
        if found == 0:
            hint = (
                f" (text shown as {MASK} hides a secret and cannot be matched)"
                if MASK in old
                else "; read the file again for the exact text"
            )
            raise Refused(f"old_text does not occur in {inner}{hint}")
        if found > 1:
            raise Refused(f"old_text occurs {found} times in {inner}; include more context")
        self._write(full, text.replace(old, new, 1).encode())
        self.touched.add(inner)
        return f"edited {inner}.{note}"

    def _tool_delete_file(self, args: dict[str, Any]) -> str:
        path = clean_path(args.get("path"))
        full, inner, note = self._writable(path)
        if not full.is_file():
            raise Refused(f"{path}: no such file")
        full.unlink()
        self.touched.add(inner)
        return f"deleted {inner}.{note}"

    def _tool_run_tests(self, args: dict[str, Any]) -> str:
        timeout = self.test_timeout
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 1:
                raise Refused("no time is left to run the tests")
        run = run_tests(
            self.test_command, self.root, timeout, self.log_path, confinement=self.confinement
        )
        self.tests_run += 1
        self.last_tests_ok = run.ok
        if run.exit_code is None:
            status = f"did not finish within {timeout:.0f}s"
        else:
            status = f"exit {run.exit_code}" + (f", {run.passed} passed" if run.passed else "")
        tail = "\n".join(run.tail.splitlines()[-TEST_TAIL_LINES:])[-TEST_TAIL_CHARS:]
        return f"`{self.test_command}`: {status}\n" + fence("test output", tail)
