"""The test suite's own cost, since Molt runs it in every phase of its own updates: one run of
``scripts/test`` with its wall time, the CPU time of every process it started and waited for
(pytest, its workers, the Molt processes and test commands they ran), the sum of the tests'
own durations (setup, call and teardown, as pytest's JUnit report counts them, which a busy
machine inflates less than the wall time) and the slowest tests.

With ``--coverage``, every Python process the run starts measures itself with coverage.py
(COVERAGE_PROCESS_START, read by the .pth file coverage installs in the virtualenv, or by one
of ours for the length of the run; the settings are pyproject.toml's ``[tool.coverage.run]``),
and line coverage of bot/ and pipeline/ is reported once the data of all of them is combined.
The CPU time then includes coverage's.

    python bench/suite.py [--coverage] [--slowest 15] [--jobs 4] [-- pytest arguments]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Starts coverage in every Python process of the run that has COVERAGE_PROCESS_START set.
STARTUP = "import coverage; coverage.process_startup()\n"


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_suite(pytest_args: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """``scripts/test`` once: wall seconds, CPU seconds of it and its descendants, exit code."""
    cpu, began = cpu_of_children(), time.monotonic()
    done = subprocess.run([str(ROOT / "scripts" / "test"), *pytest_args], cwd=ROOT, env=env)
    return time.monotonic() - began, cpu_of_children() - cpu, done.returncode


def tests_in(report: Path) -> list[tuple[str, float, str]]:
    """(test id, seconds, outcome) of every test in a JUnit report."""
    found = []
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        found.append((name, float(case.get("time") or 0), outcome))
    return found


def site_packages() -> Path:
    """The virtualenv's site-packages, where scripts/test's interpreter reads .pth files."""
    python = ROOT / ".venv" / "bin" / "python"
    if not python.exists():
        sys.exit("bench/suite.py: no .venv yet; run scripts/test once first")
    where = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(where or sysconfig.get_paths()["purelib"])


def startup_hook() -> Path | None:
    """coverage.py's own .pth file starts it in every process where COVERAGE_PROCESS_START is
    set (recent versions install one); without it, ours does, for the length of the run."""
    where = site_packages()
    if any("process_startup" in pth.read_text(errors="replace") for pth in where.glob("*.pth")):
        return None
    ours = where / "molt-suite-coverage.pth"
    ours.write_text(STARTUP)
    return ours


def coverage_report(data: Path, env: dict[str, str]) -> None:
    python = str(ROOT / ".venv" / "bin" / "python")
    subprocess.run([python, "-m", "coverage", "combine", "-q"], cwd=ROOT, env=env, check=True)
    include = f"{ROOT}/bot/*,{ROOT}/pipeline/*"
    subprocess.run(
        [
            python,
            "-m",
            "coverage",
            "report",
            "--include",
            include,
            "--skip-covered",
            "--sort=cover",
        ],
        cwd=ROOT,
        env=env,
        check=False,
    )
    print(f"coverage data: {data}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coverage", action="store_true", help="line coverage of bot/, pipeline/")
    parser.add_argument("--slowest", type=int, default=15, help="how many slowest tests to list")
    parser.add_argument("--jobs", default=os.environ.get("MOLT_TEST_JOBS", "4"))
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="molt-suite-"))
    report = work / "junit.xml"
    env = {**os.environ, "MOLT_TEST_JOBS": str(args.jobs)}
    pth = None
    if args.coverage:
        try:
            import coverage  # noqa: F401 - only to say what is missing
        except ImportError:
            sys.exit("bench/suite.py --coverage: coverage is not installed (pip install -e .[dev])")
        env |= {
            "COVERAGE_PROCESS_START": str(ROOT / "pyproject.toml"),
            "COVERAGE_FILE": str(work / ".coverage"),
        }
        pth = startup_hook()
    try:
        wall, cpu, code = run_suite(["-q", f"--junitxml={report}", *args.pytest_args], env)
    finally:
        if pth is not None:
            pth.unlink(missing_ok=True)

    tests = tests_in(report) if report.exists() else []
    outcomes: dict[str, int] = {}
    for _, _, outcome in tests:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(f"\nscripts/test -n {args.jobs}: exit {code}, {len(tests)} tests", end="")
    print("".join(f", {n} {what}" for what, n in sorted(outcomes.items())))
    print(f"wall {wall:.1f} s, CPU {cpu:.1f} s (user + system, every process waited for)")
    print(f"sum of the tests' durations {sum(t for _, t, _ in tests):.1f} s")
    print(f"load average at the end {' '.join(f'{n:.2f}' for n in os.getloadavg())}")
    if tests and args.slowest:
        print(f"slowest {args.slowest} (setup + call + teardown):")
        for name, seconds, outcome in sorted(tests, key=lambda t: -t[1])[: args.slowest]:
            print(f"  {seconds:7.2f} s  {name}" + ("" if outcome == "passed" else f"  {outcome}"))
    if args.coverage:
        coverage_report(work / ".coverage", env)
    return code


if __name__ == "__main__":
    sys.exit(main())
