"""A fix proves itself first: its test fails on the base the way production failed, and
passes on the fix.

Before phase 1 of a Fix it request (pipeline/update/change.py), the tests the change added
or modified are copied onto a clean checkout of the base commit in the update's sandbox
and run there with the target's test command, confined and reaped as every test run
(pipeline/sandbox/validation.py); then they run on the fix. On the base they must fail,
and for an incident whose source names an exception (a traceback in the log, a Sentry
issue) with that exception type, and at the same innermost frame of the service's own code
when it is known; on the fix they must pass. A test that does not even load on the base
(it imports what only the fix adds) proves nothing there and is refused. A pytest command
runs only those files, with native tracebacks; any other runs whole, and its output's
tracebacks are read the way the log watcher reads the service's log
(pipeline/incidents/logwatch.py).
"""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.git import Git
from pipeline.incidents.logwatch import LineReader
from pipeline.llm.proposal import is_test_path
from pipeline.planning.diffs import changed_files
from pipeline.sandbox.validation import PhaseSpec, TestRun, run_tests
from pipeline.service.snapshots import Sandbox

#: pytest's exit code when tests ran and some failed (2: interrupted, as by a test file that
#: cannot be imported; 5: no tests collected).
PYTEST_FAILED = 1
_FRAME = re.compile(r'File "(?P<path>[^"]+)", line \d+, in (?P<func>\S+)')


@dataclass(frozen=True)
class Proof:
    """What reproducing the incident showed: ``ok``, or ``reason`` it was refused."""

    ok: bool
    reason: str = ""
    test: str = ""  # "test_handlers.py::test_zero_count"
    kind: str = ""  # the exception type it failed with on the base, if it showed one
    frame: str = ""  # the innermost frame of the service's own code, "handlers.py:handle"
    base: str = ""
    fix: str = ""
    seconds: float = 0.0

    def shown(self) -> str:
        """The proof as the success message and the pull request show it."""
        how = (
            f" with {self.kind}" + (f" at {self.frame}" if self.frame else "") if self.kind else ""
        )
        return f"{self.test} failed on {self.base[:7]}{how}, passes on {self.fix[:7]}"


@dataclass(frozen=True)
class Raised:
    """One traceback of a test run: its exception type, its innermost own frame, and the
    test it went through ("" if none of the fix's tests)."""

    kind: str
    frame: str
    test: str

    def shown(self) -> str:
        where = f" at {self.frame}" if self.frame else ""
        return f"{self.kind}{where}" + (f" in {self.test}" if self.test else "")


def added_tests(git: Git, base: str, fix: str) -> list[str]:
    """The test files the fix adds or modifies."""
    changed = changed_files(git, base, fix)
    return [f["path"] for f in changed if f["status"] != "D" and is_test_path(f["path"])]


def is_pytest(command: str) -> bool:
    return any(w == "pytest" or w.endswith("/pytest") for w in shlex.split(command))


def command_for(command: str, tests: list[str]) -> str:
    """The test command narrowed to ``tests`` when it is pytest (native tracebacks, which
    name the exception and frames as the log does); any other runs as it is."""
    if not is_pytest(command):
        return command
    return " ".join([command, "--tb=native", *(shlex.quote(t) for t in tests)])


def raised(output: str, own_code: Path, tests: list[str]) -> list[Raised]:
    """The tracebacks in a test run's output."""
    reader = LineReader(own_code)
    found = []
    for seen in map(reader.feed, output.splitlines(keepends=True)):
        if seen is None or "\n" not in seen.excerpt.strip():  # an error line, not a traceback
            continue
        kind, _, frame = seen.signature.partition(" at ")
        found.append(Raised(kind, frame, _test_of(seen.excerpt, tests)))
    return found


def _test_of(block: str, tests: list[str]) -> str:
    """The outermost frame in one of ``tests``: ``test_handlers.py::test_zero_count``."""
    names = {t.rsplit("/", 1)[-1] for t in tests}
    for frame in _FRAME.finditer(block):
        name = frame["path"].rsplit("/", 1)[-1]
        if name in names:
            return f"{name}::{frame['func']}"
    return ""


def same_frame(seen: str, wanted: str) -> bool:
    """Frames as ``path:function``; paths compared by file name (a sandbox's and the live
    checkout's differ above it)."""
    seen_path, _, seen_func = seen.rpartition(":")
    wanted_path, _, wanted_func = wanted.rpartition(":")
    return seen_func == wanted_func and Path(seen_path).name == Path(wanted_path).name


def matching(found: list[Raised], failure: dict[str, Any]) -> Raised | None:
    """The traceback through a fix's test that shows the incident's failure, or None."""
    kind, frame = str(failure.get("kind") or ""), str(failure.get("frame") or "")
    for one in found:
        if not one.test:
            continue
        if not kind and one.test.endswith("::<module>"):  # the test file did not even load
            continue
        if kind and one.kind != kind and not one.kind.endswith(f".{kind}"):
            continue
        if kind and frame and not same_frame(one.frame, frame):
            continue
        return one
    return None


def expected(failure: dict[str, Any]) -> str:
    kind, frame = str(failure.get("kind") or ""), str(failure.get("frame") or "")
    return (f"{kind} at {frame}" if frame else kind) if kind else "a failure in its own tests"


def reproduce(
    sandbox: Sandbox,
    spec: PhaseSpec,
    base: str,
    fix: str,
    failure: dict[str, Any],
    *,
    log_path: Path | None = None,
    stop: Callable[[], bool] | None = None,
    started: Callable[[int], None] | None = None,
) -> Proof:
    """Run the fix's tests on ``base`` (copied onto a clean checkout of it) and on ``fix``;
    the sandbox is back at ``fix`` afterwards."""
    began = time.monotonic()
    tests = added_tests(sandbox.git, base, fix)
    if not tests:
        return Proof(False, "the fix adds or changes no test that reproduces the incident")
    path = sandbox.checkout(fix)
    astray = _astray(path, tests, fix)
    if astray:
        return Proof(False, astray)
    written = {t: (path / t).read_bytes() for t in tests}
    command = command_for(spec.test_command, tests)
    try:
        path = sandbox.checkout(base)
        astray = _astray(path, tests, base)
        if astray:
            return Proof(False, astray)
        for rel, content in written.items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_bytes(content)
        on_base = _run(command, path, spec, log_path, stop, started)
    finally:
        path = sandbox.checkout(fix)
    listed = ", ".join(tests)
    if on_base.exit_code is None:
        return Proof(False, f"{listed} did not finish on {base[:7]}: {_ended(on_base, spec)}")
    if on_base.ok:
        return Proof(False, f"{listed} pass on {base[:7]}: they do not reproduce the incident")
    if is_pytest(spec.test_command) and on_base.exit_code != PYTEST_FAILED:
        return Proof(
            False,
            f"{listed} did not run on {base[:7]} (pytest exited {on_base.exit_code}: "
            f"{_last(on_base.output)}): a reproducing test must run on it and fail",
        )
    found = raised(on_base.output, path.resolve(), tests)
    match = matching(found, failure)
    if match is None and not failure.get("kind") and not found:
        match = Raised("", "", listed)  # a runner that prints no tracebacks: it failed
    if match is None:
        other = next((f for f in found if f.test), found[0] if found else None)
        seen = f"with {other.shown()}" if other else "without a traceback"
        return Proof(False, f"{listed} fail on {base[:7]} {seen}, not with {expected(failure)}")
    on_fix = _run(command, path, spec, log_path, stop, started)
    if not on_fix.ok:
        why = _ended(on_fix, spec) if on_fix.exit_code is None else _last(on_fix.output)
        return Proof(False, f"{match.test} fails on the fix {fix[:7]} too: {why}")
    seconds = time.monotonic() - began
    return Proof(True, "", match.test, match.kind, match.frame, base, fix, seconds)


def _astray(root: Path, tests: list[str], commit: str) -> str:
    """Why a test file cannot be copied safely at ``commit``: it is a symlink, or a
    directory above it leads out of the checkout (Molt copies them itself, outside any
    sandbox); "" if none."""
    top = os.path.realpath(root)
    for rel in tests:
        full = root / rel
        if full.is_symlink() or not os.path.realpath(full).startswith(top + os.sep):
            return (
                f"{rel} is a symlink at {commit[:7]}, or a symlink above it leads out of the "
                "checkout: test files are copied only as files inside it"
            )
    return ""


def _run(
    command: str,
    path: Path,
    spec: PhaseSpec,
    log_path: Path | None,
    stop: Callable[[], bool] | None,
    started: Callable[[int], None] | None,
) -> TestRun:
    return run_tests(command, path, spec.timeout, log_path, stop, None, started, spec.confinement)


def _ended(run: TestRun, spec: PhaseSpec) -> str:
    return "stopped" if run.stopped else spec.limit.exceeded(spec.test_command)


def _last(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return " / ".join(lines[-2:])[:300]
