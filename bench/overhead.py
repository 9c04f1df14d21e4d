"""One ``deploy main`` end to end: planning, then approval → succeeded, on a 2,000-file target.

Each run builds a fresh generated service (bench/repo.py), an embedded Redis and
a real RQ worker (``python -m bot.cli worker``), submits ``deploy main`` until
the plan is ready, then times from ``approval.approve`` to the request being
terminal (polled every 5 ms). Pipeline overhead is that wall time minus the
time the test command ran (phases 1 and 2). ``--warm`` adds a second deploy on
the same set-up (a further 50-file commit), where the sandbox worktree and the
base commit's test record already exist.

    python bench/overhead.py [--runs 5] [--warm]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench``

from bench.harness import (
    BenchFailure,
    Rig,
    entry_at,
    median,
    rig,
    table,
)
from bench.repo import TEST_COMMAND, push_change
from pipeline.requests.states import RequestState as S

TARGET_OVERHEAD = 2.0
TOP_CHECKS = 8


def deploy(the_rig: Rig, target: str) -> dict[str, Any]:
    """Plan, approve and wait for one deploy of origin's main; the figures of that deploy."""
    request, plan_seconds = the_rig.submit()
    plan_trail = the_rig.trail(request.id)
    done = the_rig.approve_and_wait(request.id)
    final = done.request
    if final.state is not S.SUCCEEDED:
        raise BenchFailure(
            f"request {final.id} ended {final.state.value} in {final.phase!r}: {final.message}"
        )
    head, status = the_rig.live_state()
    if head != target or status:
        raise BenchFailure(f"succeeded, but live is at {head[:7]} with changes: {status[:200]}")
    result = final.result or {}
    trail = the_rig.trail(request.id)
    test_seconds = float(result.get("test_seconds", 0.0))
    return {
        "plan": plan_seconds,
        "preflight": entry_at(plan_trail, "planning") - entry_at(plan_trail, "preflight"),
        "planner": entry_at(plan_trail, "plan_ready") - entry_at(plan_trail, "planning"),
        "to_running": entry_at(trail, "running", "snapshot") - done.started_at,
        "job": float(result.get("total_seconds", 0.0)),
        "wall": done.wall,
        "tests": test_seconds,
        "overhead": done.wall - test_seconds,
        "checks": result.get("checks", []),
    }


def _top(checks: list[dict[str, Any]], count: int = 3) -> str:
    biggest = sorted(checks, key=lambda c: -float(c.get("seconds", 0.0)))[:count]
    return ", ".join(f"{c['name']} {float(c['seconds']):.2f}" for c in biggest)


def _rows(label: str, runs: list[dict[str, Any]]) -> list[list[Any]]:
    keys = ("plan", "preflight", "planner", "to_running", "job", "wall", "tests", "overhead")
    rows: list[list[Any]] = [
        [f"{label} {n}", *(r[k] for k in keys), _top(r["checks"])] for n, r in enumerate(runs, 1)
    ]
    rows.append([f"{label} median", *(median([r[k] for r in runs]) for k in keys), ""])
    return rows


def _check_medians(runs: list[dict[str, Any]]) -> list[tuple[str, float]]:
    seconds: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for check in run["checks"]:
            seconds[check["name"]].append(float(check.get("seconds", 0.0)))
    ranked = sorted(((name, median(v)) for name, v in seconds.items()), key=lambda x: -x[1])
    return ranked[:TOP_CHECKS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh set-ups to measure")
    parser.add_argument("--files", type=int, default=2000, help="files in the target")
    parser.add_argument("--change", type=int, default=50, help="files the deploy changes")
    parser.add_argument(
        "--warm", action="store_true", help="also time a second deploy on each set-up"
    )
    args = parser.parse_args(argv)

    print(
        f"deploy main: {args.files}-file target (~20 MB), {args.change} files changed, "
        f"test command `{TEST_COMMAND}`, restart `true`, no health command"
    )
    cold: list[dict[str, Any]] = []
    warm: list[dict[str, Any]] = []
    try:
        for run in range(1, args.runs + 1):
            with rig(seed=run, files=args.files, change=args.change) as the_rig:
                cold.append(deploy(the_rig, the_rig.target))
                line = f"run {run}: wall {cold[-1]['wall']:.2f} s, plan {cold[-1]['plan']:.2f} s"
                if args.warm:
                    target = push_change(the_rig.root / "service", args.change, seed=100 + run)
                    warm.append(deploy(the_rig, target))
                    line += f"; warm wall {warm[-1]['wall']:.2f} s"
                print(line, flush=True)
    except BenchFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1

    headers = [
        "run",
        "plan",
        "preflight",
        "planner",
        "appr→run",
        "job",
        "wall",
        "tests",
        "overhead",
        "biggest checks (s)",
    ]
    rows = _rows("cold", cold) + (_rows("warm", warm) if warm else [])
    print()
    print("seconds; plan = submit → plan_ready (preflight + planner); wall = approve → succeeded;")
    print("appr→run = approve → job running; job = the job's own total; overhead = wall - tests")
    print(table(headers, rows))
    print()
    for label, runs in (("cold", cold), ("warm", warm)):
        if runs:
            ranked = _check_medians(runs)
            print(f"biggest checks, {label} (median s):")
            print(table(["check", "seconds"], ranked))
    print()
    for label, runs in (("cold", cold), ("warm", warm)):
        if runs:
            overhead = median([r["overhead"] for r in runs])
            verdict = "within" if overhead <= TARGET_OVERHEAD else "ABOVE"
            print(
                f"target: pipeline overhead ≤ {TARGET_OVERHEAD:.0f} s — {label} median "
                f"{overhead:.2f} s ({verdict} target)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
