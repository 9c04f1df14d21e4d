"""Progress refreshes during a long phase: how many status updates a person gets per minute.

Each run builds a small service whose test command prints pytest-like ``-q`` progress lines
for ``--seconds`` in the sandbox (phase 1) and finishes at once elsewhere, an embedded Redis
and a real worker (``python -m bot.cli worker``) with the default MOLT_PROGRESS_INTERVAL,
then deploys it. From the event stream and the audit trail: phase 1's length, the progress
refreshes it emitted (per minute), the share the last one showed, and the audit entries
written while phase 1 ran (refreshes add none).

    python bench/progress.py [--runs 1] [--seconds 75]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench``

from bench.harness import PRINCIPAL, BenchFailure, Rig, clean_environment, entry_at, table
from bench.repo import git
from pipeline import keyspace, store
from pipeline.config import load_settings
from pipeline.requests.states import RequestState as S

SLOW_TESTS = """\
import os, pathlib, sys, time
LIVE = {live!r}
STEPS = {steps}
if pathlib.Path("SLOW").exists() and os.getcwd() != LIVE:
    for step in range(1, STEPS + 1):
        print("." * 10 + f"  [{{step * 100 // STEPS:3d}}%]", flush=True)
        time.sleep(0.5)
print(f"{{STEPS * 10}} passed")
"""


def _service(root: Path, seconds: float) -> tuple[Path, str]:
    """A bare origin and a live clone on the first commit; origin's main adds SLOW."""
    work, origin, live = root / "work", root / "origin.git", root / "live"
    work.mkdir(parents=True)
    git(work, "init", "-q", "-b", "main")
    steps = max(1, int(seconds / 0.5))
    (work / "slow_tests.py").write_text(SLOW_TESTS.format(live=str(live), steps=steps))
    (work / "app.py").write_text("VERSION = 1\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "first")
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(origin)], check=True)
    subprocess.run(["git", "clone", "-q", str(origin), str(live)], check=True)
    (work / "SLOW").write_text("slow tests\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "slow")
    git(work, "push", "-q", str(origin), "main")
    return live, git(work, "rev-parse", "HEAD")


def one_run(seconds: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="molt-bench-progress-"))
    data = root / "data"
    the_rig: Rig | None = None
    try:
        clean_environment(root)
        live, target = _service(root / "service", seconds)
        settings = load_settings(
            data_dir=data,
            target_dir=live,
            test_command="python slow_tests.py",
            restart_command="true",
            authorised_users=[PRINCIPAL],
            approvers=[PRINCIPAL],
            console_user=PRINCIPAL.split(":", 1)[1],
        )
        conn = store.connect(settings)
        base = git(live, "rev-parse", "HEAD")
        the_rig = Rig(root, live, target, base, settings, conn)
        the_rig.start_worker()
        request, _ = the_rig.submit()
        done = the_rig.approve_and_wait(request.id, timeout=seconds * 2 + 120)
        if done.request.state is not S.SUCCEEDED:
            raise BenchFailure(f"ended {done.request.state.value}: {done.request.message}")
        trail = the_rig.trail(request.id)
        began, ended = entry_at(trail, "running", "phase 1"), entry_at(trail, "running", "apply")
        refreshes = [
            json.loads(fields["data"])
            for _, fields in conn.xrange(keyspace.EVENTS)
            if fields.get("request_id") == request.id and '"progress"' in fields.get("data", "")
        ]
        in_phase = [r for r in refreshes if r.get("phase") == "phase 1"]
        audited = [e for e in trail if began <= e["at"] < ended]
        phase = ended - began
        return {
            "interval": settings.progress_interval,
            "phase": phase,
            "refreshes": len(in_phase),
            "per_minute": len(in_phase) / phase * 60 if phase else 0.0,
            "last_share": (in_phase[-1]["progress"].get("share") if in_phase else None),
            "audit_lines": len(audited),
        }
    finally:
        if the_rig is not None:
            the_rig.stop_worker()
            the_rig.conn.close()
        store.stop_embedded(data)
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=75.0, help="how long phase 1 runs")
    args = parser.parse_args(argv)
    keys = ("interval", "phase", "refreshes", "per_minute", "last_share", "audit_lines")
    rows = []
    for n in range(1, args.runs + 1):
        found = one_run(args.seconds)
        rows.append([f"run {n}", *(found[k] for k in keys)])
    print(table(["run", *keys], rows, digits=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
