"""The freeze gate's own cost: ``freezes.gate`` (pipeline/intake/freezes.py) runs at plan time
and again before every update's snapshot, so it should cost nothing next to either; a
rollout's (``rollouts.check_freezes``, pipeline/update/rollouts.py) checks each of its steps'
targets at plan time, at the approval and as each step starts.

Five windows apply to the target (three weekly ones in different zones, two crossing midnight;
two one-off), and the instant checked moves by a prime number of minutes each call, so both
frozen and free instants are timed. Reported: the median, p90 and max of ``--calls`` calls,
for each of ``--runs`` runs, for one target and for a rollout of three; no Redis, git or
process is involved.

    python bench/freeze.py [--runs 5] [--calls 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``pipeline``

from pipeline.config import load_settings
from pipeline.intake import freezes
from pipeline.requests.store import Origin, Request
from pipeline.update import rollouts

STEPS = ("web-1", "web-2", "web-3")

WINDOWS = [
    {
        "days": ["fri", "sat", "sun"],
        "from": "16:00",
        "to": "09:00",
        "timezone": "Europe/London",
        "reason": "weekend freeze",
    },
    {"days": ["sun"], "from": "22:00", "to": "06:00", "reason": "backups"},
    {
        "days": ["wed"],
        "from": "09:00",
        "to": "17:00",
        "timezone": "America/New_York",
        "reason": "release review",
    },
    {"start": "2026-12-20T00:00:00Z", "end": "2027-01-04T00:00:00Z", "reason": "holidays"},
    {"start": "2027-03-01T08:00", "end": "2027-03-01T20:00", "reason": "launch day"},
]


def one_run(calls: int, rollout: bool = False) -> tuple[list[float], int]:
    """Seconds each gate check took (of one target, or of a rollout of three), and how many
    found it frozen."""
    settings = load_settings(freeze=WINDOWS, target_dir=Path.cwd())
    fleet = load_settings(
        freeze=WINDOWS,
        target_dir=Path.cwd(),
        targets={name: {"dir": str(Path.cwd())} for name in STEPS},
        rollouts={"web": {"steps": list(STEPS)}},
    )
    request = Request("r1", Origin("console", "bench"), "deploy main", "deploy", "main")
    start = datetime(2026, 12, 1, tzinfo=UTC)
    seconds, frozen = [], 0
    for n in range(calls):
        at = start + timedelta(minutes=97 * n)
        began = time.perf_counter()
        if rollout:
            decision = rollouts.check_freezes(fleet, fleet.rollout("web"), request, now=at)
        else:
            decision = freezes.gate(settings, request, at)
        seconds.append(time.perf_counter() - began)
        frozen += not decision
    return seconds, frozen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    for rollout in (False, True):
        medians = []
        what = f"rollout of {len(STEPS)} steps" if rollout else "one target"
        print(f"freeze gate, {what}, {len(WINDOWS)} windows, {args.calls} calls a run")
        for run in range(1, args.runs + 1):
            seconds, frozen = one_run(args.calls, rollout)
            ordered = sorted(seconds)
            medians.append(statistics.median(ordered))
            print(
                f"run {run}: median {medians[-1] * 1e6:.1f} µs, "
                f"p90 {ordered[int(len(ordered) * 0.9)] * 1e6:.1f} µs, "
                f"max {ordered[-1] * 1e6:.1f} µs ({frozen} of {args.calls} frozen)"
            )
        print(f"median of the runs' medians: {statistics.median(medians) * 1e6:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
