"""Running a failed test command once more, to tell flaky tests from broken ones.

pytest names what failed in its short summary (``FAILED path::name - reason``, ``ERROR
path::name``). A plain pytest invocation (no shell operators) that failed its tests runs
again on just those node ids, appended to the command; anything else runs again whole:
another runner, shell operators, a collection error, a run cut short (``-x``,
``--maxfail``), or pytest giving up for another reason (exit codes other than 1). A test
that failed and then passed is flaky; MOLT_FLAKY decides whether that still fails the phase.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import PurePath

#: pytest's short test summary: ``FAILED path::name - reason`` (ERROR for setup errors).
_SUMMARY = re.compile(r"^(FAILED|ERROR) (.+?)(?: - .*)?$", re.M)
#: The run did not go through every test, so a rerun of what failed would not say enough.
_CUT_SHORT = re.compile(r"stopping after \d+ failures|^Interrupted: |^!+ KeyboardInterrupt", re.M)
_SHELL = re.compile(r"[;&|<>()$`\n\\*?~]")
_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
#: pytest's exit code for "tests ran and some failed".
_TESTS_FAILED = 1


@dataclass(frozen=True)
class Rerun:
    """How to run the failures once more."""

    command: str
    #: The tests that failed, as pytest names them; empty when the runner does not say.
    failed: tuple[str, ...]
    #: Only those tests run again (else the whole command does).
    only_failed: bool


def failed_tests(output: str) -> tuple[str, ...]:
    """The node ids pytest's summary names as failed or errored, in order, once each."""
    found = (m.group(2).strip() for m in _SUMMARY.finditer(output))
    return tuple(dict.fromkeys(t for t in found if "::" in t))


def is_plain_pytest(command: str) -> bool:
    """``pytest …``, ``py.test …`` or ``python -m pytest …``, with nothing for a shell to do."""
    if _SHELL.search(command):
        return False
    try:
        words = shlex.split(command)
    except ValueError:
        return False
    if not words or "=" in words[0]:
        return False
    program = PurePath(words[0]).name
    if program in ("pytest", "py.test"):
        return True
    return bool(_PYTHON.match(program)) and words[1:3] == ["-m", "pytest"]


def plan_rerun(command: str, output: str, exit_code: int) -> Rerun:
    """What to run again after ``command`` exited ``exit_code`` having printed ``output``."""
    failed = failed_tests(output)
    collection_error = any(
        m.group(1) == "ERROR" and "::" not in m.group(2) for m in _SUMMARY.finditer(output)
    )
    only = (
        bool(failed)
        and exit_code == _TESTS_FAILED
        and is_plain_pytest(command)
        and not collection_error
        and not _CUT_SHORT.search(output)
    )
    if not only:
        return Rerun(command, failed, False)
    return Rerun(f"{command} {' '.join(shlex.quote(t) for t in failed)}", failed, True)


def judge(rerun: Rerun, passed: bool, output: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(flaky, failed again): what failed and then passed on the rerun, and what did not.
    A runner that names no tests is named by its command."""
    named = rerun.failed or (rerun.command,)
    if passed:
        return named, ()
    again = set(failed_tests(output))
    if not rerun.failed or not again:
        return (), named
    return (
        tuple(t for t in rerun.failed if t not in again),
        tuple(t for t in rerun.failed if t in again),
    )
