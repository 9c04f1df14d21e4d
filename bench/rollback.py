"""Rolling back after phase 2 failed: the live checkout was touched and must come back.

Each run builds a fresh generated service whose new commit passes its tests in
the sandbox (phase 1) but fails them in the live checkout (phase 2), an
embedded Redis and a real RQ worker, then approves ``deploy main`` and waits
for the request to fail. Reported: the ``rollback`` check (restoring the
snapshot, verified) and the time from phase 2 failing to the request being
failed, against a target of 1 s. Then a direct measure of
``snapshots.restore`` on the 2,000-file live checkout, after
``snapshots.move_to`` the 50-file-changed commit.

    python bench/rollback.py [--runs 5] [--micro-runs 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench``

from bench.harness import (
    BenchFailure,
    Rig,
    check_seconds,
    clean_environment,
    entry_at,
    median,
    rig,
    table,
)
from bench.repo import generate_repo
from pipeline.git import Git
from pipeline.requests.states import RequestState as S
from pipeline.service import snapshots

TARGET_SECONDS = 1.0


def failed_deploy(the_rig: Rig) -> dict[str, Any]:
    """Plan, approve and wait for the deploy that phase 2 rejects; its rollback figures."""
    request, plan_seconds = the_rig.submit()
    done = the_rig.approve_and_wait(request.id)
    final = done.request
    if final.state is not S.FAILED or final.phase != "phase 2":
        raise BenchFailure(
            f"expected failed in 'phase 2', got {final.state.value} in {final.phase!r}: "
            f"{final.message}"
        )
    head, status = the_rig.live_state()
    if head != the_rig.base or status:
        raise BenchFailure(
            f"not rolled back: live is at {head[:7]}, expected {the_rig.base[:7]}; {status[:200]}"
        )
    checks = (final.result or {}).get("checks", [])
    rollback = next((c for c in checks if c["name"] == "rollback"), None)
    if rollback is None or not rollback["ok"]:
        raise BenchFailure(f"no successful rollback check in {checks}: {final.message}")
    trail = the_rig.trail(request.id)
    phase_two = sum(float(c["seconds"]) for c in checks if c["name"].startswith("phase 2: "))
    phase_two_failed = entry_at(trail, "running", "phase 2") + phase_two
    return {
        "plan": plan_seconds,
        "wall": done.wall,
        "p2_tests": check_seconds(checks, "phase 2: tests"),
        "rollback": float(rollback["seconds"]),
        "to_rollback": entry_at(trail, "running", "rollback") - phase_two_failed,
        "to_failed": entry_at(trail, "failed") - phase_two_failed,
    }


def micro(runs: int, files: int, change: int) -> list[tuple[float, float]]:
    """(move_to, restore) seconds on a live checkout, ``runs`` times there and back."""
    root = Path(tempfile.mkdtemp(prefix="molt-bench-restore-"))
    try:
        clean_environment(root)
        _, live_path, target = generate_repo(root / "service", files, change)
        os.sync()
        live = Git(live_path)
        live.run("fetch", "--quiet", "origin")
        snapshot = snapshots.take(live)
        timings = []
        for _ in range(runs):
            began = time.monotonic()
            snapshots.move_to(live, target, snapshot.branch)
            moved = time.monotonic() - began
            if live.head() != target:
                raise BenchFailure(f"move_to left live at {live.head()[:7]}, not {target[:7]}")
            timings.append((moved, snapshots.restore(live, snapshot)))
        return timings
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh set-ups to measure")
    parser.add_argument("--micro-runs", type=int, default=20, help="restore() repetitions")
    parser.add_argument("--files", type=int, default=2000, help="files in the target")
    parser.add_argument("--change", type=int, default=50, help="files the deploy changes")
    args = parser.parse_args(argv)

    print(
        f"deploy main that fails phase 2: {args.files}-file target (~20 MB), "
        f"{args.change} files changed"
    )
    runs: list[dict[str, Any]] = []
    failure = ""
    try:
        for run in range(1, args.runs + 1):
            with rig(break_live=True, seed=run, files=args.files, change=args.change) as the_rig:
                runs.append(failed_deploy(the_rig))
            print(
                f"run {run}: rollback {runs[-1]['rollback']:.3f} s, "
                f"phase 2 failed → request failed {runs[-1]['to_failed']:.3f} s",
                flush=True,
            )
    except BenchFailure as exc:
        failure = str(exc)
        print(f"FAILED: {exc}", file=sys.stderr)
    timings: list[tuple[float, float]] = []
    try:
        timings = micro(args.micro_runs, args.files, args.change)
    except BenchFailure as exc:
        failure = failure or str(exc)
        print(f"FAILED: {exc}", file=sys.stderr)

    keys = ("plan", "wall", "p2_tests", "rollback", "to_rollback", "to_failed")
    rows: list[list[Any]] = [[f"run {n}", *(r[k] for k in keys)] for n, r in enumerate(runs, 1)]
    if runs:
        rows.append(["median", *(median([r[k] for r in runs]) for k in keys)])
    print()
    print("seconds; wall = approve → failed; p2 tests = the failing test run in phase 2;")
    print("rollback = the 'rollback' check (restore + verify); p2 fail→rb = phase 2 failed →")
    print("rollback phase entered; p2 fail→failed = phase 2 failed → request failed")
    headers = ["run", "plan", "wall", "p2 tests", "rollback", "p2 fail→rb", "p2 fail→failed"]
    print(table(headers, rows))
    print()
    if timings:
        moves, restores = [m for m, _ in timings], [r for _, r in timings]
        print(f"snapshots.restore() on the live checkout, {len(timings)} times (seconds):")
        print(
            table(
                ["step", "median", "min", "max"],
                [
                    ["move_to(target)", median(moves), min(moves), max(moves)],
                    ["restore(snapshot)", median(restores), min(restores), max(restores)],
                ],
            )
        )
        print()
    if failure:
        print(f"incomplete ({len(runs)} of {args.runs} runs measured): {failure}", file=sys.stderr)
        return 1
    to_failed = median([r["to_failed"] for r in runs])
    verdict = "within" if to_failed <= TARGET_SECONDS else "ABOVE"
    print(
        f"target: phase 2 failed → request failed ≤ {TARGET_SECONDS:.0f} s — median "
        f"{to_failed:.3f} s ({verdict} target); rollback check median "
        f"{median([r['rollback'] for r in runs]):.3f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
