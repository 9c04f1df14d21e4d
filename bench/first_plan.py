"""Seconds from start-up to the first plan, on Molt managing itself, as a new user meets it:
a fresh clone of this repository, a fresh MOLT_DATA_DIR, ``molt console`` started in the
clone, and ``deploy <branch>`` typed the moment it says it is up. The plan does not wait for
pre-flight's run of Molt's own suite (its default test command), which Molt starts as it
starts; the plan shows how that run stands.

With ``--live`` the plan is approved as soon as it shows, and the run goes on until the
branch is live (phase 1 beside pre-flight's run, then phase 2, the self-restart and the
watch window, ``--watch`` seconds): approve → live, against one run of the suite as
pre-flight timed it.
With ``--after-tests`` as well, the plan is approved only once it shows pre-flight's run
passed, as a person who read the plan for a few minutes would, and as every later deploy
meets it (its phase 2 records the run at the commit it makes live): approve → live is then
phase 1, phase 2, the restart and the watch.

    python bench/first_plan.py [--runs 1] [--live [--after-tests]] [--watch 60]
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench``

from bench.harness import clean_environment, median, table

ROOT = Path(__file__).resolve().parent.parent
UP = re.compile(r"Molt \S+ is up")
PLAN = re.compile(r"📋 Plan ready")
LIVE = re.compile(r"✅ Live: ")
FAILED = re.compile(r"❌ Failed: |⛔ Blocked: ")
TESTS_PASSED = re.compile(r"Tests at `?\w+`?:\*? passed")


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True)


def one_run(work: Path, live_too: bool, watch: float, after_tests: bool) -> dict[str, float]:
    origin, live = work / "origin.git", work / "molt"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(ROOT), str(origin)], check=True)
    subprocess.run(["git", "clone", "--quiet", str(origin), str(live)], check=True)
    clean_environment(work)
    _git(live, "switch", "--quiet", "-c", "bench-branch")
    (live / "BENCH.txt").write_text("a change to deploy\n")
    _git(live, "add", "BENCH.txt")
    _git(live, "commit", "--quiet", "-m", "bench: a change to deploy")
    _git(live, "push", "--quiet", "origin", "bench-branch")
    _git(live, "switch", "--quiet", "-")
    env = dict(os.environ) | {
        "MOLT_DATA_DIR": str(work / "data"),
        "MOLT_CONSOLE_USER": "alice",
        "MOLT_HTTP_PORT": "0",
        "MOLT_WORKERS": "1" if live_too else "0",
        "MOLT_WATCH_SECONDS": f"{watch:g}",
        "MOLT_PROGRESS_INTERVAL": "600",
        "PYTHONPATH": str(live),
    }
    started = time.monotonic()
    molt = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "console"],
        cwd=live,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert molt.stdin is not None and molt.stdout is not None
    figures: dict[str, float] = {}
    approved = started
    try:
        for line in molt.stdout:
            if UP.search(line) and "up" not in figures:
                figures["up"] = time.monotonic() - started
                molt.stdin.write("deploy bench-branch\n")
                molt.stdin.flush()
            if PLAN.search(line) and "first plan" not in figures:
                figures["first plan"] = time.monotonic() - started
                if not live_too:
                    break
            ready = "first plan" in figures and (not after_tests or TESTS_PASSED.search(line))
            if live_too and ready and approved == started:
                approved = time.monotonic()
                molt.stdin.write("press approve\n")
                molt.stdin.flush()
            if LIVE.search(line):
                figures["approve to live"] = time.monotonic() - approved
                break
            if FAILED.search(line):
                # The message, which says why, follows its title: whatever of it came before
                # Molt stopped (reading on would wait for lines a console may never print).
                molt.terminate()
                print(line.rstrip(), *(rest.rstrip() for rest in itertools.islice(molt.stdout, 12)))
                break
    finally:
        molt.stdin.close()
        molt.terminate()
        molt.wait(timeout=120)
    record = _suite_run(work / "data")
    if record is not None:
        figures["suite run"] = record
    return figures


def _suite_run(data: Path) -> float | None:
    """Seconds pre-flight's run of the suite took, from its log's closing line."""
    log = data / "preflight.log"
    if not log.exists():
        return None
    found = re.findall(r"\[exit 0 after ([\d.]+)s\]", log.read_text(errors="replace"))
    return float(found[-1]) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--live", action="store_true", help="approve, and time until live")
    parser.add_argument("--watch", type=float, default=60.0, help="MOLT_WATCH_SECONDS")
    parser.add_argument(
        "--after-tests", action="store_true", help="approve once pre-flight's run passed"
    )
    args = parser.parse_args()
    results = []
    for n in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="molt-first-plan-") as tmp:
            figures = one_run(Path(tmp), args.live, args.watch, args.after_tests)
        print(f"run {n + 1}: {figures}", flush=True)
        results.append(figures)
    keys = ("up", "first plan", "approve to live", "suite run")
    rows: list[list[object]] = [
        [f"run {n + 1}", *(r.get(k, float("nan")) for k in keys)] for n, r in enumerate(results)
    ]
    rows.append(["median", *(median([r.get(k, float("nan")) for r in results]) for k in keys)])
    headings = ["", "up (s)", "first plan (s)", "approve to live (s)", "suite run (s)"]
    print(table(headings, rows, digits=1))


if __name__ == "__main__":
    main()
