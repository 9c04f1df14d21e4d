"""The model's tools stay inside the repository: no "..", no absolute paths, no symlink out,
nothing under .git, no protected path the plan does not cover."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline.git import Git
from pipeline.llm.tools import CommitFiles, Refused, SandboxFiles, clean_path

SECRET_FILE = "TOKEN = 'xoxb-1234-abcdefghijkl'\n"


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    place = tmp_path / "outside"
    place.mkdir()
    (place / "victim.txt").write_text("untouched\n")
    return place


@pytest.fixture
def repo(tmp_path: Path, outside: Path) -> Path:
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "app.py").write_text("def greet():\n    return 'hello'\n\n\ndef part():\n    pass\n")
    (root / "pkg/mod.py").write_text("from app import greet\n")
    (root / "settings_local.py").write_text(SECRET_FILE)
    (root / "molt.toml").write_text("MOLT_APPROVERS = 'console:alice'\n")
    os.symlink(outside, root / "escape")
    os.symlink(outside / "victim.txt", root / "victim_link.txt")
    os.symlink("molt.toml", root / "config_link.toml")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "first")
    return root


def _files(root: Path, **kwargs: Any) -> SandboxFiles:
    planned = frozenset({"app.py", "pkg/new.py", "molt.toml"})
    return SandboxFiles(root=root, planned=planned, test_command="true", **kwargs)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../outside/victim.txt", "'..' is refused"),
        ("pkg/../../outside/victim.txt", "'..' is refused"),
        ("/etc/passwd", "absolute paths are refused"),
        ("~/.ssh/id_rsa", "absolute paths are refused"),
        ("C:/Windows/win.ini", "absolute paths are refused"),
        (".git/config", "nothing under .git"),
        ("pkg/.GIT/HEAD", "nothing under .git"),
        ("pkg\\mod.py", "write paths with '/'"),
        ("app.py\x00.txt", "control characters"),
        ("", "a file path is needed"),
    ],
)
def test_paths_that_leave_the_repository_are_refused(path: str, why: str) -> None:
    with pytest.raises(Refused, match=why):
        clean_path(path)


def test_paths_are_normalised() -> None:
    assert clean_path("./pkg//mod.py") == "pkg/mod.py"
    assert clean_path("", root_ok=True) == ""


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("read_file", {"path": "../outside/victim.txt"}),
        ("read_file", {"path": "/etc/hostname"}),
        ("read_file", {"path": "escape/victim.txt"}),
        ("read_file", {"path": "victim_link.txt"}),
        ("write_file", {"path": "escape/evil.py", "content": "x = 1\n"}),
        ("write_file", {"path": "escape/new/evil.py", "content": "x = 1\n"}),
        ("write_file", {"path": "/tmp/evil.py", "content": "x = 1\n"}),
        ("edit_file", {"path": "victim_link.txt", "old_text": "untouched", "new_text": "owned"}),
        ("delete_file", {"path": "escape/victim.txt"}),
        ("delete_file", {"path": "victim_link.txt"}),
        ("write_file", {"path": ".git/hooks/pre-commit", "content": "#!/bin/sh\n"}),
        ("list_files", {"path": "escape"}),
        ("search", {"pattern": "untouched", "path": "escape"}),
    ],
)
def test_tool_calls_that_escape_the_sandbox_are_refused_and_change_nothing(
    repo: Path, outside: Path, tool: str, args: dict[str, str]
) -> None:
    files = _files(repo)
    result = files.call(tool, args)
    assert result.is_error
    assert result.content.startswith("refused: ")
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert (outside / "victim.txt").read_text() == "untouched\n"
    assert not list(Path("/tmp").glob("evil.py"))
    assert files.touched == set()


def test_writing_through_a_symlink_inside_the_repository_is_refused(repo: Path) -> None:
    result = _files(repo, protected_ok=frozenset({"molt.toml"})).call(
        "write_file", {"path": "config_link.toml", "content": "x = 1\n"}
    )
    assert result.is_error and "symlink" in result.content
    assert (repo / "molt.toml").read_text() == "MOLT_APPROVERS = 'console:alice'\n"


@pytest.mark.parametrize(
    "path", ["molt.toml", "pipeline/intake/approval.py", ".env", "keys/deploy.pem"]
)
def test_protected_paths_are_refused_unless_the_plan_allows_them(repo: Path, path: str) -> None:
    result = _files(repo).call("write_file", {"path": path, "content": "MOLT_APPROVERS = 'x'\n"})
    assert result.is_error and "protected path" in result.content
    assert (repo / "molt.toml").read_text() == "MOLT_APPROVERS = 'console:alice'\n"


def test_a_protected_path_listed_by_a_high_risk_plan_may_change(repo: Path) -> None:
    files = _files(repo, protected_ok=frozenset({"molt.toml"}))
    result = files.call("edit_file", {"path": "molt.toml", "old_text": "alice", "new_text": "bob"})
    assert not result.is_error
    assert (repo / "molt.toml").read_text() == "MOLT_APPROVERS = 'console:bob'\n"
    assert files.touched == {"molt.toml"}


def test_writing_and_editing_inside_the_repository(repo: Path) -> None:
    files = _files(repo)
    made = files.call("write_file", {"path": "pkg/new.py", "content": "VALUE = 1\n"})
    assert made.content.startswith("created pkg/new.py") and not made.is_error
    edited = files.call(
        "edit_file", {"path": "app.py", "old_text": "'hello'", "new_text": "'hello there'"}
    )
    assert edited.content == "edited app.py."
    assert "return 'hello there'" in (repo / "app.py").read_text()
    assert files.touched == {"pkg/new.py", "app.py"}


def test_an_edit_must_match_exactly_once(repo: Path) -> None:
    files = _files(repo)
    twice = files.call("edit_file", {"path": "app.py", "old_text": "def ", "new_text": "x"})
    assert twice.is_error and "occurs 2 times" in twice.content
    missing = files.call("edit_file", {"path": "app.py", "old_text": "nope", "new_text": "x"})
    assert missing.is_error and "does not occur" in missing.content


def test_a_file_outside_the_plan_gets_a_deviation_warning(repo: Path) -> None:
    result = _files(repo).call("write_file", {"path": "NOTES.md", "content": "notes\n"})
    assert not result.is_error
    assert "not in the approved plan" in result.content and "deviation" in result.content


def test_secrets_cannot_be_written_back_redacted(repo: Path) -> None:
    files = _files(repo, allow_unplanned=True)
    whole = files.call("write_file", {"path": "settings_local.py", "content": "TOKEN = 1\n"})
    assert whole.is_error and "holds secrets" in whole.content
    masked = files.call("write_file", {"path": "pkg/new.py", "content": "TOKEN = [redacted]\n"})
    assert masked.is_error
    edit = files.call(
        "edit_file",
        {"path": "settings_local.py", "old_text": "TOKEN = [redacted]", "new_text": "TOKEN = 2"},
    )
    assert edit.is_error and "hides a secret" in edit.content
    assert (repo / "settings_local.py").read_text() == SECRET_FILE


def test_reading_listing_and_searching(repo: Path) -> None:
    files = _files(repo)
    read = files.call("read_file", {"path": "app.py", "start_line": 2, "max_lines": 1})
    assert '<untrusted source="file" path="app.py" lines="2-2 of 6">' in read.content
    assert "    2      return 'hello'" in read.content
    assert "start_line=3" in read.content
    listed = files.call("list_files", {}).content
    assert "pkg/mod.py" in listed and ".git" not in listed
    found = files.call("search", {"pattern": "def (greet|part)"}).content
    assert "app.py:1:def greet():" in found and "app.py:5:def part():" in found
    # A pattern is only ever a pattern, never an option of git grep.
    assert files.call("search", {"pattern": "--output=/tmp/x"}).content == "no matches"
    assert files.call("nope", {}).is_error


def test_the_test_command_is_the_only_command(repo: Path) -> None:
    files = _files(repo)
    files.test_command = "echo 3 passed; exit 1"
    result = files.call("run_tests", {"command": "rm -rf /"})
    assert result.is_error and "run_tests takes no command" in result.content
    result = files.call("run_tests", {})
    assert "exit 1, 3 passed" in result.content
    assert files.last_tests_ok is False


def test_the_planner_reads_the_commit_not_the_work_tree(repo: Path) -> None:
    (repo / "app.py").write_text("changed in the work tree\n")
    view = CommitFiles(Git(repo), _git(repo, "rev-parse", "HEAD"))
    assert "def greet" in view.call("read_file", {"path": "app.py"}).content
    assert view.call("read_file", {"path": "victim_link.txt"}).is_error
    assert view.call("read_file", {"path": "../outside/victim.txt"}).is_error
    assert view.call("write_file", {"path": "app.py", "content": ""}).is_error
    assert "app.py:1:def greet" in view.call("search", {"pattern": "greet"}).content
