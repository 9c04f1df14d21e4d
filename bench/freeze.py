"""The freeze gate's own cost: ``freezes.gate`` (pipeline/intake/freezes.py) runs at plan time
and again before every update's snapshot, so it should cost nothing next to either.

Five windows apply to the target (three weekly ones in different zones, two crossing midnight;
two one-off), and the instant checked moves by a prime number of minutes each call, so both
frozen and free instants are timed. Reported: the median, p90 and max of ``--calls`` calls,
for each of ``--runs`` runs; no Redis, git or process is involved.

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


def one_run(calls: int) -> tuple[list[float], int]:
    """Seconds each gate check took, and how many found the target frozen."""
    settings = load_settings(freeze=WINDOWS, target_dir=Path.cwd())
    request = Request("r1", Origin("console", "bench"), "deploy main", "deploy", "main")
    start = datetime(2026, 12, 1, tzinfo=UTC)
    seconds, frozen = [], 0
    for n in range(calls):
        at = start + timedelta(minutes=97 * n)
        began = time.perf_counter()
        decision = freezes.gate(settings, request, at)
        seconds.append(time.perf_counter() - began)
        frozen += not decision
    return seconds, frozen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    medians = []
    print(f"freeze gate, {len(WINDOWS)} windows, {args.calls} calls a run")
    for run in range(1, args.runs + 1):
        seconds, frozen = one_run(args.calls)
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
