"""Validation phases: the same checks in the sandbox (phase one) and on the live
checkout (phase two): the test command passes within the phase timeout, every
changed Python file byte-compiles, and the number of passing tests does not drop.
With ``require_count`` (MOLT_REQUIRE_TESTS) the test command must also report at
least one passing test that can be counted.

A running command can be stopped early (an emergency stop): ``stop`` is asked
every ``STOP_POLL_SECONDS`` and, once true, the command's process group is killed. Its
output is read as it comes, so a watcher (pipeline/sandbox/progress.py) sees how far it got.
A test command runs in a process group of its own that ``started`` is told about (the
job records it, so that a rollback after the worker died kills it), and on Linux it is
killed with the process that started it.

When the test command fails, the failures run once more (pipeline/sandbox/reruns.py says what
runs): tests that then pass are flaky, named in the check, and with MOLT_FLAKY=pass the
phase passes when every failure passed; their passes count toward "passing tests". A
timeout or a stop is never run again.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import structlog

from pipeline.config import FLAKY_FAIL, FLAKY_PASS, Settings
from pipeline.processes import die_with_parent
from pipeline.sandbox import reruns
from pipeline.sandbox.confinement import Confinement, Launch
from pipeline.sandbox.records import TestLimit

logger = structlog.get_logger(__name__)

# "12 passed", "Ran 12 tests ... OK", "12 passed, 1 failed" (pytest, unittest, plain).
_PASSED = re.compile(r"\b(\d+) passed\b")
_UNITTEST = re.compile(r"^Ran (\d+) tests?\b.*?^OK\b", re.M | re.S)
_OUTPUT_TAIL = 4000
#: How often a running command asks whether it should stop.
STOP_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass(frozen=True)
class TestRun:
    ok: bool
    passed: int | None  # None when the output says nothing countable
    seconds: float
    exit_code: int | None  # None on timeout or when stopped
    tail: str
    stopped: bool = False
    output: str = field(default="", repr=False)
    #: The sandbox's limits it ran into, each a sentence naming the limit.
    limits: tuple[str, ...] = ()


@dataclass
class PhaseResult:
    phase: str
    checks: list[Check] = field(default_factory=list)
    passed: int | None = None
    test_seconds: float = 0.0
    #: Tests that failed, then passed when run again.
    flaky: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def reason(self) -> str:
        return "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
            "flaky": self.flaky,
        }


def count_passed(output: str) -> int | None:
    found = _PASSED.findall(output)
    if found:
        return int(found[-1])
    match = _UNITTEST.search(output)
    return int(match.group(1)) if match else None


def command_env() -> dict[str, str]:
    """The environment for the service's commands: Molt's interpreter first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("PYTHONPATH", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_command(
    command: str, cwd: Path, timeout: float, log_path: Path | None = None
) -> tuple[int | None, str, float]:
    """Run a shell command in its own process group; kill the whole group on timeout."""
    code, output, seconds, _ = _run(command, cwd, timeout, log_path, None)
    return code, output, seconds


def _run(
    command: str,
    cwd: Path,
    timeout: float,
    log_path: Path | None,
    stop: Callable[[], bool] | None,
    watch: Callable[[bytes], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    launch: Launch | None = None,
) -> tuple[int | None, str, float, bool]:
    """``run_command`` that also kills the group as soon as ``stop()`` says so; the last
    value says whether it did (the exit code is then None, as on a timeout). ``watch`` sees
    the output as it comes.

    With ``on_start`` (a test command) the group's id is handed to it once it runs, and the
    command dies with this process: a test command never outlives the update it checks.
    A restart command does not die with it (it may be what starts the service).

    With ``launch`` (a test command) it starts as pipeline/sandbox/confinement.py says: in its
    sandbox, and ended with everything it started."""
    started = time.monotonic()
    deadline = started + timeout
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(
            launch.argv if launch else command,
            shell=launch is None,
            cwd=cwd,
            env=launch.env if launch else command_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=launch.preexec if launch else die_with_parent() if on_start else None,
        )
        reader = _Reader(proc, watch)
        if on_start:
            on_start(proc.pid)
        code: int | None = None
        stopped = False
        try:
            while True:
                wait = deadline - time.monotonic()
                if stop is not None:
                    wait = min(wait, STOP_POLL_SECONDS)
                try:
                    # A sandboxed command's output ends with everything it started: waiting for
                    # that, rather than polling the process, sees a short command end at once.
                    if launch is not None and not reader.ended(max(wait, 0.01)):
                        raise subprocess.TimeoutExpired(command, wait)
                    code = proc.wait(timeout=max(wait, 0.01))
                    break
                except subprocess.TimeoutExpired:
                    stopped = stop is not None and stop()
                    if stopped or time.monotonic() >= deadline:
                        _end(proc, launch)
                        code = None
                        break
        except BaseException:  # a fault while it runs: it does not outlive the caller
            _end(proc, launch)
            raise
        out = reader.output()
        if log:
            log.write(f"$ {command}  (in {cwd})\n".encode())
            log.write(out)
            log.write(f"\n[exit {code} after {time.monotonic() - started:.2f}s]\n".encode())
        return code, out.decode(errors="replace"), time.monotonic() - started, stopped
    finally:
        if log:
            log.close()


def _end(proc: subprocess.Popen[bytes], launch: Launch | None) -> None:
    """Kill the command and what it started, and reap it."""
    if launch:
        launch.kill(proc)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class _Reader:
    """Reads a command's output as it comes, in a thread of its own, so that ``watch`` sees
    it while the command runs (progress) and a full pipe never holds the command up."""

    def __init__(self, proc: subprocess.Popen[bytes], watch: Callable[[bytes], None] | None):
        self._chunks: list[bytes] = []
        self._watch = watch
        self._thread = threading.Thread(
            target=self._read, args=(proc.stdout,), name="molt-output", daemon=True
        )
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        with stream:
            for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
                self._chunks.append(chunk)
                if self._watch is not None:
                    try:
                        self._watch(chunk)
                    except Exception as exc:  # progress is never worth the run
                        logger.warning("watching test output failed", error=str(exc))

    def ended(self, timeout: float) -> bool:
        """Whether the output ended, waiting up to ``timeout`` seconds for it."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def output(self) -> bytes:
        """Everything the command wrote, once its output ended."""
        self._thread.join()
        return b"".join(self._chunks)


def run_tests(
    command: str,
    cwd: Path,
    timeout: float,
    log_path: Path | None = None,
    stop: Callable[[], bool] | None = None,
    watch: Callable[[bytes], None] | None = None,
    started: Callable[[int], None] | None = None,
    confinement: Confinement | None = None,
) -> TestRun:
    """Run a test command in its sandbox (``confinement``, the target's; without one, the
    host's sandbox with nothing but the allowlisted environment)."""
    confinement = confinement or Confinement.default()
    with confinement.launch(command, cwd) as launch:
        code, output, seconds, stopped = _run(
            command, cwd, timeout, log_path, stop, watch, started or _unrecorded, launch
        )
        limits = tuple(launch.limits_reached(output)) if code != 0 and not stopped else ()
    return TestRun(
        ok=code == 0,
        passed=count_passed(output),
        seconds=seconds,
        exit_code=code,
        tail=output[-_OUTPUT_TAIL:],
        stopped=stopped,
        output=output,
        limits=limits,
    )


def why_failed(run: TestRun, limit: TestLimit, command: str) -> str:
    """What a failed test run says to a person: a timeout with its limit, or the exit code
    with the failing tests pytest named (else the last lines of the output)."""
    if run.exit_code is None:
        return limit.exceeded(command)
    failed = reruns.failed_tests(run.output)
    if failed:
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        return f"`{command}` exited {run.exit_code}; failed: {shown}"
    return f"`{command}` exited {run.exit_code}: {_last_lines(run.tail)}"


def _unrecorded(pid: int) -> None:
    """A test command nobody records still dies with the process that started it."""


def no_countable_tests(command: str) -> str:
    """Why a run without a count of passing tests is refused (MOLT_REQUIRE_TESTS)."""
    return (
        f'`{command}` ran no tests Molt could count (it looks for "N passed" or '
        'unittest\'s "Ran N tests … OK"), and MOLT_REQUIRE_TESTS is on'
    )


def compile_check(root: Path, paths: Iterable[str]) -> Check:
    """Byte-compile changed Python files in memory (nothing is written to the tree)."""
    started = time.monotonic()
    errors = []
    count = 0
    for rel in paths:
        if not rel.endswith(".py"):
            continue
        path = root / rel
        if not path.is_file():
            continue
        count += 1
        try:
            compile(path.read_bytes(), str(rel), "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:
            errors.append(f"{rel}: {exc}")
    seconds = time.monotonic() - started
    if errors:
        return Check("byte-compile", False, seconds, "; ".join(errors[:3]))
    return Check("byte-compile", True, seconds, f"{count} file{'' if count == 1 else 's'}")


@dataclass(frozen=True)
class PhaseSpec:
    """What every validation phase checks, from the settings: the sandbox's phase and the
    live checkout's run the same test command, with the same limits."""

    test_command: str
    timeout: float
    require_count: bool = False  # MOLT_REQUIRE_TESTS
    flaky: str = FLAKY_FAIL  # MOLT_FLAKY
    #: Why ``timeout`` is what it is, for the message of a run that exceeds it.
    timeout_basis: str = ""
    #: The sandbox the test command runs in (MOLT_SANDBOX, test_env, test_network, test_limits).
    confinement: Confinement | None = None

    @classmethod
    def from_settings(cls, settings: Settings, limit: TestLimit | None = None) -> PhaseSpec:
        """The phases' spec; ``limit`` (the target's, pipeline/sandbox/records.py) replaces
        MOLT_PHASE_TIMEOUT as the time the tests may take."""
        limit = limit or TestLimit(
            settings.phase_timeout, f"MOLT_PHASE_TIMEOUT={settings.phase_timeout:g} s"
        )
        return cls(
            settings.test_command,
            limit.seconds,
            settings.require_tests,
            settings.flaky,
            limit.basis,
            Confinement.of(settings),
        )

    @property
    def limit(self) -> TestLimit:
        return TestLimit(self.timeout, self.timeout_basis or f"{self.timeout:g} s")


def run_phase(
    phase: str,
    workdir: Path,
    spec: PhaseSpec,
    *,
    changed_files: Iterable[str],
    baseline_passed: int | None,
    log_path: Path | None = None,
    stop: Callable[[], bool] | None = None,
    watch: Callable[[bytes], None] | None = None,
    started: Callable[[int], None] | None = None,
) -> PhaseResult:
    """One validation phase; stops at the first failing check.

    ``spec.require_count``: the tests must report at least one passing test (a run that
    exits 0 without a countable "N passed" fails). ``stop``: asked while the tests run;
    once it says so, they are killed and the check says they were stopped. ``watch``: sees
    the test command's output as it comes. ``started``: told the test command's process
    group once it runs (the rerun's too). Failed tests are run once more (never after a
    timeout or a stop); ``spec.flaky`` says whether tests that then pass fail the phase.
    """
    result = PhaseResult(phase)
    compiled = compile_check(workdir, changed_files)
    result.checks.append(compiled)
    if not compiled.ok:
        return result
    tests = run_tests(
        spec.test_command, workdir, spec.timeout, log_path, stop, watch, started, spec.confinement
    )
    again = None
    if not tests.ok and not tests.stopped and tests.exit_code is not None:
        again = run_again(spec, workdir, tests, log_path, stop, started)
        result.flaky = list(again.flaky)
    result.test_seconds = tests.seconds + (again.run.seconds if again else 0.0)
    result.passed = again.passed if again and again.run.ok else tests.passed
    check = _tests_check(spec, tests, again, result.passed)
    result.checks.append(check)
    if check.ok and baseline_passed is not None:
        result.checks.append(passing_tests(result.passed, baseline_passed))
    return result


def passing_tests(passed: int | None, baseline: int) -> Check:
    """No phase may pass fewer tests than passed at the live commit."""
    dropped = passed is not None and passed < baseline
    return Check("passing tests", not dropped, 0.0, f"{passed} now, {baseline} before")


@dataclass(frozen=True)
class RunAgain:
    """The failed tests run once more: the run, what failed then passed (flaky), what failed
    again, and how many tests passed in all once the rerun's passes are counted."""

    rerun: reruns.Rerun
    run: TestRun
    flaky: tuple[str, ...]
    failed_again: tuple[str, ...]
    passed: int | None


def run_again(
    spec: PhaseSpec,
    workdir: Path,
    first: TestRun,
    log_path: Path | None,
    stop: Callable[[], bool] | None,
    started: Callable[[int], None] | None = None,
) -> RunAgain:
    """Run what failed once more, within what is left of the phase's time."""
    assert first.exit_code is not None
    rerun = reruns.plan_rerun(spec.test_command, first.output, first.exit_code)
    left = max(spec.timeout - first.seconds, 1.0)
    run = run_tests(
        rerun.command, workdir, left, log_path, stop, started=started, confinement=spec.confinement
    )
    flaky, again = reruns.judge(rerun, run.ok, run.output)
    passed = (first.passed or 0) + len(flaky) if rerun.only_failed else run.passed
    return RunAgain(rerun, run, flaky, again, passed)


def _tests_check(
    spec: PhaseSpec, tests: TestRun, again: RunAgain | None, passed: int | None
) -> Check:
    check = _tests_outcome(spec, tests, again, passed)
    limits = tests.limits + (again.run.limits if again else ())
    if check.ok or not limits:
        return check
    said = "; ".join(dict.fromkeys(limits))
    return Check(check.name, False, check.seconds, f"{check.detail}; {said}")


def _tests_outcome(
    spec: PhaseSpec, tests: TestRun, again: RunAgain | None, passed: int | None
) -> Check:
    command = spec.test_command
    seconds = tests.seconds + (again.run.seconds if again else 0.0)
    if tests.stopped or (again and again.run.stopped):
        return Check("tests", False, seconds, f"`{command}` was stopped")
    if tests.exit_code is None:
        return Check("tests", False, seconds, spec.limit.exceeded(command))
    if again is not None:
        return _after_rerun(spec, tests, again, passed, seconds)
    if spec.require_count and not tests.passed:
        return Check("tests", False, seconds, no_countable_tests(command))
    detail = f"{tests.passed} passed" if tests.passed is not None else "exit 0"
    return Check("tests", True, seconds, detail)


def _after_rerun(
    spec: PhaseSpec, tests: TestRun, again: RunAgain, passed: int | None, seconds: float
) -> Check:
    """The tests check once the failures ran again: passed only when every failure passed
    and MOLT_FLAKY=pass; either way the flaky tests are named."""
    flaky = ", ".join(again.flaky)
    if again.run.ok and spec.flaky == FLAKY_PASS:
        counted = f"{passed} passed" if passed is not None else "exit 0 when run again"
        return Check("tests", True, seconds, f"{counted}; flaky (failed, then passed): {flaky}")
    said = [f"`{spec.test_command}` exited {tests.exit_code}: {_last_lines(tests.tail)}"]
    if again.flaky:
        said.append(f"flaky (failed, then passed when run again): {flaky}")
    if again.run.exit_code is None:
        said.append("running the failures again did not finish within the phase's time")
    elif again.failed_again:
        said.append(f"failed again when run again: {', '.join(again.failed_again)}")
    if again.run.ok:
        said.append("MOLT_FLAKY=fail fails the phase on flaky tests")
    return Check("tests", False, seconds, "; ".join(said))


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:])[-400:]
