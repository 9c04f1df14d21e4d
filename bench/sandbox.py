"""What the sandbox costs a test command (pipeline/sandbox/confinement.py).

Start cost: ``true`` run ``--starts`` times through ``validation.run_tests`` in the sandbox
(bubblewrap, with Molt's own settings' hides and limits), without it (MOLT_SANDBOX=off:
the subreaper) and as a bare ``sh -c`` through the same loop (``run_command``, how test
commands started before); median per start, and the
sandbox's extra over the bare start (goal <= 50 ms).

Suite cost: ``--suite`` (default a phase of Molt's own suite, ``tests/pipeline``, run three
at a time) in a git worktree of HEAD under a data directory, as phase 1 runs it: sandboxed,
then bare, alternating ``--runs`` times; the sandbox's share of the median wall time (goal
<= 3 %). ``--suite ''`` skips it.

    python bench/sandbox.py [--starts 50] [--runs 1] [--suite "<test command>"]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import MOLT_HOME, load_settings
from pipeline.sandbox import confinement
from pipeline.sandbox.confinement import Confinement
from pipeline.sandbox.validation import run_command, run_tests

START_GOAL_MS = 50.0
SUITE_GOAL = 0.03


def _timed(run: object) -> float:
    began = time.perf_counter()
    run()  # type: ignore[operator]
    return time.perf_counter() - began


def starts(count: int, checkout: Path, sandboxed: Confinement, off: Confinement) -> None:
    def bare() -> None:
        # How test commands started before the sandbox: the same loop, a plain shell.
        assert run_command("true", checkout, 30)[0] == 0

    def run(how: Confinement) -> None:
        assert run_tests("true", checkout, 30, confinement=how).ok

    found = {}
    for name, step in (
        ("bare sh -c (before)", bare),
        ("sandbox (bwrap)", lambda: run(sandboxed)),
        ("MOLT_SANDBOX=off (subreaper)", lambda: run(off)),
    ):
        step()  # warm
        found[name] = statistics.median(_timed(step) for _ in range(count)) * 1000
    for name, ms in found.items():
        print(f"  {name:32} {ms:7.1f} ms a start")
    extra = found["sandbox (bwrap)"] - found["bare sh -c (before)"]
    verdict = "within" if extra <= START_GOAL_MS else "over"
    goal = f"{verdict} the {START_GOAL_MS:.0f} ms goal"
    print(f"  sandbox's extra per start: {extra:.1f} ms ({goal})")


def suite(command: str, runs: int, root: Path) -> None:
    data = root / "data"
    checkout = data / "worktrees" / "bench" / "sandbox"
    checkout.parent.mkdir(parents=True)
    head = subprocess.run(
        ["git", "-C", str(MOLT_HOME), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    subprocess.run(
        ["git", "-C", str(MOLT_HOME), "worktree", "add", "--detach", "-q", str(checkout), head],
        check=True,
    )
    try:
        settings = load_settings(data_dir=data, target_dir=MOLT_HOME)
        sandboxed = Confinement.of(settings)
        bare = Confinement.of(load_settings(data_dir=data, target_dir=MOLT_HOME, sandbox="off"))
        times: dict[str, list[float]] = {"sandbox": [], "off": []}
        for _ in range(runs):
            for name, how in (("sandbox", sandboxed), ("off", bare)):
                result = run_tests(command, checkout, 3600, confinement=how)
                print(
                    f"  {name:8} {result.seconds:7.1f} s  exit {result.exit_code}, "
                    f"{result.passed} passed"
                )
                times[name].append(result.seconds)
        with_box, without = statistics.median(times["sandbox"]), statistics.median(times["off"])
        share = with_box / without - 1
        verdict = "within" if share <= SUITE_GOAL else "over"
        print(
            f"  `{command}`: {with_box:.1f} s sandboxed, {without:.1f} s without: "
            f"{share:+.1%} ({verdict} the {SUITE_GOAL:.0%} goal)"
        )
    finally:
        subprocess.run(
            ["git", "-C", str(MOLT_HOME), "worktree", "remove", "--force", str(checkout)],
            check=False,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=50)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--suite", default="python -m pytest -q -n 3 -p no:randomly tests/pipeline")
    args = parser.parse_args()
    found = confinement.support()
    print(f"sandbox: {found.found}; process limit held by {found.processes}")
    if not found.works:
        return 1
    with tempfile.TemporaryDirectory(prefix="molt-bench-") as tmp:
        root = Path(tmp)
        settings = load_settings(data_dir=root / "data", target_dir=MOLT_HOME)
        off = load_settings(data_dir=root / "data", target_dir=MOLT_HOME, sandbox="off")
        print(f"start cost (median of {args.starts}):")
        starts(args.starts, root, Confinement.of(settings), Confinement.of(off))
        if args.suite:
            print(f"suite cost ({args.runs} run(s) each way):")
            suite(args.suite, args.runs, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
