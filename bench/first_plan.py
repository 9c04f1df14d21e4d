"""Seconds from start-up to the first plan, on Molt managing itself, as a new user meets it:
a fresh clone of this repository, a fresh MOLT_DATA_DIR, ``molt console`` started in the
clone, and ``deploy <branch>`` typed the moment it says it is up. Pre-flight runs Molt's own
suite at the live commit (its default test command), so this is about one run of the suite:
the run Molt starts as it starts, which the request joins.

    python bench/first_plan.py [--runs 1]
"""

from __future__ import annotations

import argparse
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
WAITING = re.compile(r"Waiting for the tests: .*running for (.+)\.")


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True)


def one_run(work: Path) -> dict[str, float]:
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
        "MOLT_WORKERS": "0",
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
    try:
        for line in molt.stdout:
            if UP.search(line) and "up" not in figures:
                figures["up"] = time.monotonic() - started
                molt.stdin.write("deploy bench-branch\n")
                molt.stdin.flush()
            if WAITING.search(line):
                figures["progress lines"] = figures.get("progress lines", 0) + 1
            if PLAN.search(line):
                figures["first plan"] = time.monotonic() - started
                break
    finally:
        molt.stdin.close()
        molt.terminate()
        molt.wait(timeout=120)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    results = []
    for n in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="molt-first-plan-") as tmp:
            figures = one_run(Path(tmp))
        print(f"run {n + 1}: {figures}", flush=True)
        results.append(figures)
    keys = ("up", "first plan", "progress lines")
    rows: list[list[object]] = [
        [f"run {n + 1}", *(r.get(k, float("nan")) for k in keys)] for n, r in enumerate(results)
    ]
    rows.append(["median", *(median([r.get(k, float("nan")) for r in results]) for k in keys)])
    print(table(["", "up (s)", "first plan (s)", "progress lines"], rows, digits=1))


if __name__ == "__main__":
    main()
